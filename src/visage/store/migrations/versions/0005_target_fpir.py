"""A collection's operating point: ``collection.target_fpir`` (default 0.01, existing ones too).

Revision ID: 0005_target_fpir
Revises: 0004_edge_purge

identify derives its threshold from this target and the collection's current size (see
:func:`visage.decision.open_set_threshold`) instead of the fixed per-comparison threshold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_target_fpir"
down_revision = "0004_edge_purge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("collection") as batch:
        batch.add_column(
            sa.Column("target_fpir", sa.Float(), nullable=False, server_default=sa.text("0.01"))
        )


def downgrade() -> None:
    with op.batch_alter_table("collection") as batch:
        batch.drop_column("target_fpir")
