"""Profiles survive encoding: a run that round-trips every profile through bytes behaves identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine import codec
from journey_engine.compiler import load_workspace
from journey_engine.testing import Harness

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")


def script(h: Harness, roundtrip: bool, names: codec.Names | None = None) -> list[dict[str, object]]:
    defaults = h.engine.cw.metrics.defaults

    def reload() -> None:
        if roundtrip:
            store = h.store
            for user, profile in list(store.profiles.items()):
                store.profiles[user] = codec.decode(codec.encode(profile, defaults, names), defaults, names)

    for n in range(4):
        h.identify(f"u{n}", {"email": f"u{n}@example.com", "timezone": "Europe/Berlin", "status": "onboarding",
                             "created_at": "2026-01-04T10:00:00Z", "locale": "ko"})
        h.track(f"u{n}", "Signed Up")
        h.track(f"u{n}", "Product Added", {"cartId": f"c{n}", "price": 150, "name": "lamp"})
        reload()
        h.track(f"u{n}", "Feature Used")
        h.track("u0", "Unsubscribed", {"subscription": "marketing_email"})
        reload()
        h.wait("20h")
        reload()
    h.wait("9d")
    h.track("u1", "Order Completed", {"revenue": 12.5})
    reload()
    h.wait("40d")
    return h.trace


def test_a_roundtrip_through_bytes_changes_nothing() -> None:
    """Encoding and decoding every profile between steps yields the very same trace."""
    plain = script(Harness(COMPILED, start="2026-01-05T09:00:00Z", seed=1), roundtrip=False)
    stored = script(Harness(COMPILED, start="2026-01-05T09:00:00Z", seed=1), roundtrip=True)
    assert len(plain) > 30
    assert stored == plain
    numbered = script(Harness(COMPILED, start="2026-01-05T09:00:00Z", seed=1), roundtrip=True, names=codec.Names())
    assert numbered == plain  # names written as numbers of a process-local table (MemoryStore's blobs)


def test_a_newer_format_is_refused_with_a_clear_message() -> None:
    """A blob written by a newer engine is refused, not misread."""
    import msgpack

    with pytest.raises(codec.CodecError, match="upgrade journey-engine"):
        codec.decode(msgpack.packb([99, "u1"]))


def test_bounced_addresses_and_held_entry_rules_survive_and_format_2_still_reads() -> None:
    """Format 3 keeps the new fields; a format 2 blob (written before them) reads with them empty."""
    from journey_engine.profile import Profile

    profile = Profile("u1")
    profile.bounced, profile.held = ("a@example.com",), ("trial",)
    back = codec.decode(codec.encode(profile))
    assert (back.bounced, back.held) == (("a@example.com",), ("trial",))
    import msgpack

    old = msgpack.unpackb(codec.encode(Profile("u2")), timestamp=3)
    old[0] = 2
    back = codec.decode(msgpack.packb(old[:-2], datetime=True))
    assert (back.user_id, back.bounced, back.held) == ("u2", None, None)
