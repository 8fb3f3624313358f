"""LangGraph's Postgres store (agent memory: `langgraph-checkpoint-postgres`'s PostgresStore)
through Portcullis. The store's tables are created by the DBA (its `setup()` is DDL, which
agents may not run); the agent then uses the store unchanged. Under the test's policy,
support-bot keeps items only under the namespace ("tenant1", …).

Usage: langgraph_enforced.py setup   (direct, as the database owner: PORTCULLIS_DIRECT_URL)
       langgraph_enforced.py agent   (through Portcullis as support-bot: PORTCULLIS_URL)"""
import os
import sys

import psycopg
from langgraph.store.postgres import PostgresStore

phase = sys.argv[1]
if phase == "setup":
    url = os.environ["PORTCULLIS_DIRECT_URL"]
    with PostgresStore.from_conn_string(url) as store:
        store.setup()
        store.put(("tenant2", "notes"), "secret", {"text": "tenant 2's secret"})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON store TO {os.environ['UPSTREAM_USER']}"
        )
    print("OK langgraph setup")
    sys.exit(0)

with PostgresStore.from_conn_string(os.environ["PORTCULLIS_URL"]) as store:
    # put: INSERT … ON CONFLICT (prefix, key) DO UPDATE, checked against the policy.
    store.put(("tenant1", "memories"), "m1", {"text": "likes tea"})
    store.put(("tenant1", "memories"), "m1", {"text": "likes green tea"})
    store.put(("tenant1", "prefs"), "lang", {"text": "en"})
    # get: a WITH query that refreshes TTLs (an UPDATE … RETURNING) in front of the SELECT.
    item = store.get(("tenant1", "memories"), "m1")
    assert item is not None and item.value == {"text": "likes green tea"}, item
    # Another tenant's item is invisible, by key, by search and by namespace listing.
    assert store.get(("tenant2", "notes"), "secret") is None
    assert store.search(("tenant2",)) == []
    found = store.search(("tenant1",), limit=10)
    assert sorted(i.key for i in found) == ["lang", "m1"], found
    spaces = store.list_namespaces()
    assert sorted(spaces) == [("tenant1", "memories"), ("tenant1", "prefs")], spaces
    # Writing into another tenant's namespace is refused, and overwriting its item too.
    for ns, key in [(("tenant2", "notes"), "secret"), (("tenant2", "x"), "new")]:
        try:
            store.put(ns, key, {"text": "overwritten"})
            raise SystemExit(f"put into {ns} must be refused")
        except psycopg.errors.InsufficientPrivilege as e:
            assert "42501" == e.sqlstate, e
    # delete: only the agent's own items.
    store.delete(("tenant1", "memories"), "m1")
    assert store.get(("tenant1", "memories"), "m1") is None
    store.delete(("tenant2", "notes"), "secret")  # nothing visible to delete
print("OK langgraph enforced")
