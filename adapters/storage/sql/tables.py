"""The SQL schema as SQLModel tables. SQLModel serves the schema and the admin/API reads; the hot
path uses SQLAlchemy Core on the same tables (`Model.__table__`), without the ORM's per-row cost.

The schema changes only through Alembic migrations in `migrations/versions/`. `<name>_t` is each table's
Core `Table`.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, Text, text
from sqlmodel import Field, SQLModel


class ProfileRow(SQLModel, table=True):
    """One user: the encoded profile (journey_engine.codec) and the next wake-up, which is indexed."""

    __tablename__ = "profiles"
    user_id: str = Field(primary_key=True)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    wake_at: float | None = None  # epoch seconds, engine clock; ix_profiles_due is (wake_at, user_id)
    lease_until: float | None = None  # epoch seconds, wall clock: a claim by a timer worker
    updated_at: float
    version: int = 1  # bumped by every write: a commit writes only over the version it loaded
    shard: int = 0  # journey_engine.ports.shard(user_id): workers that split the users claim by it


class AliasRow(SQLModel, table=True):
    __tablename__ = "aliases"
    previous_id: str = Field(primary_key=True)
    user_id: str = Field(index=True)


class ProcessedRow(SQLModel, table=True):
    """messageIds already committed: exact deduplication for at least seven days."""

    __tablename__ = "processed"
    message_id: str = Field(primary_key=True)
    at: float = Field(index=True)  # arrival: the committing store's wall clock
    user_id: str | None = Field(default=None, index=True)  # whom it was applied to (erasure); None before 0006


class TraceRow(SQLModel, table=True):
    __tablename__ = "trace"
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True)
    at: str
    kind: str
    journey: str | None = None
    body: str = Field(sa_column=Column(Text, nullable=False))  # the record as JSON


class OutboxRow(SQLModel, table=True):
    """A send decided and committed with its decision, waiting to be handed to its channel."""

    __tablename__ = "outbox"
    key: str = Field(primary_key=True)  # the idempotency key: user, journey, key, state visit, message
    user_id: str = Field(index=True)
    at: float
    channel: str
    message: str
    journey: str
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the SendMessage as JSON
    status: str = Field(default="pending")  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: float  # indexed for claims by ix_outbox_claim (pending, not in-app)
    last_error: str | None = None
    token: str | None = None  # set by each claim: only the holder of the latest claim can settle it
    shard: int = 0  # journey_engine.ports.shard(user_id): a bus worker dispatches its partitions' sends


class BanditRow(SQLModel, table=True):
    __tablename__ = "bandit"
    journey: str = Field(primary_key=True)
    state: str = Field(primary_key=True)
    arm: str = Field(primary_key=True)
    sends: int = 0
    conversions: int = 0


class SegmentHistoryRow(SQLModel, table=True):
    """Who was in which segment when: what cohort reports are made of."""

    __tablename__ = "segment_history"
    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True)
    segment: str = Field(index=True)
    entered_at: str
    left_at: str | None = None


class StateCountRow(SQLModel, table=True):
    """How many users are in each journey state now (increments derived from the trace of each commit)."""

    __tablename__ = "state_counts"
    journey: str = Field(primary_key=True)
    state: str = Field(primary_key=True)
    users: int = 0


class EnrolledRow(SQLModel, table=True):
    """Journeys that enrolled the users already in their entry segment when first loaded on this store."""

    __tablename__ = "enrolled"
    journey: str = Field(primary_key=True)
    at: float  # the store's wall clock


class StoreFactRow(SQLModel, table=True):
    """Facts about the database itself: `simulated` names the command whose simulation wrote it."""

    __tablename__ = "store_facts"
    name: str = Field(primary_key=True)
    value: str
    at: float  # the store's wall clock


class ErasedRow(SQLModel, table=True):
    """Users erased on request: later events for these ids are dropped."""

    __tablename__ = "erased"
    user_id: str = Field(primary_key=True)
    at: float


class JourneyVersionRow(SQLModel, table=True):
    """Every journey version ever deployed here, by its definition: live instances run on it until they end."""

    __tablename__ = "journey_versions"
    journey: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    definition: str = Field(sa_column=Column(Text, nullable=False))  # journey_engine.versions.definition
    stored_at: float  # the store's wall clock


class InForceRow(SQLModel, table=True):
    """The version of each journey that new entrants take, as of deployment `deployment`."""

    __tablename__ = "journeys_in_force"
    journey: str = Field(primary_key=True)
    version: str
    deployment: int


Index("ix_segment_history_open", SegmentHistoryRow.__table__.c.user_id, SegmentHistoryRow.__table__.c.segment,
      SegmentHistoryRow.__table__.c.left_at)
Index("ix_outbox_claim", OutboxRow.__table__.c.next_attempt_at, OutboxRow.__table__.c.key,
      sqlite_where=text("status = 'pending' AND channel <> 'in_app'"),
      postgresql_where=text("status = 'pending' AND channel <> 'in_app'"))
Index("ix_profiles_due", ProfileRow.__table__.c.wake_at, ProfileRow.__table__.c.user_id)

profiles_t = ProfileRow.__table__
aliases_t = AliasRow.__table__
processed_t = ProcessedRow.__table__
trace_t = TraceRow.__table__
outbox_t = OutboxRow.__table__
bandit_t = BanditRow.__table__
history_t = SegmentHistoryRow.__table__
erased_t = ErasedRow.__table__
enrolled_t = EnrolledRow.__table__
facts_t = StoreFactRow.__table__
counts_t = StateCountRow.__table__
versions_t = JourneyVersionRow.__table__
in_force_t = InForceRow.__table__
TABLES = (profiles_t, aliases_t, processed_t, trace_t, outbox_t, bandit_t, history_t, erased_t, enrolled_t, counts_t,
          facts_t, versions_t, in_force_t)
