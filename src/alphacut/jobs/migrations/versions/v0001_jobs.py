"""The jobs table, as the SQLite store created it before migrations existed.

A database from that release has this table already, with no ``alembic_version``: the table
and its rows are kept as they are (the definition below is the same), and the upgrade records
that the database is at this revision. Later revisions then apply to it like to any other.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Double precision everywhere; spelled REAL on SQLite, as the pre-migration schema has it.
Seconds = sa.Float().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    existing = sa.inspect(op.get_bind())
    if existing.has_table("jobs"):
        # Written by the pre-migration store (CREATE TABLE IF NOT EXISTS): adopt it. Its
        # indexes were created with the table, but a copy killed between the two statements
        # could lack one.
        names = {index["name"] for index in existing.get_indexes("jobs")}
        if "jobs_status" not in names:
            op.create_index("jobs_status", "jobs", ["status", "id"])
        if "jobs_owner" not in names:
            op.create_index("jobs_owner", "jobs", ["owner", "status"])
        return
    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("started_at", Seconds),
        sa.Column("finished_at", Seconds),
        sa.Column("lease_until", Seconds),
        sa.Column("worker", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("error_status", sa.Integer()),
        sa.Column("generation_time", Seconds),
        sa.Column("expires_at", Seconds),
        sa.Column("webhook_status", sa.Text()),
        sa.Column("webhook_attempts", sa.Text(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("webhook_next_at", Seconds),
        sqlite_autoincrement=True,
    )
    op.create_index("jobs_status", "jobs", ["status", "id"])
    op.create_index("jobs_owner", "jobs", ["owner", "status"])


def downgrade() -> None:
    op.drop_index("jobs_owner", table_name="jobs")
    op.drop_index("jobs_status", table_name="jobs")
    op.drop_table("jobs")
