"""Every JSON request body in the OpenAPI document has an example, and each works as it stands
(issue 13 item 13): posted in order to a real server, from creating a collection to revoking
consent and an edge device's report, every one is accepted."""

from __future__ import annotations

from typing import Any

from .conftest import Server

# The order a user would follow; {collection} and {person} are what the examples create.
WORKFLOW = (
    ("post", "/v1/collections", 201),
    ("post", "/v1/collections/{collection}/persons", 201),
    ("patch", "/v1/collections/{collection}/persons/{person}", 200),
    ("post", "/v1/collections/{collection}/persons/{person}/consents", 201),
    ("post", "/v1/collections/{collection}/persons/{person}/faces", 201),
    ("post", "/v1/collections/{collection}/faces/bulk", 200),
    ("post", "/v1/collections/{collection}/identify", 200),
    ("post", "/v1/collections/{collection}/find-similar", 200),
    ("post", "/v1/group", 200),
    ("post", "/v1/collections/{collection}/persons/{person}/consents/revoke", 200),
    ("post", "/v1/keys", 201),
)


def _example(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    """The example of an operation's JSON body schema (through ``$ref`` and ``anyOf``)."""
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
    name = next(r for r in refs if r).split("/")[-1]
    examples = doc["components"]["schemas"][name].get("examples")
    assert examples, f"{name} has no example"
    return dict(examples[0])


def test_every_json_body_has_an_example_that_works(server: Server) -> None:
    doc = server.client(server.admin).get("/openapi.json").json()
    with_json = {
        (method, path)
        for path, operations in doc["paths"].items()
        for method, op in operations.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
    }
    assert {(m, p) for m, p, _ in WORKFLOW} | {("post", "/v1/edge/events")} == with_json
    collection = _example(doc, doc["paths"]["/v1/collections"]["post"])["name"]
    person = _example(doc, doc["paths"]["/v1/collections/{collection}/persons"]["post"])
    ref = person["external_id"]
    with server.client(server.admin) as client:
        for method, template, status in WORKFLOW:
            operation = doc["paths"][template][method]
            body = _example(doc, operation)
            path = template.format(collection=collection, person=ref)
            params = {"purpose": "example"} if "purpose" in str(operation.get("parameters")) else {}
            answer = client.request(method, path, json=body, params=params)
            assert answer.status_code == status, (method, path, answer.text[:300])
        found = client.post(
            f"/v1/collections/{collection}/identify",
            json=_example(doc, doc["paths"]["/v1/collections/{collection}/identify"]["post"]),
            params={"purpose": "example"},
        ).json()
    # After the revoke the person is gone from search: the examples also tell a true story.
    assert found["faces"][0]["unknown"] and found["faces"][0]["candidates"] == [], found
    edge = _example(doc, doc["paths"]["/v1/edge/events"]["post"])
    with server.client(server.key(["device"], [collection], devices=["door-1"])) as device:
        sent = device.post("/v1/edge/events", params={"collection": collection}, json=edge)
    assert sent.status_code == 200, sent.text
    assert [r["status"] for r in sent.json()["receipts"]] == ["stored"], sent.text
