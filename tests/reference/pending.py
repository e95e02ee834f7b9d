"""Contract behaviours the engine does not have yet: the one place the differential test is told so.

Each name is either a feature the strategies do not generate while it is pending, or a situation the
reference notes (`Reference.touched`) so that an example exercising it is not compared. Remove a
name when the engine's fix lands; the differential test then holds the engine to it.
"""

from __future__ import annotations

import os

PENDING: frozenset[str] = frozenset({
    # every behaviour of SPEC §3 items 10-15 that was pending here landed in the engine (issue 16); name a
    # behaviour here only while its fix is under way, with its finding under tests/reference/findings/
})


def pending() -> frozenset[str]:
    """PENDING, or the names in JOURNEY_REFERENCE_PENDING (comma-separated; empty: hold the engine to all)."""
    named = os.environ.get("JOURNEY_REFERENCE_PENDING")
    if named is None:
        return PENDING
    return frozenset(n.strip() for n in named.split(",") if n.strip())
