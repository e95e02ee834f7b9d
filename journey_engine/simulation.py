"""Scenarios (SPEC §5): a workspace run on a virtual clock, step by step, with expectations.

`load_scenario` parses a scenario file (errors carry its line); `run_scenario` plays it through a
`Harness` and returns the trace and every failed expectation with a readable diff.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .compiler import CompiledWorkspace, load_workspace
from .errors import Problem, ScenarioError, WorkspaceError, did_you_mean
from .loading import Document, PathKey, model_problems, parse_yaml
from .model import Duration
from .testing import Harness
from .trace import Record


def _named(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty: write the user id or event name")
    return value


def _id(value: Any) -> Any:
    """A number is an id too, the same user as its decimal string (SPEC §3 item 14); true/false are not."""
    if isinstance(value, bool):
        raise ValueError(f"`{str(value).lower()}` is not an id: write a string or a number, quoted if need be")
    return str(value) if isinstance(value, int) else value


Name = Annotated[str, AfterValidator(_named)]  # an event name: the engine refuses empty ones
Id = Annotated[str, BeforeValidator(_id), AfterValidator(_named)]  # a user id


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Identify(_Step):
    identify: Id
    traits: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = None
    timestamp: datetime | None = None


class Track(_Step):
    track: Id
    event: Name
    properties: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = None
    timestamp: datetime | None = None


class Alias(_Step):
    alias: Id
    previous_id: Id
    message_id: str | None = None


class Wait(_Step):
    wait: Duration


class Outage(_Step):
    outage: Duration


class Deploy(_Step):
    deploy: str = Field(description="another workspace folder, relative to the scenario file")


class Rendered(_Step):
    message: str
    contains: str


class Expectation(_Step):
    user: Id
    journey: str | None = None
    key: Annotated[str | None, BeforeValidator(_id)] = None
    state: str | None = Field(None, description="null: not in the journey; left out: not checked")
    segments_include: list[str] = Field(default_factory=list)
    segments_exclude: list[str] = Field(default_factory=list)
    sent: list[str] | None = None
    suppressed: list[str] | None = None
    exited: str | None = Field(None, description="final, exit, goal, version; null: no run of it ended")
    rendered: Rendered | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _state_of_a_journey(self) -> Expectation:
        if self.journey is None and ({"state", "exited"} & self.model_fields_set or self.key is not None):
            raise ValueError("`state`, `exited` and `key` belong to a journey: add `journey: <name>`")
        if self.exited not in (None, "final", "exit", "goal", "version"):
            raise ValueError("`exited` is one of final, exit, goal, version, or null")
        return self


class Expect(_Step):
    expect: Expectation


STEP_KINDS: dict[str, type[_Step]] = {"identify": Identify, "track": Track, "alias": Alias, "wait": Wait,
                                      "outage": Outage, "deploy": Deploy, "expect": Expect}


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scenario: str
    workspace: str = ".."
    start: datetime
    seed: int = 0
    steps: list[dict[str, Any]]
    description: str | None = None


@dataclass(slots=True)
class LoadedScenario:
    file: str
    scenario: Scenario
    steps: list[tuple[int, _Step]]  # (line, step)
    document: Document | None = None  # where each value was written, for errors found against the workspace

    def workspace_dir(self) -> Path:
        return (Path(self.file).parent / self.scenario.workspace).resolve()


@dataclass(slots=True)
class Failure:
    line: int
    expected: dict[str, Any]
    actual: dict[str, Any]
    recent: list[Record]
    title: str = "expectation failed"

    def describe(self, file: str) -> str:
        lines = [f"{file}:{self.line}: {self.title}"]
        for name, want in self.expected.items():
            got = self.actual.get(name)
            mark = "  " if want == got else "✗ "
            lines.append(f"  {mark}{name}: expected {want!r}, got {got!r}")
        if self.recent:
            lines.append("  last trace lines for this user:")
            lines.extend("    " + format_record(r) for r in self.recent)
        return "\n".join(lines)


@dataclass(slots=True)
class Result:
    scenario: LoadedScenario
    trace: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    expectations: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        return {"kind": "summary", "scenario": self.scenario.scenario.scenario, "passed": self.passed,
                "expectations": self.expectations, "failed": len(self.failures),
                "failures": [f.describe(self.scenario.file) for f in self.failures]}


def load_scenario(path: str | Path) -> LoadedScenario:
    """Parse and check a scenario file; raise ScenarioError naming file:line:col of the first mistake."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _refused(Problem(file=file, line=1, column=1,
                               message=f"cannot read the scenario: {exc.strerror}")) from None
    doc = parse_yaml(text, file)
    if doc.problems:
        raise _refused(doc.problems[0])
    if not isinstance(doc.data, dict):
        raise _refused(doc.problem((), "a scenario is a mapping with `scenario`, `start` and `steps`"))
    try:
        scenario = Scenario.model_validate(doc.data)
    except ValidationError as exc:
        raise _refused(*model_problems(doc, exc, Scenario) or [doc.problem((), str(exc))]) from None
    steps = [(doc.where(("steps", i))[0], _step(doc, i, raw)) for i, raw in enumerate(scenario.steps)]
    return LoadedScenario(file=file, scenario=scenario, steps=steps, document=doc)


def _step(doc: Document, index: int, raw: Any) -> _Step:
    at: PathKey = ("steps", index)
    kinds = [k for k in STEP_KINDS if isinstance(raw, dict) and k in raw]
    if len(kinds) != 1:
        raise _refused(doc.problem(at, f"a step is one of {', '.join(STEP_KINDS)}; got {raw!r}"))
    try:
        return STEP_KINDS[kinds[0]].model_validate(raw)
    except ValidationError as exc:
        raise _refused(*model_problems(doc, exc, STEP_KINDS[kinds[0]], at) or [doc.problem(at, str(exc))]) from None


