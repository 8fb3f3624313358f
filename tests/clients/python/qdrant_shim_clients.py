"""qdrant-client and LangChain's QdrantVectorStore through Portcullis's Qdrant API, used as their
docs show, by agents with different rights over the same collections (policies/examples/rag):

- `ingestor` (tenant 1) and `ingestor-t2` (tenant 2) create collections and write documents;
- `rag-bot` (tenant 1; groups support, billing) reads what its groups may see, never restricted
  documents, internal notes or authors (masked);
- `compliance-bot` (tenant 1; groups support, legal) also reads restricted documents, notes and
  authors.

Embeddings are LangChain's DeterministicFakeEmbedding: nothing is downloaded.
"""

import os
import uuid
import warnings

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_qdrant import QdrantVectorStore
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

# The shim is plain HTTP in tests; the client rightly warns about an API key on it.
warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")

URL = os.environ["QDRANT_SHIM_URL"]


def key(agent):
    return os.environ["KEY_" + agent.replace("-", "_").upper()]


def client(agent):
    return QdrantClient(url=URL, api_key=key(agent), timeout=30)


def refused(fn, status=403):
    try:
        fn()
    except UnexpectedResponse as e:
        assert e.status_code == status, (e.status_code, e.content)
        return e.content.decode()
    raise AssertionError("not refused")


# --- qdrant-client on a flat collection -------------------------------------------------------
DOCS = [
    # id, tenant, groups, classification
    (1, 1, ["support"], "internal"),
    (2, 1, ["billing"], "public"),
    (3, 1, ["legal"], "internal"),
    (4, 1, ["support", "legal"], "restricted"),
    (5, 1, ["hr"], "internal"),
    (11, 2, ["support"], "internal"),
]


def vec(i):
    return [1.0, i / 10.0, 0.5, -float(i % 3)]


def point(i, tenant, groups, cls):
    return models.PointStruct(
        id=i,
        vector=vec(i),
        payload={
            "tenant_id": tenant,
            "acl_groups": groups,
            "classification": cls,
            "title": f"doc {i}",
            "body": f"text of {i}",
            "internal_notes": f"note {i}",
        },
    )


ingestor = client("ingestor")
ingestor.create_collection(
    "support_docs", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
)
ingestor.create_payload_index("support_docs", "tenant_id", models.PayloadSchemaType.INTEGER)
ingestor.upsert("support_docs", [point(*d) for d in DOCS if d[1] == 1])
client("ingestor-t2").upsert("support_docs", [point(*d) for d in DOCS if d[1] == 2])
# Writing another tenant's document is refused.
refused(lambda: ingestor.upsert("support_docs", [point(12, 2, ["support"], "public")]))

rag = client("rag-bot")
assert rag.collection_exists("support_docs")
info = rag.get_collection("support_docs")  # parsed strictly by the client's models
assert info.points_count == 2, info.points_count
assert [c.name for c in rag.get_collections().collections] == ["support_docs"]

hits = rag.query_points("support_docs", query=vec(1), limit=50, with_payload=True).points
assert {h.id for h in hits} == {1, 2}, hits
assert all("internal_notes" not in h.payload for h in hits), hits
assert {r.id for r in rag.retrieve("support_docs", ids=[1, 2, 3, 4, 5, 11])} == {1, 2}
records, _ = rag.scroll("support_docs", limit=50)
assert {r.id for r in records} == {1, 2}
assert rag.count("support_docs", exact=False).count == 2
batch = rag.query_batch_points(
    "support_docs",
    requests=[
        models.QueryRequest(query=vec(3), limit=10),
        models.QueryRequest(
            prefetch=[models.Prefetch(query=vec(4), limit=10)],
            query=models.FusionQuery(fusion=models.Fusion.RRF),
            limit=10,
        ),
    ],
)
assert [{p.id for p in r.points} for r in batch] == [{1, 2}, {1, 2}], batch
public = rag.query_points(
    "support_docs",
    query=vec(1),
    query_filter=models.Filter(
        must=[models.FieldCondition(key="classification", match=models.MatchValue(value="public"))]
    ),
).points
assert {h.id for h in public} == {2}
# Filtering on a field rag-bot may not read is an oracle: refused.
refused(
    lambda: rag.count(
        "support_docs",
        count_filter=models.Filter(
            must=[models.FieldCondition(key="internal_notes", match=models.MatchText(text="note"))]
        ),
    )
)
refused(lambda: rag.query_points("support_docs", query=models.RecommendQuery(recommend=models.RecommendInput(positive=[3]))))
refused(lambda: rag.upsert("support_docs", [point(7, 1, ["support"], "public")]))
refused(lambda: rag.delete_collection("support_docs"))

