"""Journeys that enrolled the users already in their entry segment when first loaded (SPEC §3 item 5).
Empty on upgrade: each segment-entry journey enrolls its segment's members once, at the next start;
users who have an entry record for the journey (they went through it) are skipped.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table("enrolled", sa.Column("journey", sa.String(), primary_key=True),
                    sa.Column("at", sa.Float(), nullable=False))
