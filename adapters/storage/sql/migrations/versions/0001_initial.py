"""The first schema: profiles, aliases, processed messageIds, trace, outbox, bandit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("user_id", sa.String(), primary_key=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("wake_at", sa.Float(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_profiles_wake_at", "profiles", ["wake_at"])
    op.create_table(
        "aliases",
        sa.Column("previous_id", sa.String(), primary_key=True),
        sa.Column("user_id", sa.String(), nullable=False),
    )
    op.create_index("ix_aliases_user_id", "aliases", ["user_id"])
    op.create_table(
        "processed",
        sa.Column("message_id", sa.String(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_processed_at", "processed", ["at"])
    op.create_table(
        "trace",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("journey", sa.String(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_trace_user_id", "trace", ["user_id"])
    op.create_table(
        "outbox",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("journey", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
    )
    op.create_index("ix_outbox_user_id", "outbox", ["user_id"])
    op.create_index("ix_outbox_next_attempt_at", "outbox", ["next_attempt_at"])
    op.create_table(
        "bandit",
        sa.Column("journey", sa.String(), primary_key=True),
        sa.Column("state", sa.String(), primary_key=True),
        sa.Column("arm", sa.String(), primary_key=True),
        sa.Column("sends", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("conversions", sa.Integer(), nullable=False, server_default="0"),
    )
