"""Processed messageIds name the user they were applied to, so erasing a user erases them too.
Rows written before this revision have no user (NULL): they age out with the deduplication window.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("processed") as batch:
        batch.add_column(sa.Column("user_id", sa.String(), nullable=True))
    op.create_index("ix_processed_user_id", "processed", ["user_id"])
