"""Edge devices: ``edge_device`` (registry), ``edge_event`` (stored once per key), ``edge_snapshot``.

Revision ID: 0003_edge
Revises: 0002_api_key

The models live in :mod:`visage.store` with every other table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from visage.store import UTCDateTime

revision = "0003_edge"
down_revision = "0002_api_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_device",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(100), nullable=False),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("agent_version", sa.String(50), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("snapshot_sequence", sa.Integer(), nullable=True),
        sa.Column("queue_pending", sa.Integer(), nullable=True),
        sa.Column("queue_dropped", sa.Integer(), nullable=True),
        sa.Column("queue_dead", sa.Integer(), nullable=True),
        sa.UniqueConstraint("key_id", "device_id", "collection"),
    )
    op.create_index("ix_edge_device_collection", "edge_device", ["collection"])
    op.create_table(
        "edge_event",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("event_key", sa.String(64), nullable=False),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("device_id", sa.String(100), nullable=False),
        sa.Column("track", sa.Integer(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.Column("detections", sa.Integer(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("embedding_sha256", sa.String(64), nullable=False),
        sa.Column("person_id", sa.String(32), nullable=True),
        sa.Column("distance", sa.Float(), nullable=True),
        sa.Column("decided_by", sa.String(10), nullable=False),
        sa.Column("snapshot_sequence", sa.Integer(), nullable=True),
        sa.Column("crop", sa.LargeBinary(), nullable=True),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("key_id", "event_key"),
    )
    op.create_index("ix_edge_event_collection", "edge_event", ["collection"])
    op.create_table(
        "edge_snapshot",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("collection", sa.String(200), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("collection", "sequence"),
    )


def downgrade() -> None:
    for table in ("edge_snapshot", "edge_event", "edge_device"):
        op.drop_table(table)
