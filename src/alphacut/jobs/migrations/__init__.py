"""Alembic migrations of the job database, run by ``alphacut.jobs.migrate`` (no alembic.ini)."""
