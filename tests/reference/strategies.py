"""Hypothesis strategies: small valid workspaces (as YAML files) and event streams for a few users.

A workspace is a dict {file name: YAML document}; a stream is a list of SPEC §5 scenario steps, so a
failing example prints as a scenario file as it is. Features the engine does not have yet are left
out while their name is in `pending()` (tests/reference/pending.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Seoul", "Australia/Sydney"]
CLOCKS = ["00:00", "07:30", "08:00", "09:00", "12:15", "18:00", "21:00", "22:00"]
EVENTS = ["Order Completed", "Clicked", "Plan Changed", "Cart Updated", "Signed Up"]
STARTS = [datetime(2026, 3, 25, 6, 0, tzinfo=UTC), datetime(2026, 10, 20, 21, 30, tzinfo=UTC),
          datetime(2026, 1, 5, 9, 0, tzinfo=UTC)]

METRICS: dict[str, dict[str, Any]] = {
    "orders": {"count": "Order Completed"},
    "clicks_w": {"count": "Clicked", "within": "1h"},
    "clicks_3d": {"count": "Clicked", "within": "3d"},
    "revenue": {"sum": "amount", "of": "Order Completed"},
    "revenue_1d": {"sum": "amount", "of": "Order Completed", "within": "1d"},
    "big_orders_2d": {"count": "Order Completed", "within": "2d", "where": "properties.amount > 50"},
    "last_plan": {"last": "plan", "of": "Plan Changed"},
    "last_order_at": {"last_seen": "Order Completed"},
    "first_seen_at": {"first_seen": "any"},
}
# segment -> (rule, for, metrics it reads)
SEGMENTS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "buyers": ("metrics.orders >= 1", None, ("orders",)),
    "no_orders": ("metrics.orders == 0", None, ("orders",)),
    "clicky": ("metrics.clicks_w >= 2", None, ("clicks_w",)),
    "engaged": ("metrics.clicks_3d >= 1 or metrics.revenue_1d > 30", None, ("clicks_3d", "revenue_1d")),
    "big": ("metrics.big_orders_2d >= 1", None, ("big_orders_2d",)),
    "pro": ("traits.plan == 'pro' or metrics.last_plan == 'pro'", None, ("last_plan",)),
    "new_users": ("traits.created_at != null and $now - traits.created_at < t'P2D'", None, ()),
    "lapsed": ("metrics.last_order_at != null and $now - metrics.last_order_at > t'P3D'", None,
               ("last_order_at",)),
    "stuck": ("traits.status == 'onboarding'", "1d", ()),
    "grown": ("traits.age != null and traits.age >= 30", None, ()),
    "veteran": ("metrics.first_seen_at != null and $now - metrics.first_seen_at >= t'PT36H'", None,
                ("first_seen_at",)),
}
RULES = ["traits.plan == 'pro'", "metrics.orders >= 2", "traits.status != 'onboarding'",
         "$now - journey.state_entered_at >= t'PT5H'", "journey.key != null", "metrics.revenue > 40",
         "traits.age != null and traits.age < 40", "$now - journey.entered_at > t'P2D'"]
MESSAGE_RULES = ["traits.email != null", "metrics.orders < 3", "traits.plan != 'pro'"]


def _rule_uses(rule: str) -> set[str]:
    return {m for m in METRICS if f"metrics.{m}" in rule}


@st.composite
def workspaces(draw: st.DrawFn, pending: frozenset[str]) -> dict[str, str]:
    """Files of a small valid workspace: metrics, segments, policies, messages, 2-4 journeys."""
    segments = draw(st.lists(st.sampled_from(sorted(SEGMENTS)), min_size=1, max_size=4, unique=True))
    metrics = set(draw(st.lists(st.sampled_from(sorted(METRICS)), max_size=3, unique=True)))
    metrics |= {"orders", "revenue"}
    for s in segments:
        metrics.update(SEGMENTS[s][2])
    seg_doc = {s: ({"rule": SEGMENTS[s][0], "for": SEGMENTS[s][1]} if SEGMENTS[s][1] else SEGMENTS[s][0])
               for s in segments}
    policies: dict[str, Any] = {"timezone": draw(st.sampled_from(ZONES))}
    if draw(st.booleans()):
        start, end = draw(st.sampled_from([("21:00", "08:00"), ("22:00", "07:30"), ("12:15", "18:00")]))
        policies["quiet_hours"] = {"from": start, "to": end, "action": draw(st.sampled_from(["defer", "drop"]))}
    caps = draw(st.lists(st.tuples(st.sampled_from(["any", "email", "push", "sms"]), st.integers(1, 2),
                                   st.sampled_from(["4h", "1d", "2d"])), max_size=2))
    if caps:
        policies["frequency_caps"] = [{"channel": c, "max": n, "per": p} for c, n, p in caps]
        if "cap_if" not in pending and draw(st.integers(0, 2)) == 0:  # a tier (SPEC §3 item 15)
            tier = draw(st.sampled_from(["metrics.orders >= 1", "traits.plan == 'pro'",
                                         *(f"'{s}' in segments" for s in segments)]))
            policies["frequency_caps"][-1]["if"] = tier
            metrics.update(_rule_uses(tier))
    if "control_group" not in pending and draw(st.integers(0, 3)) == 0:
        policies["control_group"] = draw(st.sampled_from(["20%", "50%"]))
    policies["send_time"] = {"default_hour": draw(st.sampled_from([9, 10, 18]))}
    if draw(st.booleans()):
        policies["expires"] = draw(st.sampled_from(["2d", "never"]))
    subscriptions = {"marketing_email": {"channel": "email", "default": "subscribed"},
                     "news_push": {"channel": "push", "default": draw(st.sampled_from(["subscribed", "unsubscribed"]))}}
    messages = {}
    for i in range(draw(st.integers(2, 6))):
        channel = draw(st.sampled_from(["email", "push", "sms", "in_app"]))
        m: dict[str, Any] = {"channel": channel, "body": f"m{i} for {{{{ user_id }}}}",
                             "priority": draw(st.integers(0, 3))}
        if channel == "email":
            m["subject"] = f"subject {i}"
        if draw(st.integers(0, 3)) == 0:
            m["if"] = draw(st.sampled_from(MESSAGE_RULES))
            metrics.update(_rule_uses(m["if"]))
        send_at = draw(st.sampled_from(["immediately", "immediately", "optimal", "window"]))
        if send_at == "window":
            m["send_at"] = {"window": draw(st.sampled_from(["09:00-18:00", "07:30-12:15", "18:00-22:00"]))}
        elif send_at == "optimal":
            m["send_at"] = "optimal"
        if channel in ("email", "push") and draw(st.booleans()):
            m["subscription"] = "marketing_email" if channel == "email" else "news_push"
        if "transactional" not in pending and draw(st.integers(0, 4)) == 0:
            m["transactional"] = True
        if draw(st.integers(0, 4)) == 0:
            m["expires"] = draw(st.sampled_from(["1d", "never", "36h"]))
        messages[f"m{i}"] = m
    files: dict[str, Any] = {
        "shared.yaml": {"version": 1, "metrics": {n: METRICS[n] for n in sorted(metrics)}, "segments": seg_doc,
                        "policies": policies, "subscriptions": subscriptions, "messages": messages}}
    for j in range(draw(st.integers(2, 4))):
        files[f"j{j}.yaml"] = draw(_journey(f"j{j}", sorted(messages), segments, metrics))
    return {name: yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) for name, doc in files.items()}


@st.composite
def _journey(draw: st.DrawFn, name: str, messages: list[str], segments: list[str], metrics: set[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["on", "on", "on_key", "segment", "if"]))
    entry: dict[str, Any] = {}
    rules = [r for r in RULES if _rule_uses(r) <= metrics]
    entry_event = draw(st.sampled_from(["Signed Up", "Cart Updated", "Clicked"]))
    if kind.startswith("on"):
        entry["on"] = entry_event
        if kind == "on_key":
            entry["key"] = "cartId"
    elif kind == "segment":
        entry["segment"] = draw(st.sampled_from(segments))
    else:
        entry["if"] = draw(st.sampled_from(["traits.plan == 'pro'", "metrics.orders >= 1",
                                            "traits.age != null and traits.age >= 30",
                                            *(f"'{s}' in segments" for s in segments)]))
    if kind != "if" and draw(st.integers(0, 3)) == 0:
        entry["if"] = "traits.status != 'blocked'"
    entry["reentry"] = draw(st.sampled_from(["never", "always", {"after": "1d"}, {"after": "3h"}]))
    doc: dict[str, Any] = {"version": 1, "journey": name, "entry": entry}
    if draw(st.integers(0, 4)) == 0:
        doc["holdout"] = "30%"
    exits = []
    for _ in range(draw(st.integers(0, 2))):
        exits.append(draw(st.sampled_from([{"on": "Account Deleted"}, {"segment": draw(st.sampled_from(segments))},
                                           {"if": "traits.status == 'blocked'"}])))
    if exits:
        doc["exit"] = exits
    goal = draw(st.sampled_from([None, {"on": "Order Completed"}, {"segment": draw(st.sampled_from(segments))},
                                 {"if": "metrics.revenue > 40"}]))
    if goal is not None and goal.get("on") != entry.get("on") and goal.get("segment") != entry.get("segment"):
        doc["goal"] = goal
    n = draw(st.integers(1, 4))
    names = [f"s{i}" for i in range(n)] + ["done"]
    states: dict[str, Any] = {}
    for i in range(n):
        forward = names[i + 1:]
        state: dict[str, Any] = {}
        send = draw(st.sampled_from(["none", "one", "list", "first", "random", "best"]))
        picks = draw(st.lists(st.sampled_from(messages), min_size=1, max_size=3, unique=True))
        if send == "one":
            state["send"] = picks[0]
        elif send == "list":
            state["send"] = picks
        elif send in ("first", "random"):
            state["send"] = {"choose": send, "from": picks}
        elif send == "best":  # the engine's picks are replayed; `by` must not change what is sent
            state["send"] = {"choose": "best", "from": picks}
            if draw(st.booleans()):
                state["send"]["by"] = draw(st.lists(st.sampled_from(segments), min_size=1, max_size=2, unique=True))
        if i > 0 and draw(st.integers(0, 5)) == 0:
            state["split"] = {"strategy": "random", "paths": [{"to": t, "weight": 1}
                                                             for t in draw(st.lists(st.sampled_from(forward),
                                                                                    min_size=1, max_size=2,
                                                                                    unique=True))]}
            state["split"]["paths"][0]["to"] = names[i + 1]
            states[names[i]] = state
            continue
        transitions = []
        for _ in range(draw(st.integers(0, 2))):
            t = draw(st.sampled_from(["on", "after", "at", "at_attr", "if", "segment"]))
            target = draw(st.sampled_from(names if t in ("on", "after", "at", "at_attr") else forward))
            if t == "on":
                event = draw(st.sampled_from([e for e in EVENTS if not (i == 0 and e == entry.get("on"))]))
                tr: dict[str, Any] = {"on": event}
                if draw(st.booleans()):
                    tr["if"] = draw(st.sampled_from(["event.properties.amount > 20", "traits.plan == 'pro'"]))
            elif t == "after":
                tr = {"after": draw(st.sampled_from(["30m", "3h", "1d", "2d"]))}
            elif t == "at":
                tr = {"at": draw(st.sampled_from(CLOCKS))}
            elif t == "at_attr":
                tr = {"at": {"attribute": "traits.trial_ends_at", "offset": draw(st.sampled_from(["-1d", "0s", "2h"]))}}
            elif t == "if":
                tr = {"if": draw(st.sampled_from(rules))}
            else:
                tr = {"segment": draw(st.sampled_from(segments))}
            tr["to"] = target
            transitions.append(tr)
        # a way forward keeps every state reachable: a timer, or a `to:`-only fallback (written last)
        if draw(st.booleans()):
            transitions.append({"after": draw(st.sampled_from(["1h", "1d", "4d"])), "to": names[i + 1]})
        else:
            transitions.append({"to": names[i + 1]})
        state["transitions"] = transitions
        states[names[i]] = state
    final: dict[str, Any] = {"final": True}
    if draw(st.integers(0, 2)) == 0:
        final["send"] = draw(st.sampled_from(messages))
    states["done"] = final
    doc["initial"] = "s0"
    doc["states"] = states
    return doc


USERS = ["u1", "u2", "u3", "u4", "u5"]


@st.composite
def streams(draw: st.DrawFn, pending: frozenset[str]) -> tuple[datetime, list[dict[str, Any]]]:
    """A start and scenario steps for 1-5 users over up to 40 days, times on whole minutes."""
    start = draw(st.sampled_from(STARTS))
    users = USERS[:draw(st.integers(1, 5))]
    zones = {u: draw(st.sampled_from([None, *ZONES])) for u in users}
    clock = start
    end = start + timedelta(days=40)
    steps: list[dict[str, Any]] = []
    ids = 0
    for _ in range(draw(st.integers(1, 30))):
        what = draw(st.sampled_from(["wait", "wait", "track", "track", "track", "identify", "alias"]))
        if what == "wait":
            minutes = draw(st.sampled_from([1, 7, 30, 180, 600, 1440, 4320]))
            minutes = min(minutes, int((end - clock).total_seconds() // 60))
            if minutes > 0:
                clock += timedelta(minutes=minutes)
                steps.append({"wait": f"{minutes}m"})
            continue
        user: Any = draw(st.sampled_from([*users, "anon1"]))
        if "numeric_ids" not in pending and draw(st.integers(0, 5)) == 0:
            user = {"u1": 1, "u2": 2}.get(user, user)
        step: dict[str, Any]
        if what == "alias":
            step = {"alias": draw(st.sampled_from(users)), "previous_id": draw(st.sampled_from(["anon1", "anon2"]))}
        elif what == "identify":
            traits: dict[str, Any] = {}
            for trait in draw(st.lists(st.sampled_from(["plan", "status", "age", "created_at", "timezone",
                                                        "trial_ends_at", "email"]), min_size=1, max_size=3,
                                       unique=True)):
                traits[trait] = draw(_trait(trait, clock, zones.get(str(user))))
            step = {"identify": user, "traits": traits}
        else:
            event = draw(st.sampled_from([*EVENTS, "Account Deleted", "Subscribed", "Unsubscribed"]))
            props: dict[str, Any] = {}
            if draw(st.booleans()):
                props["amount"] = draw(st.integers(0, 100))
            if draw(st.booleans()):
                props["cartId"] = draw(st.sampled_from(["A", "B"]))
            if event == "Plan Changed":
                props["plan"] = draw(st.sampled_from(["free", "pro"]))
            if event in ("Subscribed", "Unsubscribed"):
                names = ["marketing_email", "news_push"]
                if "unsubscribe_all" not in pending:
                    names += [None, "no_such_list"]
                name = draw(st.sampled_from(names))
                if name is not None:
                    props["subscription"] = name
            step = {"track": user, "event": event, "properties": props}
        if what != "alias" and draw(st.integers(0, 4)) == 0:
            back = draw(st.sampled_from([5, 90, 1500, 5000]))
            step["timestamp"] = _iso(clock - timedelta(minutes=back))
        if draw(st.integers(0, 3)) == 0:
            ids += 1
            step["message_id"] = f"m-{draw(st.integers(1, max(1, ids)))}"
        steps.append(step)
    return start, steps


def _trait(name: str, clock: datetime, zone: str | None) -> st.SearchStrategy[Any]:
    if name == "plan":
        return st.sampled_from(["free", "pro", "free", "pro", 3])  # a number: a rule's run-time type error
    if name == "status":
        return st.sampled_from(["onboarding", "active", "blocked"])
    if name == "age":
        return st.sampled_from([25, 35, 50, 25, 35, 50, "old"])
    if name in ("created_at", "trial_ends_at"):
        return st.sampled_from([-3000, -600, 0, 120, 1500]).map(lambda m: _iso(clock + timedelta(minutes=m)))
    if name == "timezone":
        return st.just(zone) if zone else st.sampled_from(ZONES)
    return st.sampled_from(["a@example.com", "b@example.com"])


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_workspace(files: dict[str, str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
