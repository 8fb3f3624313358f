"""psycopg2 through Portcullis enforcing the finance example as support-bot: a server-side
(named) cursor streams only the tenant's rows with SSNs redacted, parameters work in reads and
policy-checked writes, and a write the policy forbids raises InsufficientPrivilege atomically."""
import os

import psycopg2
import psycopg2.errors

URL = os.environ["PORTCULLIS_URL"]
# A ticket of another tenant (its id, read directly by the test harness).
HIDDEN_TICKET = int(os.environ["HIDDEN_TICKET"])
conn = psycopg2.connect(URL)

# A named cursor is DECLARE … CURSOR + FETCH FORWARD n: rewritten at DECLARE.
with conn.cursor(name="agent_scan") as cur:
    cur.itersize = 3
    cur.execute("select id, tenant_id, ssn from customers order by id")
    rows = list(cur)
assert len(rows) == 10, rows
assert all(t == 1 and (s == "***") for (_, t, s) in rows), rows
conn.commit()

cur = conn.cursor()
cur.execute("select count(*) from tickets where tenant_id = %s", (2,))
assert cur.fetchone() == (0,), "another tenant's tickets are invisible"

cur.execute(
    "insert into tickets (tenant_id, customer_id, subject, body, status, priority) "
    "values (%s, %s, %s, %s, %s, %s) returning tenant_id",
    (1, 3, "from psycopg2", "b", "open", 2),
)
assert cur.fetchone() == (1,)
conn.commit()

cur.execute("select count(*) from tickets where subject = 'from psycopg2'")
before = cur.fetchone()[0]
try:
    cur.execute(
        "insert into tickets (tenant_id, customer_id, subject, body, status, priority) "
        "values (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)",
        (1, 3, "from psycopg2", "b", "open", 2, 2, 4, "from psycopg2", "b", "open", 2),
    )
    raise SystemExit("a row of another tenant must be refused")
except psycopg2.errors.InsufficientPrivilege as e:
    assert "support-writes-own-tickets" in str(e), str(e)
conn.rollback()
cur.execute("select count(*) from tickets where subject = 'from psycopg2'")
assert cur.fetchone()[0] == before, "nothing of the refused INSERT was written"

# Client-side interpolation (psycopg2 quotes parameters into the text): text with a backslash
# before a quote is data, as PostgreSQL reads it, not SQL (issue 9).
payload = "x\\'; SELECT ssn FROM customers; --"
cur.execute("select %s", (payload,))
assert cur.fetchall() == [(payload,)], "the parameter comes back as it was sent"
cur.execute("select %s, count(*) from customers", ("\\'' or 1=1 --",))
assert cur.fetchall() == [("\\'' or 1=1 --", 10)]
conn.rollback()

# SQLAlchemy 2 reflection and queries under enforcement (psycopg2 and psycopg 3 drivers): its
# reflection queries qualify columns by schema and table (pg_catalog.pg_class.relname).
import sqlalchemy as sa

for driver in ("psycopg2", "psycopg"):
    engine = sa.create_engine(URL.replace("postgres://", f"postgresql+{driver}://", 1))
    with engine.connect() as sconn:
        insp = sa.inspect(sconn)
        assert {"customers", "tickets", "transfers"} <= set(insp.get_table_names()), driver
        cols = [c["name"] for c in insp.get_columns("customers")]
        assert cols[:3] == ["id", "tenant_id", "name"], cols
        assert insp.get_pk_constraint("customers")["constrained_columns"] == ["id"]
        meta = sa.MetaData()
        customers = sa.Table("customers", meta, autoload_with=sconn, schema="public")
        rows = sconn.execute(
            sa.select(customers.c.tenant_id, customers.c.ssn).order_by(customers.c.id)
        ).all()
        assert len(rows) == 10 and all(t == 1 and s == "***" for t, s in rows), rows
        # Upserts (SQLAlchemy's on_conflict_do_update / do_nothing): the agent's own ticket is
        # updated; a conflict with another tenant's ticket is refused and leaves it unchanged.
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        tickets = sa.Table("tickets", meta, autoload_with=sconn, schema="public")
        own = sconn.execute(sa.select(sa.func.min(tickets.c.id)).where(tickets.c.priority != 1)).scalar()
        row = dict(id=own, tenant_id=1, customer_id=3, subject=f"upsert {driver}", body="b", status="open", priority=2)
        stmt = pg_insert(tickets).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[tickets.c.id], set_={"subject": stmt.excluded.subject}
        ).returning(tickets.c.subject)
        assert sconn.execute(stmt).scalar() == f"upsert {driver}"
        sconn.execute(pg_insert(tickets).values(**dict(row, subject="ignored")).on_conflict_do_nothing())
        subject = sconn.execute(sa.select(tickets.c.subject).where(tickets.c.id == own)).scalar()
        assert subject == f"upsert {driver}", subject
        sconn.commit()
        hidden = dict(row, id=HIDDEN_TICKET, subject="stolen")
        stmt = pg_insert(tickets).values(**hidden)
        try:
            sconn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"subject": stmt.excluded.subject}))
            raise AssertionError("upsert over a hidden row was not refused")
        except sa.exc.DBAPIError as e:
            assert (getattr(e.orig, "pgcode", None) or getattr(e.orig, "sqlstate", None)) == "42501", e
            assert "conflicts with" in str(e.orig), e
        sconn.rollback()
    engine.dispose()

# The same, async (asyncpg).
import asyncio

from sqlalchemy.ext.asyncio import create_async_engine


async def reflect_async():
    engine = create_async_engine(URL.replace("postgres://", "postgresql+asyncpg://", 1))
    async with engine.connect() as aconn:
        names = await aconn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert {"customers", "tickets", "transfers"} <= set(names), names
        meta = sa.MetaData()
        await aconn.run_sync(lambda c: meta.reflect(c, only=["transfers"]))
        transfers = meta.tables["transfers"]
        rows = (await aconn.execute(sa.select(transfers.c.tenant_id, transfers.c.iban))).all()
        assert rows and all(t == 1 and i.startswith("*") for t, i in rows), rows[:3]
        # SQLAlchemy's asyncpg dialect registers json/jsonb codecs at connect, which makes
        # asyncpg introspect those types (with set_config('jit', 'off', false)): reading a
        # jsonb column under policy exercises it.
        meta_rows = (await aconn.execute(sa.select(transfers.c.metadata).limit(2))).scalars().all()
        assert all(isinstance(m, dict) for m in meta_rows), meta_rows
    await engine.dispose()


asyncio.run(reflect_async())
print("OK psycopg2 enforced")
