"""Each send's shard (`journey_engine.ports.shard` of its user), so bus workers dispatch only the sends of
the partitions they hold, as they fire only their timers (SPEC §9). Existing sends get theirs computed
here, in chunks.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from journey_engine.ports import shard

revision = "0013"
down_revision = "0012"

CHUNK = 10_000


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("shard", sa.Integer(), nullable=False, server_default="0"))
    conn = op.get_bind()
    after = ""
    while True:
        rows = conn.execute(sa.text("SELECT key, user_id FROM outbox WHERE key > :after ORDER BY key LIMIT :n"),
                            {"after": after, "n": CHUNK}).all()
        if not rows:
            break
        conn.execute(sa.text("UPDATE outbox SET shard = :shard WHERE key = :key"),
                     [{"shard": shard(user), "key": key} for key, user in rows])
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("shard")
