"""API keys expire and name their devices; edge events are idempotent per device.

Revision ID: 0006_key_expiry_devices
Revises: 0005_target_fpir

- ``api_key.expires_at`` (``NULL``: never, as every existing key) and ``api_key.devices`` (the
  edge device ids the key speaks for; ``NULL``: any, as every existing key).
- ``edge_event``'s idempotency key was unique per API key, so one device sharing a key could
  store an event under another device's next key and have the real one answered
  ``duplicate``. It is now unique per (API key, device, event key); existing rows keep their
  keys (each was stored once per API key, so once per device too).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from visage.store import UTCDateTime

revision = "0006_key_expiry_devices"
down_revision = "0005_target_fpir"
branch_labels = None
depends_on = None

OLD_UNIQUE = {"postgresql": "edge_event_key_id_event_key_key"}
"""The name PostgreSQL gave 0003's unnamed constraint; SQLite's gets one from the convention."""
NAMING = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}
NEW_UNIQUE = "uq_edge_event_device_key"


def _old_unique() -> str:
    return OLD_UNIQUE.get(op.get_bind().dialect.name, "uq_edge_event_key_id_event_key")


def upgrade() -> None:
    with op.batch_alter_table("api_key") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("devices", sa.JSON(), nullable=True))
    with op.batch_alter_table("edge_event", naming_convention=NAMING) as batch:
        batch.drop_constraint(_old_unique(), type_="unique")
        batch.create_unique_constraint(NEW_UNIQUE, ["key_id", "device_id", "event_key"])


def downgrade() -> None:
    with op.batch_alter_table("edge_event", naming_convention=NAMING) as batch:
        batch.drop_constraint(NEW_UNIQUE, type_="unique")
        batch.create_unique_constraint(_old_unique(), ["key_id", "event_key"])
    with op.batch_alter_table("api_key") as batch:
        batch.drop_column("devices")
        batch.drop_column("expires_at")
