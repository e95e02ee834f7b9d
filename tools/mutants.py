"""Mutation check: is each bug below caught by some test?

Each mutant is a few text replacements in journey_engine/ or adapters/, applied to a temporary copy
of the tree (the working tree is never touched); the tests that should catch it run against that
copy. Prints a table: mutant -> the first test that failed, or SURVIVED.

    python tools/mutants.py [NAME ...]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIFFERENTIAL = "tests/reference/test_differential.py::test_harness_agrees_with_the_reference"
BEHAVIOURS = "tests/reference/test_behaviours.py"
TRUST = "tests/test_trust.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    patches: tuple[tuple[str, str, str], ...]  # (file, old text, new text)
    tests: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


ENGINE = "journey_engine/engine/__init__.py"
JOURNEYS = "journey_engine/engine/journeys.py"
MESSAGES = "journey_engine/engine/messages.py"
PLAN = "journey_engine/engine/plan.py"
MUTANTS = (
    Mutant("exits_after_transitions", "exits and goal checked after the state's transitions",
           ((JOURNEYS, "        for criterion in plan.exits(run, event):\n",
             "        early = self._first(run, plan.states[inst.state].checks, event, arrival=False)\n"
             "        if early is not None:\n            self._move(run, cj, inst, early)\n            return\n"
             "        for criterion in plan.exits(run, event):\n"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_an_exit_wins_over_a_transition_on_the_same_event")),
    Mutant("key_first_instance", "an event without the key property reaches only the first keyed instance",
           ((JOURNEYS, "if routed is None or inst.key == routed:",
             "if (routed is None and inst is instances[0]) or inst.key == routed:"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_an_event_without_the_key_reaches_every_keyed_instance")),
    Mutant("at_workspace_zone", "`at: \"09:00\"` in the workspace zone instead of traits.timezone",
           ((JOURNEYS, 'zone = resolve_zone(text(run.profile.traits.get("timezone")), self.policies.timezone)',
             "zone = resolve_zone(None, self.policies.timezone)"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_at_is_the_users_local_time")),
    Mutant("bearer_write_key", "`Authorization: Bearer <write key>` accepted on admin routes",
           (("adapters/sources/http_api.py",
             "    if not hmac.compare_digest(token.encode(), settings.admin_key.encode()):",
             "    if not hmac.compare_digest(token.encode(), settings.admin_key.encode()) "
             "and not valid_write_key(token, settings):"),),
           ("tests/test_http_api.py::test_write_keys_cannot_read_users",
            "tests/test_http_api.py::test_a_write_key_as_bearer_cannot_read_users")),
    Mutant("window_off_by_one", "a send window (and quiet hours) one minute too long",
           (("journey_engine/policies.py", "            return self.start <= minute < self.end",
             "            return self.start <= minute <= self.end"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_a_window_closes_at_its_end_minute")),
    Mutant("deferred_dropped_on_final", "a deferred send dropped when the journey completes (SPEC §3 item 10)",
           ((JOURNEYS, 'if reason != "final" and profile.deferred:', "if profile.deferred:"),),
           (DIFFERENTIAL, TRUST + "::test_a_final_states_deferred_send_goes_out_after_the_journey_completed",
            TRUST + "::test_a_deferred_send_survives_moving_on_at_once_through_a_fallback")),
    Mutant("deferred_kept_on_leaving", "a deferred send kept when its state is left later (SPEC §3 item 10)",
           ((JOURNEYS, 'self._cancel(run, inst, "left_state", inst.visit)', "pass"),),
           (DIFFERENTIAL, TRUST + "::test_an_exit_or_a_later_move_cancels_a_deferred_send")),
    Mutant("same_instant_one_run", "two entries in one millisecond share a run (SPEC §3 item 12)",
           ((JOURNEYS, "run_id = int(last * 1000 + 0.01) + 1", "run_id = run_id"),),
           (DIFFERENTIAL, TRUST + "::test_two_entries_at_the_same_instant_are_two_runs_with_their_own_send_keys")),
    Mutant("new_user_no_segments", "a new user's segments evaluated only for the inputs that changed (item 13)",
           ((ENGINE, "        fresh = _blank(profile)\n", "        fresh = False\n"),),
           (DIFFERENTIAL, TRUST + "::test_a_new_user_is_in_the_segments_that_hold_for_them_from_their_first_event")),
    Mutant("send_list_in_file_order", "a send list tried in file order, not by priority (item 11)",
           ((PLAN, "sorted(spec.candidates, key=lambda m: -messages[m].priority if m in messages else 0)",
             "spec.candidates"),),
           (DIFFERENTIAL, TRUST + "::test_a_send_list_under_a_cap_sends_the_highest_priority_message_first")),
    Mutant("transactional_counts_toward_caps", "a transactional send counted toward caps (item 11)",
           ((MESSAGES, "        if not msg.transactional:  # transactional sends do not count toward caps",
             "        if True:  # mutant"),),
           (DIFFERENTIAL, TRUST + "::"
            "test_a_transactional_message_ignores_quiet_hours_caps_and_subscriptions_and_counts_toward_no_cap")),
    Mutant("expiry_ignored", "a send days late goes out anyway (item 10)",
           ((MESSAGES, "        if expiry is not None and run.current - due > expiry:",
             "        if False:"),),
           (TRUST + "::test_sends_due_during_an_outage_expire_while_the_journey_moves_on",
            "tests/test_scenarios.py")),
    Mutant("rule_error_silent", "a rule failing at run time is silently false (item 14)",
           (("journey_engine/rules.py", "            if isinstance(scope, dict):\n",
             "            if False:\n"),),
           (DIFFERENTIAL, TRUST + "::"
            "test_a_rule_that_fails_at_run_time_is_false_and_traced_with_its_file_and_line")),
    Mutant("caps_per_journey", "frequency caps counted per journey instead of across journeys",
           ((MESSAGES, "decision = self._decide(run, msg, deferred)",
             "decision = self._decide(run, msg, deferred, cj.name)"),
            (MESSAGES, "def _decide(self, run: Run, msg: Message, deferred: bool) -> Decision:",
             "def _decide(self, run: Run, msg: Message, deferred: bool, journey: str = '') -> Decision:"),
            (MESSAGES, "ledger=profile.ledger or (), subscribed=subscribed",
             "ledger=tuple((t, c.split('@')[0]) for t, c in (profile.ledger or ()) if c.endswith('@' + journey)), "
             "subscribed=subscribed"),
            (MESSAGES, "(clock.epoch(run.now), msg.channel))", "(clock.epoch(run.now), msg.channel + '@' + cj.name))")),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_a_cap_counts_sends_of_every_journey")),
    Mutant("wake_one_expiry_late", "a window's wake-up at the next-but-one expiry",
           (("journey_engine/metrics.py", "at = entries[0] + self.spans[name] if bounds is None",
             "at = entries[min(2, len(entries) - 2)] + self.spans[name] if bounds is None"),
            ("journey_engine/metrics.py", "return entries[2 * (left - 1)] + self.spans[name]",
             "return entries[min(2 * left, len(entries) - 2)] + self.spans[name]")),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_a_segment_is_left_when_each_event_leaves_the_window")),
    Mutant("bandit_first_arm", "a bandit that always picks the first arm",
           (("journey_engine/selection.py", "    return candidates[max(range(len(candidates)), key=draws.__getitem__)]",
             "    return candidates[0]"),),
           ("tests/test_selection.py",)),
    Mutant("reentry_from_exit", "re-entry `after` counted from the exit instead of the entry",
           ((JOURNEYS, "        profile.note_entry(ikey, inst.entry_epoch())\n        inst.timers = ()",
             "        profile.note_entry(ikey, clock.epoch(run.now))\n        inst.timers = ()"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_reentry_after_counts_from_the_last_entry")),
    Mutant("identify_dedupe_removed", "an identify's messageId no longer deduplicated",
           (("journey_engine/runtime.py",
             "        if event.message_id is not None:\n            if event.message_id in",
             '        if event.message_id is not None and event.type != "identify":\n'
             "            if event.message_id in"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_a_repeated_identify_is_a_duplicate")),
    Mutant("quiet_hours_workspace_zone", "the user's time zone ignored in quiet hours",
           ((MESSAGES, "policies=policies, timezone=timezone,", "policies=policies, timezone=None,"),),
           (DIFFERENTIAL, f"{BEHAVIOURS}::test_quiet_hours_are_the_users_local_hours")),
)


def _copy() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="journey-mutant-"))
    for name in ("journey_engine", "adapters", "tests", "journeys", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        elif src.exists():
            shutil.copy2(src, tmp / name)
    return tmp


def run(mutant: Mutant) -> tuple[str, float]:
    tree = _copy()
    try:
        for file, old, new in mutant.patches:
            path = tree / file
            text = path.read_text(encoding="utf-8")
            if old not in text:
                return f"PATCH DOES NOT APPLY ({file}: {old[:40]!r})", 0.0
            path.write_text(text.replace(old, new, 1), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(tree), "JOURNEY_NATIVE": "0", **dict(mutant.env)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                               *mutant.tests], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        elapsed = time.monotonic() - started
        failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
        if done.returncode == 0:
            return "SURVIVED", elapsed
        if not failed:
            return f"ERROR (exit {done.returncode}): {done.stdout[-300:]}", elapsed
        return ", ".join(sorted({f.split("/")[-1] for f in failed})), elapsed
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m.name in names]
    width = max(len(m.name) for m in chosen)
    survived = 0
    print(f"{'mutant'.ljust(width)}  seconds  caught by")
    for mutant in chosen:
        verdict, seconds = run(mutant)
        survived += not verdict.startswith(("test", "tests"))
        print(f"{mutant.name.ljust(width)}  {seconds:7.1f}  {verdict}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
