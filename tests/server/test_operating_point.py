"""Every identify answer over HTTP states its operating point (issue 16)."""

from __future__ import annotations

import uuid
from pathlib import Path

from .conftest import Server, problem
from .test_photos import enroll_people, identify_photo, people  # noqa: F401  (fixture)


def test_identify_over_http_states_the_collections_operating_point(
    server: Server,
    people: dict[str, list[Path]],  # noqa: F811
) -> None:
    name = f"fpir-{uuid.uuid4().hex[:8]}"
    with server.client(server.admin) as admin:
        made = admin.post("/v1/collections", json={"name": name, "target_fpir": 0.05})
        assert made.status_code == 201, made.text
        assert made.json()["target_fpir"] == 0.05
        for bad in (0, 0.9, "x"):
            problem(admin.post("/v1/collections", json={"name": "bad-fpir", "target_fpir": bad}),
                    422)  # fmt: skip
    with server.client(server.key(["identify", "enroll"], [name])) as client:
        enroll_people(client, name, people)
        templates = client.get(f"/v1/collections/{name}").json()["templates"]
        name_photos = next(iter(people.values()))
        face = identify_photo(client, name, name_photos[3])
    point = face["operating_point"]
    assert point["target_fpir"] == 0.05 and point["templates"] == templates >= 8
    assert point["persons"] == len(people)
    assert point["supported"] is True and 0 < point["expected_fnir"] < 0.5
    assert point["basis"] == "measured" and "FPIR 0.05" in face["threshold_source"]
    # the margin rule: this probe's bar follows its second-nearest person, capped by the ceiling
    assert point["margin"] > 0 and face["threshold"] <= point["ceiling"]
    assert not face["unknown"] and face["candidates"][0]["distance"] <= face["threshold"]
