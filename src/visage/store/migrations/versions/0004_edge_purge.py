"""Purge the edge rows that deletions used to leave behind (data only, no schema change).

Revision ID: 0004_edge_purge
Revises: 0003_edge

Until this revision, deleting a person, revoking their consent or deleting a collection left
edge rows behind: the events naming the person (crops included), and a collection's events,
devices and snapshot records, which a re-created collection of the same name inherited. The
gallery now deletes them in the same transaction; this removes what earlier deletions left and
the crops the new rule would not have kept (no identified person, or a collection created
without ``keep_images``).
"""

from __future__ import annotations

from alembic import op

revision = "0004_edge_purge"
down_revision = "0003_edge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("edge_event", "edge_device", "edge_snapshot"):
        op.execute(f"DELETE FROM {table} WHERE collection NOT IN (SELECT name FROM collection)")
    op.execute(
        "DELETE FROM edge_event WHERE person_id IS NOT NULL"
        " AND person_id NOT IN (SELECT id FROM person)"
    )
    op.execute(  # persons whose every consent record is revoked
        "DELETE FROM edge_event WHERE person_id IN (SELECT c.person_id FROM consent c"
        " GROUP BY c.person_id HAVING COUNT(c.revoked_at) = COUNT(*))"
    )
    op.execute(
        "UPDATE edge_event SET crop = NULL WHERE crop IS NOT NULL AND (person_id IS NULL"
        " OR collection NOT IN (SELECT name FROM collection WHERE keep_images))"
    )


def downgrade() -> None:
    """Nothing to undo: purged rows are gone by design."""
