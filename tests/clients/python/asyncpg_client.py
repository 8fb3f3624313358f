"""asyncpg through Portcullis (binary protocol throughout): parameters, prepared statements,
savepoints, errors, refusals, COPY TO STDOUT, introspection of custom types. With
PORTCULLIS_ENFORCED=1 the agent is support-bot under the finance example: the same calls, and
only tenant 1's rows come back."""
import asyncio
import io
import os

import asyncpg


async def main():
    enforced = os.environ.get("PORTCULLIS_ENFORCED") == "1"
    # Tenant 1's customers (every third); all 30 without a policy.
    visible = list(range(3, 31, 3)) if enforced else list(range(1, 31))
    conn = await asyncpg.connect(os.environ["PORTCULLIS_URL"])
    seven = await conn.fetchval("select name from customers where id = $1", 7)
    assert seven == (None if enforced else "Customer 7"), seven

    stmt = await conn.prepare("select id, amount, iban, tenant_id from transfers where customer_id = $1 order by id")
    rows = await stmt.fetch(3)
    assert len(rows) > 0 and all(r["tenant_id"] == 1 for r in rows)
    assert all(r["iban"].startswith("*") == enforced for r in rows), rows
    others = await stmt.fetch(7)  # customer 7 is tenant 2's
    assert (others == []) if enforced else len(others) > 0, others

    async with conn.transaction():
        await conn.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'apg-kept', 'b', 'open')")
        try:
            async with conn.transaction():  # savepoint
                await conn.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'apg-undone', 'b', 'open')")
                await conn.execute("select 1/0")
        except asyncpg.DivisionByZeroError:
            pass
    got = await conn.fetch("select subject from tickets where subject like 'apg-%' order by 1")
    assert [r[0] for r in got] == ["apg-kept"], got

    try:
        await conn.execute("set role postgres")
        raise SystemExit("must be refused")
    except asyncpg.InsufficientPrivilegeError:
        pass
    try:
        await conn.fetch("selec 1")
        raise SystemExit("must be refused")
    except asyncpg.PostgresSyntaxError:
        pass
    assert await conn.fetchval("select $1::int + 1", 41) == 42

    out = io.BytesIO()
    await conn.copy_from_query("select id from customers order by id", output=out)
    assert out.getvalue().decode().split() == [str(i) for i in visible]
    await conn.close()
    print("OK asyncpg")


asyncio.run(main())
