"""Checks a pagedrt server's /openapi.json with tools nobody here wrote.

Usage: openapi_check.py DOC.json RESPONSES.json

- DOC.json must be a valid OpenAPI 3.1 document (`openapi-spec-validator`).
- RESPONSES.json is a list of real answers the test collected: {"method", "path", "status",
  "content_type", "body"} (body: the JSON value, or for an event stream the list of its
  parsed events). Each must be documented for its operation and status with its media type,
  and its body must validate (`jsonschema`, draft 2020-12, the document's $refs resolved)
  against the documented schema; an event stream's every event against the event schema.

Prints `SKIP: ...` and exits 0 when a package is missing; `OK` at the end otherwise.
"""

import json
import sys

try:
    import jsonschema
    from openapi_spec_validator import validate as validate_spec
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
except ImportError as e:  # the test turns this into a failure where CI installed them
    print(f"SKIP: {e} (install jsonschema and openapi-spec-validator)")
    sys.exit(0)


def main():
    doc = json.load(open(sys.argv[1]))
    answers = json.load(open(sys.argv[2]))
    validate_spec(doc)
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openapi", resource)
    failures = []
    for a in answers:
        op = doc["paths"].get(a["path"], {}).get(a["method"])
        if op is None:
            failures.append(f"{a['method']} {a['path']}: not in the document")
            continue
        resp = op["responses"].get(str(a["status"]))
        if resp is None:
            failures.append(f"{a['method']} {a['path']}: status {a['status']} not documented")
            continue
        content = resp.get("content", {})
        media = (a["content_type"] or "").split(";")[0].strip()
        if not content:
            if a["body"] not in (None, ""):
                failures.append(f"{a['method']} {a['path']} {a['status']}: a body, none documented")
            continue
        if media not in content:
            failures.append(
                f"{a['method']} {a['path']} {a['status']}: {media!r} not among {list(content)}")
            continue
        # Resolve the document's `#/components/...` references inside it.
        wrapped = {"$ref": "urn:openapi#/" + "/".join(["paths", esc(a["path"]), a["method"],
                                                       "responses", str(a["status"]),
                                                       "content", esc(media), "schema"])}
        validator = jsonschema.Draft202012Validator(wrapped, registry=registry)
        items = a["body"] if media == "text/event-stream" else [a["body"]]
        if media == "text/event-stream" and not items:
            failures.append(f"{a['method']} {a['path']}: an empty event stream")
        for i, item in enumerate(items):
            errors = sorted(validator.iter_errors(item), key=lambda e: list(e.path))
            for e in errors[:3]:
                where = "/".join(map(str, e.path))
                failures.append(
                    f"{a['method']} {a['path']} {a['status']} item {i} at /{where}: {e.message}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"{len(answers)} answers validated")
    print("OK")


def esc(part):
    """A JSON pointer token."""
    return part.replace("~", "~0").replace("/", "~1")


if __name__ == "__main__":
    main()
