"""The server's API keys: ``api_key`` (public id, sha256 of the token, scopes, collections).

Revision ID: 0002_api_key
Revises: 0001

The model lives in :mod:`visage.server.keys_store` on the gallery's ``Base``; importing it here
registers the table on ``Base.metadata`` whenever the migrations are loaded, so ``env.py`` and
the schema-versus-models test compare against the complete schema.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import visage.server.keys_store  # noqa: F401  (registers ApiKeyRow on Base.metadata)
from visage.gallery.store import UTCDateTime

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
