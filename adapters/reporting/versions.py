"""The versions table of a journey's report, and the error of a `--version` that names none (SPEC §3,
"Changing a live workspace"): built by `model._TraceWalk` from the `version` of each run's entry and its
moves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from journey_engine.errors import JourneyError, UnknownJourneyError
from journey_engine.stats import rate

UNRECORDED = "unrecorded"  # runs whose entry record has no version: written before versions were kept


@dataclass(slots=True)
class VersionRow:
    """One version of a journey: the runs that were on it. A run moved to a newer version counts in both,
    as moved out of the one and moved into the other."""

    version: str
    first_entry: datetime | None = None  # the first run that started on it (None: runs only moved in)
    entered: int = 0  # runs that started on it
    moved_in: int = 0  # runs moved onto it from an older version
    moved_out: int = 0  # runs moved from it to a newer version
    exited_version: int = 0  # runs that ended because a newer version has no place for them
    converted: int = 0  # runs that reached the goal while on it

    @property
    def runs(self) -> int:
        return self.entered + self.moved_in

    @property
    def conversion_rate(self) -> float | None:
        return rate(self.converted, self.runs)


class UnknownVersionError(UnknownJourneyError):
    """`--version` names no version a run of the journey was on, or more than one, or no journey."""

    def __init__(self, journey: str | None, version: str, seen: list[str]) -> None:
        matching = [v for v in seen if v.startswith(version)]
        known = ", ".join(seen) or "none yet"
        if journey is None:
            what = f"a version belongs to one journey: name the journey to report version {version!r} of"
        elif matching:
            what = f"{version!r} starts several versions of `{journey}` ({', '.join(matching)}): give more of it"
        else:
            what = f"no run of `{journey}` was on a version {version!r}; its versions: {known}"
        JourneyError.__init__(self, what)
        self.name, self.version = journey or "", version
