"""Journeys as pictures for `journey graph` and the dashboard: Mermaid flowcharts, Graphviz DOT (and
through it SVG), and the dashboard's SVG with live counts.

Every picture draws one neutral layout of nodes and edges (`layout`); each only escapes labels its own
way. `places` puts the nodes on a grid for a drawer that positions them itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from journey_engine.model import AttributeTime, Choose, Journey, Split, State, Transition, Trigger

_NodeKind = Literal["state", "initial", "final", "entry", "exit", "any"]

_RULE_CHARS = 60  # long rules make unreadable edges; the file has the full text
_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    lines: tuple[str, ...]  # the first is the name
    kind: _NodeKind
    state: str | None = None  # the journey state it stands for


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str
    dashed: bool = False


def format_duration(delta: timedelta) -> str:
    """The compact form `parse_duration` reads: `2d`, `1h30m`, `-1d`, `0s`."""
    seconds = delta.total_seconds()
    sign, rest = ("-" if seconds < 0 else ""), abs(seconds)
    parts: list[str] = []
    for unit, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{int(count)}{unit}")
    if rest or not parts:
        parts.append(f"{round(rest, 6):g}s")
    return sign + "".join(parts)


# --- layout ---------------------------------------------------------------------------------------


def layout(journey: Journey) -> tuple[list[Node], list[Edge]]:
    """The journey's nodes (entry, states, and for exits and the goal `any state`, exit, goal reached)
    and labelled edges (dashed: exits and the goal, which hold in every state)."""
    ids = _state_ids(journey)
    nodes = [Node("entry", ("entry",), "entry")]
    nodes += [_state_node(journey, name, node_id) for name, node_id in ids.items()]
    edges = [Edge("entry", ids[journey.initial], _trigger_label(journey.entry))]
    for name, state in journey.states.items():
        edges += _state_edges(ids[name], state, ids)
    leave_nodes, leave_edges = _leaving(journey)
    return nodes + leave_nodes, edges + leave_edges


def places(nodes: list[Node], edges: list[Edge]) -> dict[str, tuple[int, int]]:
    """(column, row) per node id, left to right: columns by the steps from the entry along solid edges;
    `any state` in the first column, below the entry; states no solid edge reaches after the others;
    exit and goal last. Rows in the order of `nodes`."""
    targets: dict[str, list[str]] = {}
    for edge in edges:
        if not edge.dashed:
            targets.setdefault(edge.source, []).append(edge.target)
    depth = {"entry": 0}
    queue = ["entry"]
    for source in queue:  # breadth first: the list grows as it is read
        for target in targets.get(source, []):
            if target not in depth:
                depth[target] = depth[source] + 1
                queue.append(target)
    unreached = max(depth.values()) + 1
    last = unreached + any(n.id not in depth and n.kind == "state" for n in nodes)
    rows: dict[int, int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for node in nodes:
        if node.kind == "any":
            column = 0
        elif node.kind == "exit":
            column = last
        else:
            column = depth.get(node.id, unreached)
        placed[node.id] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return placed


def _state_ids(journey: Journey) -> dict[str, str]:
    """Generated ids, so that state names never clash with either format's syntax or keywords."""
    names = [journey.initial, *journey.states]
    for state in journey.states.values():
        names += [t.to for t in state.transitions]
        names += [path.to for path in (state.split.paths if state.split else [])]
    unique = list(dict.fromkeys(names))
    return {name: f"s{index}" for index, name in enumerate(unique)}


def _state_node(journey: Journey, name: str, node_id: str) -> Node:
    state = journey.states.get(name)
    if state is None:  # an unknown target: validation reports it, the picture still shows it
        return Node(node_id, (name, "(undefined)"), "state", name)
    kind: _NodeKind = "final" if state.final else "initial" if name == journey.initial else "state"
    return Node(node_id, (name, *_state_details(state)), kind, name)


def _state_details(state: State) -> tuple[str, ...]:
    lines: list[str] = []
    if isinstance(state.send, Choose):
        lines.append(f"choose {state.send.choose}: {', '.join(state.send.from_)}")
    elif state.send is not None:
        lines.append(f"send: {', '.join(state.candidates)}")
    if state.split is not None:
        lines.append(f"split: {state.split.strategy}")
    return tuple(lines)


def _state_edges(source: str, state: State, ids: dict[str, str]) -> list[Edge]:
    if state.split is not None:
        return [Edge(source, ids[to], label) for to, label in _split_labels(state.split)]
    return [
        Edge(source, ids[t.to], _transition_label(t, fallback=index > 0))
        for index, t in enumerate(state.transitions)
    ]


def _split_labels(split: Split) -> list[tuple[str, str]]:
    if split.strategy == "bandit":
        return [(path.to, "bandit") for path in split.paths]
    total = sum(path.weight for path in split.paths)
    return [(path.to, f"split {round(100 * path.weight / total, 1):g}%") for path in split.paths]


