"""LangChain's SQLDatabase and its SQL toolkit's tools through Portcullis enforcing the finance
example, as two agents with different rights (no LLM: the toolkit's database layer, driven as an
agent's tools call it). support-bot sees tenant 1's 10 customers with SSNs redacted; the auditor
sees all 30."""
import ast
import os

from langchain_community.tools.sql_database.tool import (
    InfoSQLDatabaseTool,
    ListSQLDatabaseTool,
    QuerySQLDatabaseTool,
)
from langchain_community.utilities import SQLDatabase


def connect(url):
    return SQLDatabase.from_uri(
        url.replace("postgres://", "postgresql+psycopg2://", 1), sample_rows_in_table_info=3
    )


bot = connect(os.environ["PORTCULLIS_URL"])
auditor = connect(os.environ["PORTCULLIS_AUDITOR_URL"])

for db in (bot, auditor):
    assert {"customers", "tickets", "transfers"} <= set(db.get_usable_table_names())
    tables = ListSQLDatabaseTool(db=db).invoke("")
    assert "customers" in tables, tables

# get_table_info: the DDL and three sample rows, read under the agent's policy.
info = InfoSQLDatabaseTool(db=bot).invoke("customers")
assert "CREATE TABLE customers" in info, info
sample = info.split("*/")[0].split("\n")
rows = [l for l in sample if l.split("\t")[0].strip().isdigit()]
assert len(rows) == 3, info
for row in rows:
    cells = row.split("\t")
    assert cells[1] == "1", f"tenant 1 only: {row}"
    assert cells[4] in ("***", "None"), f"ssn redacted: {row}"

# run / QuerySQLDatabaseTool: the agent's own SQL, rewritten.
assert ast.literal_eval(bot.run("select count(*) from customers")) == [(10,)]
assert ast.literal_eval(auditor.run("select count(*) from customers")) == [(30,)]
out = QuerySQLDatabaseTool(db=bot).invoke("select distinct ssn from customers where ssn is not null")
assert ast.literal_eval(out) == [("***",)], out
out = QuerySQLDatabaseTool(db=bot).invoke("select * from pg_stats")
assert out.startswith("Error:") and "not readable" in out, out

# With schema=: LangChain sets search_path to it before each query.
scoped = SQLDatabase.from_uri(
    os.environ["PORTCULLIS_URL"].replace("postgres://", "postgresql+psycopg2://", 1),
    schema="public",
)
assert ast.literal_eval(scoped.run("select count(*) from tickets where tenant_id <> 1")) == [(0,)]
print("OK langchain enforced")
