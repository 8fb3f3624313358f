"""Checks Portcullis's Qdrant REST replies against qdrant-client's own response models (the
pydantic models its REST transport parses replies into; some reject unknown keys). Input: a
JSON file {"<ModelName>": [reply, ...], "Record[]": [[record, ...], ...]} written by
connectors/tests/embedded_vector.rs. Exit 1 naming the first reply a model refuses."""

import json
import sys

from pydantic import TypeAdapter
from qdrant_client.http import models


def main(path):
    with open(path) as f:
        replies = json.load(f)
    checked = 0
    for name, values in replies.items():
        if name.endswith("[]"):
            adapter = TypeAdapter(list[getattr(models, name[:-2])])
        else:
            adapter = TypeAdapter(getattr(models, name))
        for value in values:
            try:
                adapter.validate_python(value)
            except Exception as e:  # pydantic's ValidationError, named with the reply
                print(f"{name}: {json.dumps(value)[:400]}\n{e}", file=sys.stderr)
                sys.exit(1)
            checked += 1
    print(f"{checked} replies parse with qdrant-client's models")


if __name__ == "__main__":
    main(sys.argv[1])
