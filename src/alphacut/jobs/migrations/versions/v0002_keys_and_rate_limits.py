"""Managed API keys (stored as peppered hashes) and the rate-limit counters.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# As in schema.py: BIGINT keys on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds = sa.Float().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("key_hash", sa.Text(), nullable=False, unique=True),
        sa.Column("queue_limit", sa.Integer()),
        sa.Column("rate_limit", sa.Integer()),
        sa.Column("megapixel_limit", Seconds),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("last_used_at", Seconds),
        sa.Column("revoked_at", Seconds),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "rate_windows",
        sa.Column("owner", sa.Text(), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("pixels", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_table("rate_windows")
    op.drop_table("api_keys")
