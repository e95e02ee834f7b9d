"""One small exception family.

JourneyError
 ├── WorkspaceError(ValueError)        a workspace that does not load; carries every Problem found
 ├── ScenarioError(ValueError)         a scenario file that does not parse
 ├── InvalidEventError(ValueError)     an event the engine refuses (no user id, no event name, ...)
 ├── UnknownJourneyError(LookupError)  a journey name that is not in the workspace
 ├── CodecError(ValueError)            a stored profile this version cannot read   (codec.py)
 ├── StoreUnavailable(ConnectionError) the store cannot be reached or is locked     (ports.py)
 ├── StoreVersionError(RuntimeError)   a database written by a newer version        (ports.py)
 └── ConflictError(RuntimeError)       another worker committed first; rerun        (ports.py)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One mistake in a file, with where it is and how to fix it."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean `x`?)` when a close name exists, else the known names when there are few."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    if options and len(options) <= 8:
        return "; known: " + ", ".join(f"`{o}`" for o in options)
    return ""


class JourneyError(Exception):
    """Base of every error the engine raises on purpose."""


class WorkspaceError(JourneyError, ValueError):
    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "workspace does not load")


class ScenarioError(JourneyError, ValueError):
    """A scenario that does not load: one `file:line:col: message` line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{p.file}:{p.line}:{p.column}: {p.message}" for p in self.problems))


class InvalidEventError(JourneyError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class UnknownJourneyError(JourneyError, LookupError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown journey `{name}`{did_you_mean(name, known)}")
