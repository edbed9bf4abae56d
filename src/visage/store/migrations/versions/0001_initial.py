"""The initial gallery schema: state, collection, person, consent, template, audit_event.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from visage.store import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    state = op.create_table(
        "gallery_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.Column("audit_head", sa.String(64), nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "audit_seq": 0, "audit_head": GENESIS}])
    op.create_table(
        "collection",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("keep_images", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "person",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "collection_id",
            sa.Integer(),
            sa.ForeignKey("collection.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("display_name", sa.String(300), nullable=False),
        sa.Column("external_id", sa.String(300), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("collection_id", "external_id"),
    )
    op.create_index("ix_person_collection_id", "person", ["collection_id"])
    op.create_table(
        "consent",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "person_id", sa.String(32), sa.ForeignKey("person.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("basis", sa.String(40), nullable=False),
        sa.Column("purpose", sa.String(300), nullable=True),
        sa.Column("granted_by", sa.String(300), nullable=False),
        sa.Column("granted_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(300), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_consent_person_id", "consent", ["person_id"])
    op.create_table(
        "template",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "person_id", sa.String(32), sa.ForeignKey("person.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "collection_id",
            sa.Integer(),
            sa.ForeignKey("collection.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("model_id", sa.String(100), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("person_id", "source_sha256"),
    )
    op.create_index("ix_template_person_id", "template", ["person_id"])
    op.create_index("ix_template_collection_id", "template", ["collection_id", "id"])
    op.create_table(
        "audit_event",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("collection", sa.String(200), nullable=True),
        sa.Column("purpose", sa.String(300), nullable=True),
        sa.Column("input_hash", sa.String(64), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_event_collection", "audit_event", ["collection"])


def downgrade() -> None:
    for table in ("audit_event", "template", "consent", "person", "collection", "gallery_state"):
        op.drop_table(table)
