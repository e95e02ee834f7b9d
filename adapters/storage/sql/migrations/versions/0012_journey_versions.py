"""Journey versions: every definition deployed, and the version of each journey that new entrants take
(SPEC §3, "Changing a live workspace"). Instances already live keep the version their profile names;
the first `journey serve` after this upgrade stores the workspace's versions as deployment 1.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.create_table("journey_versions", sa.Column("journey", sa.String(), primary_key=True),
                    sa.Column("version", sa.String(), primary_key=True),
                    sa.Column("definition", sa.Text(), nullable=False),
                    sa.Column("stored_at", sa.Float(), nullable=False))
    op.create_table("journeys_in_force", sa.Column("journey", sa.String(), primary_key=True),
                    sa.Column("version", sa.String(), nullable=False),
                    sa.Column("deployment", sa.Integer(), nullable=False))
