"""The Versions contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from journey_engine.ports import DeploymentRace, ServiceStore
from journey_engine.testing import Harness
from journey_engine.versions import definition

from .conftest import COMPILED, T0

ONBOARDING = COMPILED.journeys["onboarding"]


def test_a_new_store_has_no_deployment(store: ServiceStore) -> None:
    """Before the first deploy: deployment 0, nothing in force, nothing stored."""
    assert store.in_force() == (0, {})
    assert store.stored_versions() == {}


def test_a_deploy_stores_definitions_and_numbers_the_deployment(store: ServiceStore) -> None:
    """deploy stores what is new, sets the versions in force and returns the next number."""
    key = ("onboarding", ONBOARDING.version)
    assert store.deploy({key: definition(ONBOARDING.journey)}, {"onboarding": ONBOARDING.version}, after=0) == 1
    assert store.in_force() == (1, {"onboarding": ONBOARDING.version})
    assert store.deploy({key: "a different text is ignored: a version's definition never changes"}, {}, after=1) == 2
    assert store.stored_versions() == {key: definition(ONBOARDING.journey)}
    assert store.in_force() == (2, {})


def test_a_deploy_over_a_stale_deployment_is_refused_and_writes_nothing(
        stores: tuple[ServiceStore, ServiceStore]) -> None:
    """Two processes planning over deployment 1: the second to deploy gets DeploymentRace, nothing written."""
    first, second = stores
    first.deploy({}, {"onboarding": "v1"}, after=0)
    first.deploy({}, {"onboarding": "v2"}, after=1)
    with pytest.raises(DeploymentRace, match="another process applied a workspace"):
        second.deploy({("onboarding", "v3"): "{}"}, {"onboarding": "v3"}, after=1)
    assert second.in_force() == (2, {"onboarding": "v2"})
    assert second.stored_versions() == {}


def test_live_instances_count_each_journey_version_and_state(store: ServiceStore) -> None:
    """live_instances and users_in read the instances of every profile."""
    h = Harness(COMPILED, start=T0, store=store)
    for user in ("u1", "u2", "u3"):
        h.identify(user, {"email": f"{user}@example.com", "status": "onboarding"})
        h.track(user, "Signed Up")
    h.track("u3", "Order Completed", {"revenue": 10})  # onboarding's goal: u3's run ends
    counts = {k: n for k, n in store.live_instances().items() if k[0] == "onboarding"}
    assert counts == {("onboarding", ONBOARDING.version, h.state("u1", "onboarding")): 2}
    assert store.users_in(["onboarding"]) == ["u1", "u2"]
    assert store.users_in(["no such journey"]) == []
