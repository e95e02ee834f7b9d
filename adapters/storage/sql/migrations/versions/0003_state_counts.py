"""Live counts of users per journey state, kept by increments with every commit.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "state_counts",
        sa.Column("journey", sa.String(), primary_key=True),
        sa.Column("state", sa.String(), primary_key=True),
        sa.Column("users", sa.Integer(), nullable=False, server_default="0"),
    )
