"""SQLAlchemy 2 (psycopg 3 driver) through Portcullis: connect probes, reflection, ORM-style
parameters, savepoints, errors."""
import os

import sqlalchemy as sa

url = os.environ["PORTCULLIS_URL"].replace("postgres://", "postgresql+psycopg://", 1)
engine = sa.create_engine(url)
with engine.connect() as conn:
    assert conn.execute(sa.text("select name from customers where id = :id"), {"id": 7}).scalar() == "Customer 7"

    # Reflection reads pg_catalog.
    insp = sa.inspect(conn)
    assert {"customers", "tickets", "transfers"} <= set(insp.get_table_names())
    cols = [c["name"] for c in insp.get_columns("customers")]
    assert cols[:3] == ["id", "tenant_id", "name"], cols
    assert insp.get_pk_constraint("customers")["constrained_columns"] == ["id"]
    assert insp.get_foreign_keys("tickets")[0]["referred_table"] == "customers"

    meta = sa.MetaData()
    tickets = sa.Table("tickets", meta, autoload_with=conn)
    conn.rollback()  # end the autobegun reflection transaction
    with conn.begin():
        conn.execute(tickets.insert().values(tenant_id=1, customer_id=1, subject="sa-kept", body="b", status="open"))
        sp = conn.begin_nested()
        conn.execute(tickets.insert().values(tenant_id=1, customer_id=1, subject="sa-undone", body="b", status="open"))
        sp.rollback()
    got = conn.execute(sa.select(tickets.c.subject).where(tickets.c.subject.like("sa-%"))).scalars().all()
    assert got == ["sa-kept"], got

    try:
        conn.execute(sa.text("select 1/0"))
        raise SystemExit("must fail")
    except sa.exc.DataError:
        conn.rollback()
    assert conn.execute(sa.text("select 1")).scalar() == 1
print("OK sqlalchemy")
