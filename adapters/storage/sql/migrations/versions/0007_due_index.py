"""Timer claims order by (wake_at, user_id): index both, so a claim reads the index in order instead of
sorting every due row.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_index("ix_profiles_due", "profiles", ["wake_at", "user_id"])
    op.drop_index("ix_profiles_wake_at", table_name="profiles")
