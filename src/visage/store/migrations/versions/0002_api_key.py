"""The server's API keys: ``api_key`` (public id, sha256 of the token, scopes, collections).

Revision ID: 0002_api_key
Revises: 0001

The model, ``ApiKeyRow``, lives in :mod:`visage.store` with every other table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from visage.store import UTCDateTime

revision = "0002_api_key"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("collections", sa.JSON(), nullable=False),
        sa.Column("rate_limit", sa.Float(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_key")
