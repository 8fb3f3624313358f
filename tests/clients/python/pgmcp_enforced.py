"""postgres-mcp (crystaldba's "Postgres MCP Pro") pointed at Portcullis enforcing the finance
example, driven over stdio by the MCP Python SDK's client as an agent host would: its schema tools,
`execute_sql` in restricted (read-only) and unrestricted mode, and its health and plan tools.
support-bot sees tenant 1's 10 customers with SSNs redacted and writes only its own tenant's
tickets; the auditor sees all 30 customers. The server's statistics tools read `pg_stats` and
plan costs, which Portcullis withholds (they count hidden rows): they must fail without revealing
any.

Runs with the interpreter of .venv-pgmcp (tests/setup.sh), where the `postgres-mcp` command is."""
import ast
import asyncio
import os
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

SERVER = str(Path(sys.executable).with_name("postgres-mcp"))
BOT = os.environ["PORTCULLIS_URL"]
AUDITOR = os.environ["PORTCULLIS_AUDITOR_URL"]
HIDDEN = int(os.environ["HIDDEN_TICKET"])


class Server:
    """One postgres-mcp process and an MCP client session to it."""

    def __init__(self, url, mode):
        self.params = StdioServerParameters(command=SERVER, args=["--access-mode", mode, url])

    async def __aenter__(self):
        self.stdio = stdio_client(self.params)
        read, write = await self.stdio.__aenter__()
        self.session = ClientSession(read, write)
        await self.session.__aenter__()
        await self.session.initialize()
        return self

    async def __aexit__(self, *exc):
        await self.session.__aexit__(*exc)
        await self.stdio.__aexit__(*exc)

    async def text(self, tool, **args):
        res = await self.session.call_tool(tool, args)
        return " ".join(c.text for c in res.content)

    async def rows(self, sql):
        """execute_sql's rows (the server prints them as a Python literal), or fails with its text."""
        text = await self.text("execute_sql", sql=sql)
        if text == "No results":
            return []
        assert text.startswith("["), f"{sql}: {text}"
        return ast.literal_eval(text)


async def main():
    async with Server(BOT, "restricted") as bot, Server(AUDITOR, "restricted") as auditor:
        tools = {t.name for t in (await bot.session.list_tools()).tools}
        assert {"list_schemas", "list_objects", "get_object_details", "execute_sql"} <= tools, tools

        # Schema tools: names and columns (information_schema and pg_catalog) read as the agent.
        schemas = ast.literal_eval(await bot.text("list_schemas"))
        assert "public" in {s["schema_name"] for s in schemas}, schemas
        objects = ast.literal_eval(await bot.text("list_objects", schema_name="public"))
        assert sorted(o["name"] for o in objects) == ["customers", "tickets", "transfers"], objects
        seqs = ast.literal_eval(
            await bot.text("list_objects", schema_name="public", object_type="sequence")
        )
        assert "tickets_id_seq" in {s["name"] for s in seqs}, seqs
        details = ast.literal_eval(
            await bot.text("get_object_details", schema_name="public", object_name="customers")
        )
        assert sorted(c["column"] for c in details["columns"]) == [
            "created_at", "email", "id", "name", "ssn", "tenant_id", "tier"
        ], details
        assert "customers_pkey" in {c["name"] for c in details["constraints"]}, details

        # execute_sql (restricted: a read-only transaction after pglast's validation).
        assert await bot.rows(
            "select count(*) as n, count(distinct tenant_id) as t from customers"
        ) == [{"n": 10, "t": 1}]
        assert await bot.rows("select distinct ssn from customers") == [{"ssn": "***"}]
        assert await bot.rows(f"select id, subject from tickets where id = {HIDDEN}") == []
        assert await auditor.rows("select count(*) as n from customers") == [{"n": 30}]
        assert len(await auditor.rows(f"select id from tickets where id = {HIDDEN}")) == 1

        # Health and plan tools need statistics and costs that include hidden rows: refused with
        # Portcullis's reason, never answered from them.
        health = await bot.text("analyze_db_health", health_type="index")
        assert "not readable through Portcullis" in health, health
        plan = await bot.text("explain_query", sql="select * from customers where tenant_id = 2")
        assert plan.startswith("Error"), plan
        assert "Plan Rows" not in plan and "Total Cost" in plan, plan

    # Unrestricted mode runs the agent's SQL as sent, writes and transaction control included:
    # the policy still decides every statement.
    async with Server(BOT, "unrestricted") as bot, Server(AUDITOR, "restricted") as auditor:
        err = await bot.text(
            "execute_sql",
            sql="insert into tickets (tenant_id, customer_id, subject, body, status, priority) "
            "values (2, 2, 'via pgmcp', 'b', 'open', 2)",
        )
        assert "support-writes-own-tickets" in err, err
        err = await bot.text("execute_sql", sql="COMMIT; DROP TABLE customers")
        assert "DROP TABLE is not allowed" in err, err
        await bot.text("execute_sql", sql="update customers set name = 'via pgmcp'")
        assert await auditor.rows(
            "select tenant_id, count(*) as n from customers where name = 'via pgmcp' group by 1"
        ) == [{"tenant_id": 1, "n": 10}]
        assert await auditor.rows(
            "select count(*) as n from tickets where subject = 'via pgmcp'"
        ) == [{"n": 0}]
        assert await bot.rows(f"select id from tickets where id = {HIDDEN}") == []

    print("OK postgres-mcp enforced")


asyncio.run(main())
