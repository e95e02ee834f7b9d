"""Facts about the database itself, first of all whether its sends were only simulated: a database
written by `journey demo` or `journey bench` is marked, and `journey serve` refuses it (SPEC §3 item 10).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table("store_facts", sa.Column("name", sa.String(), primary_key=True),
                    sa.Column("value", sa.String(), nullable=False), sa.Column("at", sa.Float(), nullable=False))
