"""Revision 0006 on a store that already holds keys and edge events (SQLite and PostgreSQL):
existing keys keep working (no expiry, any device), existing events keep their idempotency, and
from then on an event key is unique per device, not per API key."""

from __future__ import annotations

import hashlib

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from visage.server.keys_store import KeyStore
from visage.store import Store
from visage.store.engine import _migrations_config, migrate

TOKEN = "vk_0123456789ab." + "A" * 43
EVENT = (
    "INSERT INTO edge_event (key_id, event_key, collection, device_id, track, first_seen,"
    " last_seen, detections, quality, embedding_sha256, decided_by, audit_seq, received_at)"
    " VALUES ('vk_0123456789ab', 'e-1', 'lobby', :device, 1, '2026-01-01 00:00:00',"
    " '2026-01-01 00:00:00', 1, 0.9, :sha, 'server', 1, '2026-01-01 00:00:00')"
)


def test_0006_keeps_old_keys_and_events_and_scopes_event_keys_by_device(db_url: str) -> None:
    engine = create_engine(db_url)
    command.upgrade(_migrations_config(engine), "0005_target_fpir")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_key (id, name, token_sha256, scopes, collections, created_at)"
                " VALUES ('vk_0123456789ab', 'old', :sha, '[\"device\"]', '[\"*\"]',"
                " '2026-01-01 00:00:00')"
            ),
            {"sha": hashlib.sha256(TOKEN.encode()).hexdigest()},
        )
        conn.execute(text(EVENT), {"device": "cam-a", "sha": "0" * 64})
    migrate(engine)

    key = KeyStore(Store(engine)).authenticate(TOKEN)  # the old key: never expires, any device
    assert key.expires_at is None and key.devices is None and key.speaks_for("cam-z")
    with engine.begin() as conn:  # another device may use the same event key now
        conn.execute(text(EVENT), {"device": "cam-b", "sha": "1" * 64})
    with pytest.raises(IntegrityError), engine.begin() as conn:  # the same device may not
        conn.execute(text(EVENT), {"device": "cam-a", "sha": "2" * 64})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM edge_event")).scalar_one() == 2
    engine.dispose()
