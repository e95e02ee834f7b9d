"""Every example scenario in journeys/scenarios passes: the example workspace is a specification."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.simulation import load_scenario, run_scenario

EXAMPLES = Path(__file__).parent.parent / "journeys"
SCENARIOS = sorted((EXAMPLES / "scenarios").glob("*.yaml"))


@pytest.fixture(scope="module")
def compiled() -> CompiledWorkspace:
    return load_workspace(EXAMPLES)


def test_the_example_workspace_lints_clean(compiled: CompiledWorkspace) -> None:
    """The example workspace a newcomer reads first has no errors and no warnings."""
    assert [str(p) for p in compiled.warnings] == []


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_example_scenario_passes(path: Path, compiled: CompiledWorkspace) -> None:
    """The scenario's expectations all hold, and a second run gives the same trace."""
    loaded = load_scenario(path)
    own = compiled if loaded.workspace_dir() == EXAMPLES.resolve() else load_workspace(loaded.workspace_dir())
    result = run_scenario(loaded, own)
    assert result.passed, "\n".join(f.describe(str(path)) for f in result.failures)
    assert result.expectations > 0
    assert run_scenario(loaded, own).trace == result.trace
