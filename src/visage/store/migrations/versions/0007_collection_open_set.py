"""A collection's own open-set calibration: ``collection.open_set`` (JSON text, ``NULL``: the
model's shipped one, as for every existing collection).

Revision ID: 0007_collection_open_set
Revises: 0006_key_expiry_devices

Written by ``visage calibrate --folder DIR --collection NAME`` from the operator's own
labelled photos; identify derives its rule from it instead of ``data/open_set.json``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_collection_open_set"
down_revision = "0006_key_expiry_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("collection") as batch:
        batch.add_column(sa.Column("open_set", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("collection") as batch:
        batch.drop_column("open_set")
