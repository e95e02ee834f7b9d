"""Segment membership history (for cohort reports) and erased users.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "segment_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("segment", sa.String(), nullable=False),
        sa.Column("entered_at", sa.String(), nullable=False),
        sa.Column("left_at", sa.String(), nullable=True),
    )
    op.create_index("ix_segment_history_user_id", "segment_history", ["user_id"])
    op.create_index("ix_segment_history_segment", "segment_history", ["segment"])
    op.create_index("ix_segment_history_open", "segment_history", ["user_id", "segment", "left_at"])
    op.create_table(
        "erased",
        sa.Column("user_id", sa.String(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
    )
