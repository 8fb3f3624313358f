"""Runs policy filters in qdrant-client's local mode (its pure-Python implementation of
Qdrant's filter rules, no server) and checks that each admits the same points as Qdrant's engine
did. Input: a JSON file {"payloads": [{"id", "payload"}], "cases": [{"filter", "ids"}]}, as
written by connectors/tests/vector_filter_agreement.rs. Exit 1 with the first disagreements."""

import json
import sys

from qdrant_client import QdrantClient, models


def main(path):
    with open(path) as f:
        data = json.load(f)
    client = QdrantClient(":memory:")
    client.create_collection(
        "points", vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT)
    )
    client.upsert(
        "points",
        points=[
            models.PointStruct(id=p["id"], vector=[1.0], payload=p["payload"])
            for p in data["payloads"]
        ],
    )
    failures = []
    for case in data["cases"]:
        flt = models.Filter.model_validate(case["filter"])
        points, _ = client.scroll("points", scroll_filter=flt, limit=100_000, with_payload=False)
        got = sorted(p.id for p in points)
        want = sorted(case["ids"])
        if got != want:
            failures.append(
                {"filter": case["filter"], "local": got, "engine": want,
                 "only_local": sorted(set(got) - set(want)), "only_engine": sorted(set(want) - set(got))}
            )
    if failures:
        for f in failures[:3]:
            print(json.dumps(f))
        print(f"{len(failures)} of {len(data['cases'])} filters disagree", file=sys.stderr)
        sys.exit(1)
    print(f"{len(data['cases'])} filters agree")


if __name__ == "__main__":
    main(sys.argv[1])
