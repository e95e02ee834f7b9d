"""Contract behaviours the engine does not have yet: the one place the differential test is told so.

Each name is either a feature the strategies do not generate while it is pending, or a situation the
reference notes (`Reference.touched`) so that an example exercising it is not compared. Remove a
name when the engine's fix lands; the differential test then holds the engine to it.
"""

from __future__ import annotations

import os

PENDING: frozenset[str] = frozenset({
    "final_deferred",          # SPEC §3 item 10: a final state's (or a `to:`-only hop's) deferred send is still sent
    "deferred_state_left",     # item 10: leaving the state later (event, rule, timer) cancels its deferred sends
    "same_instant_entries",    # item 12: two entries at one instant are two runs (own sends, keys, draws)
    "new_user_segments",       # item 13: a first event no metric counts still evaluates segments
    "numeric_ids",             # item 14: a number is the same user as its decimal string
    "send_list_priority",      # item 11: a send list is tried in descending priority under a cap
    "transactional",           # item 11: transactional messages ignore quiet hours, caps, subscriptions, holdout
    "rule_error",              # item 14: a rule failing at run time is traced as rule_error
    "unsubscribe_all",         # item 15: Unsubscribed without a name leaves all; an unknown name is traced
    "send_expiry",             # item 10: a send going out more than its expiry late is suppressed `expired`
    # found by this suite (tests/reference/findings/)
})


def pending() -> frozenset[str]:
    """PENDING, or the names in JOURNEY_REFERENCE_PENDING (comma-separated; empty: hold the engine to all)."""
    named = os.environ.get("JOURNEY_REFERENCE_PENDING")
    if named is None:
        return PENDING
    return frozenset(n.strip() for n in named.split(",") if n.strip())