def _refused(first: Problem, *more: Problem) -> ScenarioError:
    return ScenarioError([first, *more])


def check_names(loaded: LoadedScenario, compiled: CompiledWorkspace) -> None:
    """Raise ScenarioError when an `expect` names a journey or segment the workspace does not declare."""
    found = [problem for index, (_, step) in enumerate(loaded.steps) if isinstance(step, Expect)
             for problem in _unknown_names(loaded, compiled, index, step.expect)]
    if found:
        raise _refused(*found)


def _unknown_names(loaded: LoadedScenario, compiled: CompiledWorkspace, index: int,
                   e: Expectation) -> Iterator[Problem]:
    ws = compiled.workspace
    doc = loaded.document or Document(file=loaded.file, data=None, positions={})
    at: PathKey = ("steps", index, "expect")
    if e.journey is not None and e.journey not in ws.journeys:
        yield doc.problem((*at, "journey"), f"unknown journey `{e.journey}`{did_you_mean(e.journey, ws.journeys)}")
    for field_name in ("segments_include", "segments_exclude"):
        for i, name in enumerate(getattr(e, field_name)):
            if name not in ws.segments:
                yield doc.problem((*at, field_name, i), f"unknown segment `{name}`{did_you_mean(name, ws.segments)}")


def run_scenario(loaded: LoadedScenario, compiled: CompiledWorkspace | None = None) -> Result:
    """Play the steps; the workspace is loaded from the scenario's `workspace` unless given.

    Raises ScenarioError before playing when an `expect` names what the workspace does not declare.
    """
    compiled = compiled or load_workspace(loaded.workspace_dir())
    check_names(loaded, compiled)
    harness = Harness(compiled, start=loaded.scenario.start, seed=loaded.scenario.seed)
    result = Result(scenario=loaded, trace=harness.trace)
    for line, step in loaded.steps:
        _play(harness, step, line, result)
    return result


def _play(h: Harness, step: _Step, line: int, result: Result) -> None:
    if isinstance(step, Identify):
        h.identify(step.identify, _plain(step.traits), message_id=step.message_id, timestamp=step.timestamp)
    elif isinstance(step, Track):
        h.track(step.track, step.event, _plain(step.properties), message_id=step.message_id,
                timestamp=step.timestamp)
    elif isinstance(step, Alias):
        h.alias(step.alias, step.previous_id, message_id=step.message_id)
    elif isinstance(step, Wait):
        h.wait(step.wait)
    elif isinstance(step, Outage):
        h.outage(step.outage)
    elif isinstance(step, Deploy):
        _deploy(h, Path(result.scenario.file).parent / step.deploy, line, result)
    elif isinstance(step, Expect):
        result.expectations += 1
        failure = check(h, step.expect, line)
        if failure is not None:
            result.failures.append(failure)


def _deploy(h: Harness, folder: Path, line: int, result: Result) -> None:
    """Apply another workspace; one that does not load or whose plan is refused fails the scenario (the
    running versions stay, as in `journey serve`)."""
    from .deployment import PlanRefused

    try:
        h.deploy(folder)
    except WorkspaceError as exc:
        result.failures.append(Failure(line, {"deploy": str(folder)}, {"loads": [str(p) for p in exc.problems]}, [],
                                       title="deploy: the workspace does not load"))
    except PlanRefused as exc:
        result.failures.append(Failure(line, {"deploy": str(folder)}, {"refused": exc.plan.refusals}, [],
                                       title="deploy: the plan cannot be applied"))


def check(h: Harness, e: Expectation, line: int) -> Failure | None:
    """Compare what the expectation names with what the harness shows."""
    expected: dict[str, Any] = {}
    actual: dict[str, Any] = {}
    segments = h.segments(e.user)
    if e.journey is not None and "state" in e.model_fields_set:
        expected["state"] = e.state
        actual["state"] = h.state(e.user, e.journey, e.key)
    for name in e.segments_include:
        expected[f"in segment {name}"], actual[f"in segment {name}"] = True, name in segments
    for name in e.segments_exclude:
        expected[f"in segment {name}"], actual[f"in segment {name}"] = False, name in segments
    if e.sent is not None:
        expected["sent"], actual["sent"] = e.sent, h.sent(e.user)
    if e.suppressed is not None:
        expected["suppressed"], actual["suppressed"] = e.suppressed, h.suppressed(e.user)
    if e.journey is not None and "exited" in e.model_fields_set:
        expected["exited"], actual["exited"] = e.exited, h.exited(e.user, e.journey, e.key)
    if e.rendered is not None:
        text = h.rendered(e.user, e.rendered.message)
        name = f"rendered {e.rendered.message}"
        expected[name] = f"contains {e.rendered.contains!r}"
        actual[name] = expected[name] if text is not None and e.rendered.contains in text else (
            "never sent" if text is None else text)
    metrics = h.metrics(e.user)
    for name, value in e.metrics.items():
        expected[f"metrics.{name}"], actual[f"metrics.{name}"] = value, _plain(metrics.get(name))
    if expected == actual:
        return None
    recent = h.records(e.user)[-8:]
    return Failure(line=line, expected=expected, actual=actual, recent=recent)


def _plain(value: Any) -> Any:
    """YAML dates become ISO strings again, the way they arrive over the API."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return aware.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_record(record: Record) -> str:
    """One trace record as a readable line."""
    kind = record["kind"]
    at = str(record.get("at", ""))
    rest = {k: v for k, v in record.items() if k not in ("kind", "at", "user") and v is not None}
    detail = " ".join(f"{k}={v}" for k, v in rest.items())
    return f"{at} {record.get('user', '')} {kind} {detail}".rstrip()


