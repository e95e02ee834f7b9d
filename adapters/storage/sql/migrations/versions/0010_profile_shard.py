"""Each profile's shard (`journey_engine.ports.shard`), so workers that split the users between them
(`journey serve --workers`) claim only the timers of their own users. Existing profiles get theirs
computed here, in chunks.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from journey_engine.ports import shard

revision = "0010"
down_revision = "0009"

CHUNK = 10_000


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("shard", sa.Integer(), nullable=False, server_default="0"))
    conn = op.get_bind()
    after = ""
    while True:
        users = conn.execute(sa.text("SELECT user_id FROM profiles WHERE user_id > :after ORDER BY user_id "
                                     "LIMIT :n"), {"after": after, "n": CHUNK}).scalars().all()
        if not users:
            break
        conn.execute(sa.text("UPDATE profiles SET shard = :shard WHERE user_id = :user"),
                     [{"shard": shard(u), "user": u} for u in users])
        after = users[-1]
