"""Indexes for the audit log's filters: ``ix_audit_event_at`` (``at``) and
``ix_audit_event_actor`` (``actor, seq``).

Revision ID: 0008_audit_filter_indexes
Revises: 0007_collection_open_set

``GET /v1/audit`` and ``visage audit show`` filter by time (``since`` / ``until``) and by actor,
newest first; without these each such page scanned the table (see
:func:`visage.store.audit.events`). Building them reads the whole table once.
"""

from __future__ import annotations

from alembic import op

revision = "0008_audit_filter_indexes"
down_revision = "0007_collection_open_set"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_actor", "audit_event", ["actor", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_event_actor", table_name="audit_event")
    op.drop_index("ix_audit_event_at", table_name="audit_event")
