"""psycopg2 through Portcullis: parameters, savepoints, errors, refusals, COPY TO STDOUT."""
import io
import os
import sys

import psycopg2

URL = os.environ["PORTCULLIS_URL"]
conn = psycopg2.connect(URL)
cur = conn.cursor()

cur.execute("select name from customers where id = %s and tenant_id = %s", (7, 2))
assert cur.fetchone() == ("Customer 7",), "parameterized query"

cur.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'pg2-kept', 'b', 'open')")
cur.execute("savepoint sp")
cur.execute("insert into tickets (tenant_id, customer_id, subject, body, status) values (1, 1, 'pg2-undone', 'b', 'open')")
cur.execute("rollback to savepoint sp")
conn.commit()
cur.execute("select subject from tickets where subject like 'pg2-%' order by 1")
assert cur.fetchall() == [("pg2-kept",)], "savepoint"

try:
    cur.execute("select 1/0")
    raise SystemExit("division by zero must fail")
except psycopg2.Error as e:
    assert e.pgcode == "22012", e.pgcode
conn.rollback()
try:
    cur.execute("set role postgres")
    raise SystemExit("SET ROLE must be refused")
except psycopg2.Error as e:
    assert e.pgcode == "42501", e.pgcode
conn.rollback()
cur.execute("select %s::int + 1", (41,))
assert cur.fetchone() == (42,), "good query after errors"

buf = io.StringIO()
cur.copy_expert("COPY (select id, email from customers order by id) TO STDOUT WITH (FORMAT csv)", buf)
lines = buf.getvalue().splitlines()
assert len(lines) == 30 and lines[0] == "1,customer1@example.com", lines[:2]

cur.execute("select pg_catalog.version()")
conn.close()
print("OK psycopg2")
