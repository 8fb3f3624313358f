"""LlamaIndex's QdrantVectorStore through Portcullis's Qdrant API (policies/examples/rag,
collection `notes`), as its docs show: an index built by the ingestion agent, hybrid (dense and
sparse) retrievers for two readers with different rights, and a document deleted.

LlamaIndex stores each node twice: its metadata as flat payload fields and the whole node as JSON
in `_node_content`. The reader must not find a hidden field in either. Embeddings are
MockEmbedding and a word-hash sparse encoder: nothing is downloaded.
"""

import json
import os
import warnings
import zlib

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")

URL = os.environ["QDRANT_SHIM_URL"]
Settings.embed_model = MockEmbedding(embed_dim=8)
Settings.llm = None


def key(agent):
    return os.environ["KEY_" + agent.replace("-", "_").upper()]


def client(agent):
    return QdrantClient(url=URL, api_key=key(agent), timeout=30)


def sparse(texts):
    """A bag of hashed words: the sparse half of hybrid search, offline."""
    indices, values = [], []
    for text in texts:
        words = {}
        for w in text.lower().split():
            i = zlib.crc32(w.encode()) % 100_000
            words[i] = words.get(i, 0.0) + 1.0
        indices.append(sorted(words))
        values.append([words[i] for i in sorted(words)])
    return indices, values


def store(agent):
    return QdrantVectorStore(
        collection_name="notes",
        client=client(agent),
        enable_hybrid=True,
        sparse_doc_fn=sparse,
        sparse_query_fn=sparse,
    )


NOTES = [
    ("reset password steps for customers", {"tenant_id": 1, "acl_groups": ["support"], "classification": "internal", "author": "author-ann", "internal_notes": "check MFA first"}),
    ("refund rules for annual plans", {"tenant_id": 1, "acl_groups": ["billing"], "classification": "public", "author": "author-bob", "internal_notes": "max 30 days"}),
    ("litigation hold for customer data", {"tenant_id": 1, "acl_groups": ["legal"], "classification": "restricted", "author": "author-cy", "internal_notes": "counsel only"}),
    ("salary bands per level", {"tenant_id": 1, "acl_groups": ["hr"], "classification": "internal", "author": "author-ed", "internal_notes": "confidential"}),
]
docs = [Document(text=t, metadata=m, doc_id=f"note-{i}") for i, (t, m) in enumerate(NOTES)]
VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store("ingestor")))


def retrieve(agent, query, mode="hybrid"):
    index = VectorStoreIndex.from_vector_store(store(agent))
    retriever = index.as_retriever(similarity_top_k=10, sparse_top_k=10, vector_store_query_mode=mode)
    return retriever.retrieve(query)


def check_hidden(nodes, hidden_values):
    for n in nodes:
        blob = json.dumps(n.node.to_dict())
        for v in hidden_values:
            assert v not in blob, (v, blob)


for mode in ["default", "hybrid"]:
    got = retrieve("rag-bot", "customers password refund", mode)
    assert {n.node.get_content() for n in got} == {NOTES[0][0], NOTES[1][0]}, (mode, got)
    for n in got:
        assert "internal_notes" not in n.node.metadata, n.node.metadata
        assert n.node.metadata["author"] == "***", n.node.metadata
    check_hidden(got, ["check MFA first", "max 30 days", "author-ann", "author-bob"])

got = retrieve("compliance-bot", "litigation customer", "hybrid")
assert {n.node.get_content() for n in got} == {NOTES[0][0], NOTES[2][0]}, got
assert {n.node.metadata["internal_notes"] for n in got} == {"check MFA first", "counsel only"}
assert {n.node.metadata["author"] for n in got} == {"author-ann", "author-cy"}

# Raw payloads: the flat fields and the blob are projected alike.
points, _ = client("rag-bot").scroll("notes", limit=10, with_payload=True)
assert len(points) == 2
for p in points:
    assert "internal_notes" not in p.payload and p.payload["author"] == "***", p.payload
    node = json.loads(p.payload["_node_content"])
    assert "internal_notes" not in node["metadata"] and node["metadata"]["author"] == "***", node
# Filtering on the blob would search hidden fields: refused.
try:
    from qdrant_client import models

    client("rag-bot").count(
        "notes",
        count_filter=models.Filter(must=[models.FieldCondition(key="_node_content", match=models.MatchText(text="MFA"))]),
    )
    raise AssertionError("a filter on _node_content was not refused")
except UnexpectedResponse as e:
    assert e.status_code == 403, e

# The ingestion agent deletes a document by its id; it is gone for readers.
writer = VectorStoreIndex.from_vector_store(store("ingestor"))
writer.delete_ref_doc("note-1")
got = retrieve("rag-bot", "refund", "default")
assert {n.node.get_content() for n in got} == {NOTES[0][0]}, got

print("llamaindex qdrant shim ok")
