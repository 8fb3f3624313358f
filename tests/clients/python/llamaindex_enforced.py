"""LlamaIndex's SQLDatabase and its text-to-SQL query engine through Portcullis enforcing the
finance example. The engine runs as it would for an agent, with a scripted LLM in place of a
model: it answers the text-to-SQL prompt with fixed SQL (a model's answer may be any SQL, so the
answers include ones that try to read what the policy hides). support-bot sees tenant 1's 10
customers with SSNs redacted; the auditor sees all 30."""
import os
from typing import Any

import sqlalchemy as sa
from llama_index.core import Settings, SQLDatabase
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.query_engine import NLSQLTableQueryEngine


def engine(url):
    return sa.create_engine(url.replace("postgres://", "postgresql+psycopg2://", 1))


class ScriptedLLM(CustomLLM):
    """Answers every text-to-SQL prompt with `sql`, and records the prompts it was given."""

    sql: str = ""
    prompts: list = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted")

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text=f"SQLQuery: {self.sql}\nSQLResult: ")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        yield self.complete(prompt, formatted, **kwargs)


Settings.embed_model = MockEmbedding(embed_dim=8)

# The constructor reflects every table (SQLAlchemy's inspector) under the agent's policy.
bot = SQLDatabase(engine(os.environ["PORTCULLIS_URL"]), include_tables=["customers", "tickets"])
auditor = SQLDatabase(engine(os.environ["PORTCULLIS_AUDITOR_URL"]))
assert set(bot.get_usable_table_names()) == {"customers", "tickets"}
assert {"customers", "tickets", "transfers"} <= set(auditor.get_usable_table_names())
info = bot.get_single_table_info("tickets")
assert "Table 'tickets' has columns: id (INTEGER), tenant_id (INTEGER)" in info, info
assert "['customer_id'] -> customers.['id']" in info, info

# run_sql: the agent's SQL, rewritten.
text, meta = bot.run_sql("select count(*) from customers")
assert meta["result"] == [(10,)], text
_, meta = auditor.run_sql("select count(*) from customers")
assert meta["result"] == [(30,)]
_, meta = bot.run_sql("select distinct tenant_id, ssn from customers where ssn is not null")
assert meta["result"] == [(1, "***")], meta
try:
    bot.run_sql("select * from pg_catalog.pg_authid")
    raise SystemExit("pg_authid must be refused")
except NotImplementedError as e:  # LlamaIndex wraps ProgrammingError so
    assert "not readable" in str(e), str(e)

# The text-to-SQL engine: the table info in its prompt (with sample rows) and the answer's rows
# come through the policy.
llm = ScriptedLLM()
qe = NLSQLTableQueryEngine(sql_database=bot, llm=llm, tables=["customers"], synthesize_response=False)
llm.sql = "SELECT name, ssn FROM customers WHERE tenant_id = 2 OR ssn IS NOT NULL ORDER BY id"
res = qe.query("Which customers have an SSN on file, with the SSN?")
rows = res.metadata["result"]
assert rows and all(ssn == "***" for _, ssn in rows), rows
# Tenant 1's 10 customers only; the redaction hides even which of them have no SSN on file.
assert [n for n, _ in rows] == [f"Customer {i}" for i in range(3, 31, 3)], rows
assert "customers" in llm.prompts[-1] and "ssn" in llm.prompts[-1]
llm.sql = "SELECT count(*) FROM customers"
assert qe.query("How many customers are there?").metadata["result"] == [(10,)]
qa = NLSQLTableQueryEngine(sql_database=auditor, llm=llm, tables=["customers"], synthesize_response=False)
assert qa.query("How many customers are there?").metadata["result"] == [(30,)]

# insert_into_table (LlamaIndex's write helper): allowed for the agent's own tickets, refused
# (42501, naming the policy) for another tenant's, with nothing written.
bot.insert_into_table(
    "tickets",
    {"tenant_id": 1, "customer_id": 3, "subject": "from llamaindex", "body": "b", "status": "open"},
)
_, meta = bot.run_sql("select tenant_id from tickets where subject = 'from llamaindex'")
assert meta["result"] == [(1,)], meta
try:
    bot.insert_into_table(
        "tickets",
        {"tenant_id": 2, "customer_id": 2, "subject": "cross-tenant", "body": "b", "status": "open"},
    )
    raise SystemExit("a ticket of another tenant must be refused")
except sa.exc.ProgrammingError as e:
    assert e.orig.pgcode == "42501" and "support-writes-own-tickets" in str(e), str(e)
_, meta = auditor.run_sql("select count(*) from tickets where subject = 'cross-tenant'")
assert meta["result"] == [(0,)]
print("OK llamaindex enforced")