compliance = client("compliance-bot")
hits = compliance.query_points("support_docs", query=vec(1), limit=50, with_payload=True).points
assert {h.id for h in hits} == {1, 3, 4}, hits
assert all(h.payload["internal_notes"] == f"note {h.id}" for h in hits), hits

# --- LangChain's QdrantVectorStore on a collection with nested metadata -----------------------
embeddings = DeterministicFakeEmbedding(size=16)
KB = [
    ("How to reset a password", {"tenant_id": 1, "acl_groups": ["support"], "classification": "internal", "author": "ann"}),
    ("Refund policy for annual plans", {"tenant_id": 1, "acl_groups": ["billing"], "classification": "public", "author": "bob"}),
    ("Litigation hold procedure", {"tenant_id": 1, "acl_groups": ["legal"], "classification": "restricted", "author": "cy"}),
    ("Escalation matrix", {"tenant_id": 1, "acl_groups": ["support", "legal"], "classification": "restricted", "author": "di"}),
    ("Salary bands", {"tenant_id": 1, "acl_groups": ["hr"], "classification": "internal", "author": "ed"}),
]
ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, text)) for text, _ in KB]
by_id = dict(zip(ids, KB))
QdrantVectorStore.from_documents(
    [Document(page_content=t, metadata=m) for t, m in KB],
    embeddings,
    url=URL,
    api_key=key("ingestor"),
    collection_name="kb",
    ids=ids,
)


def store(agent):
    return QdrantVectorStore(client=client(agent), collection_name="kb", embedding=embeddings)


def texts(docs):
    return {d.page_content for d in docs}


reader = store("rag-bot")
expected = {"How to reset a password", "Refund policy for annual plans"}
docs = reader.similarity_search("password", k=10)
assert texts(docs) == expected, docs
assert all(d.metadata["author"] == "***" for d in docs), [d.metadata for d in docs]
scored = reader.similarity_search_with_score("refund", k=10)
assert texts(d for d, _ in scored) == expected
assert texts(reader.as_retriever(search_kwargs={"k": 10}).invoke("anything")) == expected
assert texts(reader.max_marginal_relevance_search("refund", k=5, fetch_k=10)) <= expected
only_public = reader.similarity_search(
    "x",
    k=10,
    filter=models.Filter(
        must=[models.FieldCondition(key="metadata.classification", match=models.MatchValue(value="public"))]
    ),
)
assert texts(only_public) == {"Refund policy for annual plans"}
# The masked author cannot be filtered on.
refused(
    lambda: reader.similarity_search(
        "x",
        filter=models.Filter(
            must=[models.FieldCondition(key="metadata.author", match=models.MatchValue(value="cy"))]
        ),
    )
)
assert texts(reader.get_by_ids(ids)) == expected

auditor = store("compliance-bot")
docs = auditor.similarity_search("litigation", k=10)
assert texts(docs) == {"How to reset a password", "Litigation hold procedure", "Escalation matrix"}, docs
assert {d.metadata["author"] for d in docs} == {"ann", "cy", "di"}

assert store("rag-bot-t2").similarity_search("password", k=10) == []

# The ingestion agent deletes a document; readers no longer find it.
writer = store("ingestor")
writer.delete(ids=[ids[1]])
assert texts(reader.similarity_search("refund", k=10)) == {"How to reset a password"}
# A reader cannot add documents.
refused(lambda: reader.add_texts(["injected"], metadatas=[{"tenant_id": 1, "acl_groups": ["support"], "classification": "public"}]))

print("qdrant shim clients ok")
