"""Outbox claims carry a token (a late answer from a worker whose lease ran out is ignored), and the
claim reads a partial index of the pending, not in-app rows by next attempt.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

CLAIMABLE = "status = 'pending' AND channel <> 'in_app'"


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("token", sa.String(), nullable=True))
    op.drop_index("ix_outbox_next_attempt_at", table_name="outbox")
    op.create_index("ix_outbox_claim", "outbox", ["next_attempt_at", "key"], sqlite_where=sa.text(CLAIMABLE),
                    postgresql_where=sa.text(CLAIMABLE))
