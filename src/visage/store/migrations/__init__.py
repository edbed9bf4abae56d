"""Alembic migrations of the gallery store, run programmatically by :func:`..store.migrate`."""
