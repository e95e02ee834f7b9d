"""The journey language (SPEC §3-§4) as frozen pydantic models.

A workspace file is parsed into a `WorkspaceFile`; `loading.py` gathers the files into a `Workspace`.
Models hold only what the author wrote (plus parsed durations); compiling happens elsewhere.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_COMPACT = re.compile(r"^(-)?((?:\d+(?:\.\d+)?[wdhms])+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_ISO = re.compile(
    r"^(-)?P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: object) -> timedelta:
    """`30s`, `5m`, `4h`, `2d`, `1w`, compounds (`1h30m`), ISO-8601 (`PT90M`), a leading `-` for negative."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("a duration is written like 30s, 5m, 4h, 2d, 1w, 1h30m or PT90M")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = value.strip()
    compact = _COMPACT.match(text)
    if compact:
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(compact.group(2)))
        return timedelta(seconds=-seconds if compact.group(1) else seconds)
    iso = _ISO.match(text.upper())
    if iso and text.upper() not in ("P", "-P", "PT", "-PT"):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        seconds = sum(parts.get(u, 0.0) * _UNIT_SECONDS[u.lower()] for u in ("w", "d", "h", "m", "s"))
        return timedelta(seconds=-seconds if iso.group(1) else seconds)
    raise ValueError(f"`{value}` is not a duration: write it like 30s, 5m, 4h, 2d, 1w, 1h30m or PT90M")


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^-?(\d+(\.\d+)?[wdhms])+$|^-?[Pp]",
                               "examples": ["30s", "2d", "1h30m", "PT90M"]},
                              {"type": "number", "description": "seconds"}]}),
]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: object) -> str:
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise ValueError(f"`{value}` is not a time of day: write it as HH:MM, e.g. \"09:00\"")
    return value


ClockTime = Annotated[str, BeforeValidator(parse_clock),
                      WithJsonSchema({"type": "string", "pattern": _CLOCK.pattern, "examples": ["09:00"]})]


def clock_minutes(value: str) -> int:
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- triggers -------------------------------------------------------------------------------------


class Trigger(Frozen):
    """What can make something happen: an event, a segment, a rule (with `on`/`segment`, a guard)."""

    on: str | None = Field(None, description="a track event name")
    segment: str | None = Field(None, description="entering this segment")
    if_: str | None = Field(None, alias="if", description="a rule; with on/segment, a guard")


class Entry(Trigger):
    key: str | None = Field(None, description="one instance per value of this event property")
    reentry: Literal["never", "always"] | ReentryAfter = "never"

    @model_validator(mode="after")
    def _one_trigger(self) -> Entry:
        if self.on is None and self.segment is None and self.if_ is None:
            raise ValueError("entry needs one of `on` (an event), `segment` or `if` (a rule)")
        if self.on is not None and self.segment is not None:
            raise ValueError("entry takes `on` or `segment`, not both")
        if self.key is not None and self.on is None:
            raise ValueError("`key` needs `on`: the instance key is a property of the entry event")
        return self


class ReentryAfter(Frozen):
    after: Duration


class ExitCriterion(Trigger):
    @model_validator(mode="after")
    def _one_trigger(self) -> ExitCriterion:
        if self.on is None and self.segment is None and self.if_ is None:
            raise ValueError("an exit criterion needs `on`, `segment` or `if`")
        return self


class Goal(Trigger):
    within: Duration = Field(timedelta(days=14), description="attribution window for messages")
    exit: bool = Field(True, description="leave the journey when the goal is reached")

    @model_validator(mode="after")
    def _one_trigger(self) -> Goal:
        if self.on is None and self.segment is None and self.if_ is None:
            raise ValueError("a goal needs `on`, `segment` or `if`")
        return self


class AttributeTime(Frozen):
    attribute: str = Field(description="a trait or journey data date-time, e.g. traits.trial_ends_at")
    offset: Duration = timedelta(0)


class Transition(Frozen):
    on: str | None = None
    if_: str | None = Field(None, alias="if")
    segment: str | None = None
    after: Duration | None = None
    at: ClockTime | AttributeTime | None = None
    to: str

    @model_validator(mode="after")
    def _one_kind(self) -> Transition:
        kinds = [k for k in ("on", "segment", "after", "at") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"a transition fires on one trigger; this one has {' and '.join(kinds)}")
        if self.if_ is not None and kinds and kinds[0] in ("after", "at"):
            raise ValueError("timers (`after`, `at`) take no `if`: add a rule transition in the next state")
        if self.after is not None and self.after <= timedelta(0):
            raise ValueError("`after` must be a positive duration")
        return self

    @property
    def kind(self) -> str:
        for kind in ("on", "segment", "after", "at"):
            if getattr(self, kind) is not None:
                return kind
        return "if" if self.if_ is not None else "always"


