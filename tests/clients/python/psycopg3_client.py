"""psycopg 3 through Portcullis: server-side parameters, binary results, pipeline mode,
savepoints, errors, refusals, COPY TO STDOUT. With PORTCULLIS_ENFORCED=1 the agent is
support-bot under the finance example: the same calls, and only tenant 1's rows come back."""
import datetime
import decimal
import os

import psycopg

URL = os.environ["PORTCULLIS_URL"]
ENFORCED = os.environ.get("PORTCULLIS_ENFORCED") == "1"
# Tenant 1's customers (every third); all 30 without a policy.
VISIBLE = list(range(3, 31, 3)) if ENFORCED else list(range(1, 31))
with psycopg.connect(URL) as conn:
    row = conn.execute("select name from customers where id = %s", (7,)).fetchone()
    assert row == (None if ENFORCED else ("Customer 7",)), row
    row = conn.execute("select name from customers where id = %s", (3,)).fetchone()
    assert row == ("Customer 3",), row

    # Binary-format results (a small, unapproved transfer of tenant 1: shown in full).
    tid = conn.execute(
        "select min(id) from transfers where tenant_id = 1 and amount < 1000 and not approved"
    ).fetchone()[0]
    with conn.cursor(binary=True) as cur:
        cur.execute("select id, amount, created_at, approved, metadata, iban from transfers where id = %s", (tid,))
        got, amount, created, approved, metadata, iban = cur.fetchone()
        assert got == tid and isinstance(amount, decimal.Decimal) and isinstance(created, datetime.datetime)
        assert approved is False and metadata["seq"] == tid, (approved, metadata)
        assert iban.startswith("*") == ENFORCED, iban

    # Prepared statements (psycopg prepares after repeated use).
    for i in VISIBLE[:7]:
        assert conn.execute("select id from customers where id = %s", (i,), prepare=True).fetchone() == (i,)

    # Pipeline mode: several extended-protocol queries before one Sync.
    with conn.pipeline():
        cursors = [conn.execute("select %s::int * 2", (i,)) for i in range(5)]
    assert [c.fetchone()[0] for c in cursors] == [0, 2, 4, 6, 8]

    with conn.transaction():
        conn.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'pg3-kept', 'b', 'open')")
        try:
            with conn.transaction():  # a savepoint
                conn.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'pg3-undone', 'b', 'open')")
                conn.execute("select 1/0")
        except psycopg.errors.DivisionByZero:
            pass
    got = conn.execute("select subject from tickets where subject like 'pg3-%' order by 1").fetchall()
    assert got == [("pg3-kept",)], got

    try:
        conn.execute("set session authorization postgres")
        raise SystemExit("must be refused")
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()  # the refusal aborted psycopg's implicit transaction, as any error would
    assert conn.execute("select 'after'").fetchone() == ("after",)

    with conn.cursor() as cur:
        with cur.copy("COPY (select id from customers order by id) TO STDOUT") as copy:
            ids = [int(row[0]) for row in copy.rows()]
    assert ids == VISIBLE, ids
print("OK psycopg3")