def _leaving(journey: Journey) -> tuple[list[Node], list[Edge]]:
    """Exit criteria and the goal hold in every state: drawn once, from an `any state` node."""
    edges = [Edge("any", "exit", f"exit {_trigger_label(c)}", dashed=True) for c in journey.exit]
    goal = journey.goal
    if goal is not None:
        label = f"goal {_trigger_label(goal)} within {format_duration(goal.within)}"
        edges.append(Edge("any", "exit" if goal.exit else "goal", label, dashed=True))
    if not edges:
        return [], []
    targets = dict.fromkeys(edge.target for edge in edges)
    nodes = [Node("any", ("any state",), "any")]
    nodes += [Node(target, ("goal reached" if target == "goal" else "exit",), "exit") for target in targets]
    return nodes, edges


# --- labels ---------------------------------------------------------------------------------------


def _short(rule: str) -> str:
    rule = " ".join(rule.split())
    return rule if len(rule) <= _RULE_CHARS else rule[: _RULE_CHARS - 1] + "…"


def _trigger_label(trigger: Trigger | Transition) -> str:
    guard = f" [if {_short(trigger.if_)}]" if trigger.if_ is not None else ""
    if trigger.on is not None:
        return f"on: {trigger.on}{guard}"
    if trigger.segment is not None:
        return f"segment: {trigger.segment}{guard}"
    return f"if: {_short(trigger.if_ or '')}"


def _transition_label(transition: Transition, *, fallback: bool) -> str:
    if transition.on is not None or transition.segment is not None:
        return _trigger_label(transition)
    if transition.after is not None:
        return f"after {format_duration(transition.after)}"
    if isinstance(transition.at, AttributeTime):
        offset = transition.at.offset
        shift = "" if not offset else f" {'+' if offset > timedelta(0) else ''}{format_duration(offset)}"
        return f"at {transition.at.attribute}{shift}"
    if transition.at is not None:
        return f"at {transition.at}"
    if transition.if_ is not None:
        return f"if: {_short(transition.if_)}"
    # A bare `to:` is taken at once: after other transitions it is their fallback.
    return "else" if fallback else "always"


# --- Mermaid --------------------------------------------------------------------------------------

# `#` first: the other replacements introduce it. Entity codes keep quotes, pipes, markup, HTML
# entities (`&`) and Markdown strings (backticks) inert.
_MERMAID_ESCAPES = (
    ("#", "#35;"), ('"', "#quot;"), ("|", "#124;"), ("<", "#lt;"), (">", "#gt;"), ("&", "#38;"), ("`", "#96;")
)
_MERMAID_SHAPES: dict[_NodeKind, tuple[str, str]] = {
    "state": ("(", ")"),
    "initial": ("(", ")"),
    "final": ("(((", ")))"),
    "entry": ("([", "])"),
    "exit": ("([", "])"),
    "any": ("[/", "/]"),
}


def _mermaid_text(text: str) -> str:
    text = " ".join(text.split())
    for raw, entity in _MERMAID_ESCAPES:
        text = text.replace(raw, entity)
    return text


def to_mermaid(journey: Journey) -> str:
    """A Mermaid flowchart of the journey (initial state bold, final states double-bordered)."""
    nodes, edges = layout(journey)
    lines = ["flowchart LR"]
    for node in nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        label = "<br/>".join(_mermaid_text(line) for line in node.lines)
        lines.append(f'  {node.id}{opening}"{label}"{closing}')
    for edge in edges:
        arrow = "-.->" if edge.dashed else "-->"
        lines.append(f'  {edge.source} {arrow}|"{_mermaid_text(edge.label)}"| {edge.target}')
    lines += _mermaid_classes(nodes)
    return "\n".join(lines) + "\n"


def _mermaid_classes(nodes: list[Node]) -> list[str]:
    initial = [node.id for node in nodes if node.kind == "initial"]
    if not initial:
        return []
    return ["  classDef initial stroke-width:3px", f"  class {','.join(initial)} initial"]


# --- Graphviz DOT ---------------------------------------------------------------------------------

_DOT_ATTRIBUTES: dict[_NodeKind, str] = {
    "state": "",
    "initial": ", penwidth=2.5",
    "final": ", peripheries=2",
    "entry": ", shape=oval, style=filled, fillcolor=\"#eeeeee\"",
    "exit": ", shape=oval, style=filled, fillcolor=\"#eeeeee\"",
    "any": ", shape=plaintext",
}


def _dot_text(text: str) -> str:
    # Backslashes first: DOT reads `\n`, `\l`, `\N`, ... in quoted strings as escapes.
    return " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')


def _dot_label(lines: tuple[str, ...] | list[str]) -> str:
    return '"' + "\\n".join(_dot_text(line) for line in lines) + '"'


def to_dot(journey: Journey) -> str:
    """A Graphviz digraph of the journey (initial state bold, final states double-bordered)."""
    nodes, edges = layout(journey)
    lines = [
        f"digraph {_dot_label([journey.name])} {{",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    lines += [f"  {node.id} [label={_dot_label(node.lines)}{_DOT_ATTRIBUTES[node.kind]}];" for node in nodes]
    lines += [_dot_edge(edge) for edge in edges]
    return "\n".join([*lines, "}"]) + "\n"


def _dot_edge(edge: Edge) -> str:
    style = ", style=dashed" if edge.dashed else ""
    return f"  {edge.source} -> {edge.target} [label={_dot_label([edge.label])}{style}];"