class Choose(Frozen):
    choose: Literal["best", "first", "random"]
    from_: list[str] = Field(alias="from", min_length=1)
    by: list[str] = Field(default_factory=list,
                          description="segments: `best` learns apart for each (the first one a user is in) "
                                      "and for everyone else")

    @model_validator(mode="after")
    def _cohorts(self) -> Choose:
        if self.by and self.choose != "best":
            raise ValueError("`by` goes with `choose: best`: only the bandit learns per cohort")
        if len(set(self.by)) != len(self.by):
            raise ValueError("`by` names a segment twice")
        return self


class SplitPath(Frozen):
    to: str
    weight: float = Field(1.0, gt=0)


class Split(Frozen):
    strategy: Literal["random", "bandit"] = "random"
    paths: list[SplitPath] = Field(min_length=1)


class State(Frozen):
    description: str | None = None
    send: str | list[str] | Choose | None = None
    transitions: list[Transition] = Field(default_factory=list)
    split: Split | None = None
    final: bool = False

    @model_validator(mode="after")
    def _shape(self) -> State:
        if self.final and (self.transitions or self.split):
            raise ValueError("a final state has no transitions or split")
        if self.split and self.transitions:
            raise ValueError("a state has either `split` or `transitions`, not both")
        return self

    @property
    def candidates(self) -> list[str]:
        if self.send is None:
            return []
        if isinstance(self.send, str):
            return [self.send]
        if isinstance(self.send, Choose):
            return list(self.send.from_)
        return list(self.send)


# --- messages -------------------------------------------------------------------------------------

Channel = Literal["email", "sms", "push", "in_app", "webhook", "console"]


class Translation(Frozen):
    subject: str | None = None
    title: str | None = None
    body: str | None = None
    template: str | None = None


class SendWindow(Frozen):
    window: str = Field(description='local hours when the message may go, "09:00-18:00"')

    @model_validator(mode="after")
    def _window(self) -> SendWindow:
        parts = self.window.split("-")
        if len(parts) != 2:
            raise ValueError('a window is written "HH:MM-HH:MM"')
        for part in parts:
            parse_clock(part.strip())
        return self

    @cached_property  # read by every send decision
    def bounds(self) -> tuple[int, int]:
        start, end = (clock_minutes(p.strip()) for p in self.window.split("-"))
        return start, end


def _never(value: Any) -> Any:
    return None if value == "never" else parse_duration(value)


# how late a send may still go out after it was due; None is `never` (SPEC §3 item 10)
Expiry = Annotated[
    timedelta | None, BeforeValidator(_never),
    WithJsonSchema({"anyOf": [{"const": "never"}, {"type": "string", "examples": ["2h", "24h"]}]}),
]
DEFAULT_EXPIRY = timedelta(hours=24)


class Message(Frozen):
    channel: Channel
    subject: str | None = None
    title: str | None = Field(None, description="push / in-app title")
    body: str | None = None
    template: str | None = Field(None, description="a file under templates/")
    url: str | None = Field(None, description="webhook target or a link for push / in-app")
    if_: str | None = Field(None, alias="if", description="eligibility rule")
    priority: int = 0
    send_at: Literal["immediately", "optimal"] | SendWindow = "immediately"
    subscription: str | None = None
    translations: dict[str, Translation] = Field(default_factory=dict)
    transactional: bool = Field(False, description="receipts, resets: no quiet hours, caps, subscriptions or holdouts")
    expires: Expiry = Field(DEFAULT_EXPIRY, description="how late it may still go (`never`); default: policies")

    @model_validator(mode="after")
    def _content(self) -> Message:
        if self.body is None and self.template is None:
            raise ValueError("a message needs `body` or `template`")
        if self.body is not None and self.template is not None:
            raise ValueError("a message takes `body` or `template`, not both")
        if self.channel == "email" and self.subject is None:
            raise ValueError("an email needs a `subject`")
        return self

    def expiry(self, default: timedelta | None) -> timedelta | None:
        """How late this message may still go out: its own `expires`, else `never` for a transactional
        message, else the workspace's default. None is `never`."""
        if "expires" in self.model_fields_set:
            return self.expires
        return None if self.transactional else default


# --- metrics and segments -------------------------------------------------------------------------


