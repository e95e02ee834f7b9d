"""What one commit writes: the unit of work of the Store port (see ports.py, which re-exports it).

A plain class, not a dataclass: the runtime makes one per event batch and per wake-up claim, and a
compiled dataclass (native.py) keeps a generated Python `__init__`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from . import native

if TYPE_CHECKING:
    from .engine import SendMessage
    from .profile import Profile
    from .trace import Record

BanditDelta = dict[tuple[str, str, str], tuple[int, int]]  # (journey, state, arm) -> (sends, conversions)


class Batch:
    """Everything one commit writes."""

    __slots__ = ("aliases", "bandit", "deleted", "enrolled", "message_ids", "profiles", "records", "released",
                 "senders", "sends")

    def __init__(self, *, profiles: dict[str, Profile] | None = None, deleted: set[str] | None = None,
                 aliases: dict[str, str] | None = None, message_ids: list[tuple[str, datetime]] | None = None,
                 senders: dict[str, str] | None = None, records: list[Record] | None = None,
                 sends: list[SendMessage] | None = None, bandit: BanditDelta | None = None,
                 released: set[str] | None = None, enrolled: set[str] | None = None) -> None:
        self.profiles: dict[str, Profile] = {} if profiles is None else profiles
        self.deleted: set[str] = set() if deleted is None else deleted
        self.aliases: dict[str, str] = {} if aliases is None else aliases
        self.message_ids: list[tuple[str, datetime]] = [] if message_ids is None else message_ids
        # messageId -> the user it was applied to (erasure)
        self.senders: dict[str, str] = {} if senders is None else senders
        self.records: list[Record] = [] if records is None else records
        self.sends: list[SendMessage] = [] if sends is None else sends
        self.bandit: BanditDelta = {} if bandit is None else bandit
        self.released: set[str] = set() if released is None else released  # claimed users released unchanged
        self.enrolled: set[str] = set() if enrolled is None else enrolled  # journeys whose members were enrolled

    def __bool__(self) -> bool:
        return bool(self.profiles or self.deleted or self.aliases or self.message_ids or self.records
                    or self.sends or self.bandit or self.released or self.enrolled)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in native.fields(self) if getattr(self, name))
        return f"Batch({shown})"
