"""Alembic environment: runs online against the engine handed over in ``config.attributes``.

Revisions are written by hand beside ``versions/0001_initial.py`` and kept in step with the
models in ``visage/store/tables.py``; a test compares the migrated schema with the models.
"""

from __future__ import annotations

from alembic import context

from visage.store import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