class Metric(Frozen):
    count: str | None = Field(None, description="count events of this name (`any` for all)")
    sum: str | None = Field(None, description="sum this property ...")
    last: str | None = Field(None, description="last value of this property ...")
    of: str | None = Field(None, description="... of this event")
    last_seen: str | None = None
    first_seen: str | None = None
    within: Duration | None = Field(None, description="a sliding window over event times")
    where: str | None = Field(None, description="a rule over the event (`properties.price > 100`)")

    @model_validator(mode="after")
    def _one_aggregate(self) -> Metric:
        kinds = [k for k in ("count", "sum", "last", "last_seen", "first_seen") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a metric is one of count, sum (+of), last (+of), last_seen, first_seen")
        if kinds[0] in ("sum", "last") and self.of is None:
            raise ValueError(f"`{kinds[0]}` names a property; add `of:` with the event name")
        if kinds[0] not in ("sum", "last") and self.of is not None:
            raise ValueError("`of` goes with `sum` or `last`")
        if self.within is not None and kinds[0] not in ("count", "sum"):
            raise ValueError("`within` goes with `count` or `sum`")
        if self.within is not None and self.within <= timedelta(0):
            raise ValueError("`within` must be a positive duration")
        return self

    @property
    def kind(self) -> str:
        for kind in ("count", "sum", "last", "last_seen", "first_seen"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated")

    @property
    def event(self) -> str:
        """The event name this metric listens to (`any` for all)."""
        if self.of is not None:
            return self.of
        value = getattr(self, self.kind)
        assert isinstance(value, str)
        return value


class SegmentDef(Frozen):
    rule: str
    for_: Duration | None = Field(None, alias="for", description="the rule has held this long")


def _segment_shorthand(value: Any) -> Any:
    return {"rule": value} if isinstance(value, str) else value


# `name: "rule"` is shorthand for `name: {rule: "rule"}`; the JSON schema says so too
Segment = Annotated[SegmentDef, BeforeValidator(_segment_shorthand, json_schema_input_type=str | SegmentDef)]


def _percent(value: Any) -> Any:
    if isinstance(value, str) and value.strip().endswith("%"):
        return float(value.strip()[:-1]) / 100
    return value


# the bounds sit next to the float so they stay `minimum`/`exclusiveMaximum` in the JSON schema
Share = Annotated[
    float, Field(ge=0, lt=1), BeforeValidator(_percent),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                              {"type": "string", "pattern": r"^\s*\d{1,2}(\.\d+)?\s*%\s*$", "examples": ["10%"]}]}),
]


# --- policies -------------------------------------------------------------------------------------


class QuietHours(Frozen):
    from_: ClockTime = Field(alias="from")
    to: ClockTime
    action: Literal["defer", "drop"] = "defer"


class FrequencyCap(Frozen):
    channel: Channel | Literal["any"] = "any"
    max: int = Field(ge=0)
    per: Duration
    if_: str | None = Field(None, alias="if", description="a rule: the cap applies only to users for whom it holds")


class SendTime(Frozen):
    default_hour: int = Field(10, ge=0, le=23)


class Policies(Frozen):
    timezone: str = "UTC"
    quiet_hours: QuietHours | None = None
    frequency_caps: list[FrequencyCap] = Field(default_factory=list)
    send_time: SendTime = SendTime()
    expires: Expiry = Field(DEFAULT_EXPIRY, description="how late a send may still go out (`never`)")
    control_group: Share = Field(0.0, description='share of users held out of every non-transactional send, "5%"')


class Subscription(Frozen):
    channel: Channel
    default: Literal["subscribed", "unsubscribed"] = "subscribed"


# --- files and journeys ---------------------------------------------------------------------------


OnChange = Literal["keep", "move"]


class WorkspaceFile(Frozen):
    """One YAML file of a workspace: any of a journey, messages, metrics, segments, policies."""

    version: Literal[1]
    journey: str | None = Field(None, description="the journey's name")
    description: str | None = None
    entry: Entry | None = None
    exit: list[ExitCriterion] = Field(default_factory=list)
    goal: Goal | None = None
    holdout: Share = Field(0.0, description='share of entrants sent nothing, e.g. "10%"')
    on_change: OnChange = Field("keep", description="live instances when this journey changes: keep their "
                                                    "version (pinned) or move to the new one")
    moves: dict[str, str] = Field(default_factory=dict, description="with on_change: move, old state -> new state")
    initial: str | None = None
    states: dict[str, State] = Field(default_factory=dict)
    messages: dict[str, Message] = Field(default_factory=dict)
    metrics: dict[str, Metric] = Field(default_factory=dict)
    segments: dict[str, Segment] = Field(default_factory=dict)
    policies: Policies | None = None
    subscriptions: dict[str, Subscription] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _journey_keys(self) -> WorkspaceFile:
        journey_keys = [k for k in ("entry", "goal", "initial") if getattr(self, k) is not None]
        if self.states:
            journey_keys.append("states")
        if self.journey is None and journey_keys:
            raise ValueError(f"{', '.join(journey_keys)} belong to a journey: add `journey: <name>` at the top")
        if self.journey is not None:
            missing = [k for k in ("entry", "initial") if getattr(self, k) is None]
            if not self.states:
                missing.append("states")
            if missing:
                raise ValueError(f"journey `{self.journey}` needs {', '.join(missing)}")
        return self


class Journey(Frozen):
    """A journey as compiled from its file: the journey keys of a `WorkspaceFile`."""

    name: str
    file: str
    description: str | None = None
    entry: Entry
    exit: list[ExitCriterion] = Field(default_factory=list)
    goal: Goal | None = None
    holdout: float = 0.0
    on_change: OnChange = "keep"
    moves: dict[str, str] = Field(default_factory=dict)
    initial: str
    states: dict[str, State]

    @property
    def version(self) -> str:
        """A short content hash of the definition: a changed journey is a new version. What to do with
        live instances on a change (`on_change`, `moves`) is not part of it."""
        import hashlib

        payload = self.model_dump_json(exclude={"file", "on_change", "moves"}).encode()
        return hashlib.sha1(payload).hexdigest()[:10]


Entry.model_rebuild()
