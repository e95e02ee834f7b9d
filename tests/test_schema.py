"""`journey schema` describes what the loader accepts: every example file validates against it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapters.cli import app
from journey_engine.loading import parse_yaml

EXAMPLES = sorted((Path(__file__).parent.parent / "journeys").glob("*.yaml"))
NOT_KEYWORDS = {"ge", "gt", "le", "lt", "min_length", "max_length"}  # pydantic's names, not JSON Schema's


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(scope="module")
def errors(schema: dict[str, Any]) -> Callable[[Any], list[str]]:
    """The schema's complaints about a value, from jsonschema_rs (schemathesis's) or jsonschema."""
    try:
        import jsonschema_rs

        rs = jsonschema_rs.validator_for(schema)
        return lambda value: [f"{list(e.instance_path)}: {e.message}" for e in rs.iter_errors(value)]
    except ImportError:
        jsonschema = pytest.importorskip("jsonschema")
        py = jsonschema.Draft202012Validator(schema)
        return lambda value: [f"{list(e.absolute_path)}: {e.message}" for e in py.iter_errors(value)]


def keywords(node: Any) -> Iterator[str]:
    """Every keyword used in a schema, skipping the names under `properties` and `$defs`."""
    if isinstance(node, list):
        for item in node:
            yield from keywords(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            named = key in ("properties", "$defs", "patternProperties")
            yield from (k for child in value.values() for k in keywords(child)) if named else keywords(value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_file_validates_against_the_schema(path: Path, errors: Callable[[Any], list[str]]) -> None:
    """Shorthand segments, `holdout: 10%`, times of day and durations are all described as written."""
    assert errors(parse_yaml(path.read_text(encoding="utf-8"), str(path)).data) == []


def test_the_schema_uses_only_json_schema_keywords(schema: dict[str, Any]) -> None:
    """Bounds are `minimum`/`exclusiveMaximum`, never pydantic's `ge`/`lt`."""
    used = set(keywords(schema))
    assert used & NOT_KEYWORDS == set()
    assert {"minimum", "exclusiveMaximum", "anyOf"} <= used


@pytest.mark.parametrize(
    ("value", "valid"),
    [({"holdout": "10%"}, True), ({"holdout": 0.1}, True), ({"holdout": 1}, False), ({"holdout": "150%"}, False),
     ({"segments": {"a": "traits.x == 1"}}, True), ({"segments": {"a": {"rule": "x", "for": "7d"}}}, True),
     ({"segments": {"a": 3}}, False), ({"policies": {"quiet_hours": {"from": "21:00", "to": "8am"}}}, False)],
    ids=["percent", "share", "whole", "over-100-percent", "segment-shorthand", "segment-object", "segment-number",
         "bad-clock"],
)
def test_the_schema_accepts_what_the_loader_accepts(value: dict[str, Any], valid: bool,
                                                    errors: Callable[[Any], list[str]]) -> None:
    """The alternatives the loader takes are in the schema, and values it refuses are refused."""
    assert (errors({"version": 1, **value}) == []) is valid
