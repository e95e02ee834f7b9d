"""YAML text -> language models, with every mistake of a workspace reported at once as file:line:col.

YAML is read as YAML 1.2 booleans (`on`, `off`, `yes`, `no` stay strings: they are event and state
names here), duplicate keys are errors, and each value remembers where it was written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Problem, WorkspaceError, did_you_mean
from .model import Journey, Message, Metric, Policies, SegmentDef, Subscription, WorkspaceFile

PathKey = tuple[str | int, ...]
Positions = dict[PathKey, tuple[int, int]]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans only."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(slots=True)
class Document:
    """One parsed YAML file: its data and where each value sits."""

    file: str
    data: Any
    positions: Positions
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: PathKey) -> tuple[int, int]:
        """Line and column of the deepest part of `path` that was written."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found:
                return found
        return (1, 1)

    def problem(self, path: PathKey, message: str, severity: str = "error") -> Problem:
        line, column = self.where(path)
        return Problem(file=self.file, line=line, column=column, message=message, severity=severity)


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document, keeping positions; syntax errors become problems, not tracebacks."""
    doc = Document(file=file, data=None, positions={})
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            doc.data = _to_python(node, (), doc, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "not valid YAML"
        doc.problems.append(Problem(file=file, line=line, column=col, message=f"YAML syntax: {what}"))
    finally:
        loader.dispose()
    return doc


def _to_python(node: yaml.Node, path: PathKey, doc: Document, loader: _Loader) -> Any:
    doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int | float) or isinstance(key, bool):
                doc.problems.append(doc.problem(path, "a key must be a plain name"))
                continue
            key = str(key)
            if key in result:
                line = key_node.start_mark.line + 1
                col = key_node.start_mark.column + 1
                first = doc.positions.get((*path, key), (0, 0))[0]
                doc.problems.append(Problem(file=doc.file, line=line, column=col,
                                            message=f"duplicate key `{key}` (first written on line {first})"))
                continue
            doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _to_python(value_node, (*path, key), doc, loader)
            doc.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), doc, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node)


# --- pydantic errors -> problems ------------------------------------------------------------------


def model_problems(doc: Document, exc: ValidationError, model: type[BaseModel],
                   at: PathKey = ()) -> list[Problem]:
    """Turn pydantic errors into file:line:col problems, most specific first, without union noise.

    `at` is where in the document the validated value sits (a scenario step validates `steps[i]`).
    """
    found: dict[tuple[int, int, str], Problem] = {}
    resolved = [(*_data_path(doc.data, (*at, *error["loc"])), error) for error in exc.errors(include_url=False)]
    for path, skipped, error in resolved:
        if skipped and _union_noise(path, error, resolved):
            continue
        message = _message(error, path, skipped, model, len(at))
        line, col = doc.where(path)
        found.setdefault((line, col, message), Problem(file=doc.file, line=line, column=col, message=message))
    return list(found.values())


_CONTAINER_ERRORS = ("model_type", "model_attributes_type", "dict_type", "list_type")


def _union_noise(path: PathKey, error: Any, resolved: list[tuple[PathKey, list[str], Any]]) -> bool:
    """A union member that failed at `path` while another member got further or fits the value better."""
    if error["type"] in ("missing", "extra_forbidden"):
        return False
    others = [(p, e) for p, _, e in resolved if e is not error and p[:len(path)] == path]
    if any(len(p) > len(path) for p, _ in others):
        return True
    return _wrong_shape(error) and any(not _wrong_shape(e) for _, e in others)


def _wrong_shape(error: Any) -> bool:
    """The member expected a scalar where a mapping or list was written, or the other way round."""
    kind = str(error["type"])
    if isinstance(error.get("input"), Mapping | list):
        return kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "enum")
    return kind in _CONTAINER_ERRORS


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[PathKey, list[str]]:
    """Keep the parts of a pydantic location that exist in the data (drops union member tags)."""
    path: list[str | int] = []
    skipped: list[str] = []
    here = data
    for part in loc:
        in_list = isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here)
        if in_list or (isinstance(here, Mapping) and part in here):
            path.append(part)
            here = here[part]
        else:
            skipped.append(str(part))
    return tuple(path), skipped


def _message(error: Mapping[str, Any], path: PathKey, skipped: list[str], model: type[BaseModel],
             depth: int = 0) -> str:
    """The message for one pydantic error at `path`; the model describes the value `depth` keys down."""
    kind = error["type"]
    where = ".".join(str(p) for p in path) or "the file"
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        parent = ".".join(map(str, path[:-1])) or "the file"
        return f"unknown key `{name}` in {parent}{did_you_mean(name, _known_keys(model, path[depth:-1]))}"
    if kind == "missing":
        return f"`{skipped[-1] if skipped else where}` is required in {where}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: expected a mapping of keys and values here, not `{error.get('input')}`"
    if kind == "literal_error" and isinstance(error.get("input"), str):
        options = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        hint = did_you_mean(error["input"], options)
        if hint:
            return f"{where}: unknown value `{error['input']}`{hint}"
    text = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {text}" if path else text


def _known_keys(model: type[BaseModel], path: PathKey) -> list[str]:
    """The keys a mapping at `path` may hold, found by walking the model's fields."""
    current: Any = model
    for part in path:
        current = _step(current, part)
        if current is None:
            return []
    fields = getattr(_inner_model(current), "model_fields", {})
    return [f.alias or n for n, f in fields.items()]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one step down: a model's field, a dict's value or a list's item (None if none)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields.items()
        return next((f.annotation for n, f in fields if (f.alias or n) == part), None)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        return args[1]  # `part` is a name the author chose (a state, a message, a locale)
    if origin is list:
        return args[0]
    members = args[:1] if origin is Annotated else args
    return next((found for arg in members if (found := _step(arg, part)) is not None), None)


def _inner_model(annotation: Any) -> Any:
    """The model inside `M | None`, `Annotated[M, ...]` and friends."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = get_args(annotation)[:1] if get_origin(annotation) is Annotated else get_args(annotation)
    return next((found for arg in members if (found := _inner_model(arg)) is not None), None)


# --- the workspace --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workspace:
    """Everything a workspace declares, by name, with where each name was written."""

    root: str
    journeys: dict[str, Journey]
    messages: dict[str, Message]
    metrics: dict[str, Metric]
    segments: dict[str, SegmentDef]
    subscriptions: dict[str, Subscription]
    policies: Policies
    templates: dict[str, str]
    documents: dict[str, Document]
    origins: dict[tuple[str, str], tuple[str, PathKey]]  # (kind, name) -> (file, path)
    warnings: list[Problem]
    unreadable: set[str] = field(default_factory=set)  # names declared in files that did not validate
    unparsed: list[str] = field(default_factory=list)  # files that are not valid YAML: their names are unknown

    def where(self, kind: str, name: str, *rest: str | int) -> tuple[Document, PathKey]:
        file, path = self.origins[(kind, name)]
        return self.documents[file], (*path, *rest)

    def problem(self, kind: str, name: str, rest: PathKey, message: str, severity: str = "error") -> Problem:
        doc, path = self.where(kind, name, *rest)
        return doc.problem(path, message, severity)


_KINDS = ("messages", "metrics", "segments", "subscriptions")
_UNIQUE = ("journeys", "messages", "metrics", "segments")  # share one namespace; subscriptions have their own


def workspace_files(root: Path) -> Iterator[Path]:
    """The YAML files of a workspace: every *.yaml / *.yml except scenarios/ and templates/."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in ("scenarios", "templates"):
            continue
        if path.suffix in (".yaml", ".yml") and path.is_file():
            yield path


def read_workspace(root: str | Path, *, keep_going: bool = False) -> Workspace:
    """Parse and validate every file, then gather names; raise WorkspaceError with all problems.

    With `keep_going`, a workspace is returned even when files have errors (they are in `warnings`,
    with severity "error", the names those files declare are in `unreadable`, and files that are not
    valid YAML are in `unparsed`), so the caller can lint the rest and report everything at once."""
    base = Path(root)
    if not base.is_dir():
        raise WorkspaceError([Problem(file=str(base), line=1, column=1,
                                      message="workspace folder not found: pass --workspace DIR")])
    problems: list[Problem] = []
    parsed: list[tuple[Document, WorkspaceFile]] = []
    documents: dict[str, Document] = {}
    unreadable: set[str] = set()
    unparsed: list[str] = []
    for path in workspace_files(base):
        name = str(path)
        doc = parse_yaml(path.read_text(encoding="utf-8"), name)
        documents[name] = doc
        problems.extend(doc.problems)
        if doc.problems:
            unparsed.append(name)
            continue
        if not isinstance(doc.data, dict):
            problems.append(doc.problem((), "a workspace file is a mapping starting with `version: 1`"))
            continue
        if "scenario" in doc.data and "journey" not in doc.data:  # a scenario kept outside scenarios/
            problems.append(doc.problem(("scenario",), "a scenario, not a workspace file: skipped here; run it "
                                        "with `journey simulate`", "warning"))
            continue
        try:
            parsed.append((doc, WorkspaceFile.model_validate(doc.data)))
        except ValidationError as exc:
            problems.extend(model_problems(doc, exc, WorkspaceFile))
            unreadable.update(_declared_names(doc.data))
    if not documents:
        problems.append(Problem(file=str(base), line=1, column=1, message="no *.yaml files in the workspace"))
    workspace = _gather(base, parsed, documents, problems)
    if any(p.severity == "error" for p in problems) and not keep_going:
        raise WorkspaceError(sorted(problems, key=lambda p: (p.file, p.line, p.column)))
    workspace.warnings.extend(problems)
    workspace.unreadable.update(unreadable)
    workspace.unparsed.extend(unparsed)
    return workspace


def _declared_names(data: dict[str, Any]) -> set[str]:
    """Names a file declares, read from its raw data (for a file that did not validate)."""
    names = {str(data["journey"])} if isinstance(data.get("journey"), str) else set()
    for kind in (*_KINDS, "states"):
        table = data.get(kind)
        if isinstance(table, dict):
            names.update(str(k) for k in table)
    return names


def _gather(base: Path, parsed: list[tuple[Document, WorkspaceFile]], documents: dict[str, Document],
            problems: list[Problem]) -> Workspace:
    tables: dict[str, dict[str, Any]] = {kind: {} for kind in (*_KINDS, "journeys")}
    origins: dict[tuple[str, str], tuple[str, PathKey]] = {}
    policies: Policies | None = None
    for doc, wf in parsed:
        for kind in _KINDS:
            for name, value in getattr(wf, kind).items():
                _declare(kind, name, value, doc, (kind, name), tables, origins, problems, documents)
        if wf.journey is not None:
            assert wf.entry is not None and wf.initial is not None
            journey = Journey(name=wf.journey, file=doc.file, description=wf.description, entry=wf.entry,
                              exit=wf.exit, goal=wf.goal, holdout=wf.holdout, initial=wf.initial,
                              states=wf.states, on_change=wf.on_change, moves=wf.moves)
            _declare("journeys", wf.journey, journey, doc, (), tables, origins, problems, documents)
        if wf.policies is not None:
            if policies is not None:
                problems.append(doc.problem(("policies",),
                                            "policies are declared twice: keep one `policies:`"))
            policies = wf.policies
            origins[("policies", "policies")] = (doc.file, ("policies",))
    templates = _read_templates(base, tables["messages"], origins, documents, problems)
    return Workspace(root=str(base), journeys=tables["journeys"], messages=tables["messages"],
                     metrics=tables["metrics"], segments=tables["segments"],
                     subscriptions=tables["subscriptions"], policies=policies or Policies(),
                     templates=templates, documents=documents, origins=origins, warnings=[])


def _declare(kind: str, name: str, value: Any, doc: Document, path: PathKey,
             tables: dict[str, dict[str, Any]], origins: dict[tuple[str, str], tuple[str, PathKey]],
             problems: list[Problem], documents: dict[str, Document]) -> None:
    """Names are unique across the workspace (messages, metrics, segments and journeys alike).

    A journey's origin is the file root (its keys are top-level); its name is written at `journey`.
    """
    rivals = ("subscriptions",) if kind == "subscriptions" else _UNIQUE
    for other_kind in rivals:
        if (other_kind, name) in origins:
            file, other_path = origins[(other_kind, name)]
            line = documents[file].where(other_path or ("journey",))[0]
            message = (f"`{name}` is already declared as a {other_kind[:-1]} in {file}:{line}; "
                       "names are unique across the workspace")
            problems.append(doc.problem(path or ("journey",), message))
            return
    tables[kind][name] = value
    origins[(kind, name)] = (doc.file, path)


def _read_templates(base: Path, messages: dict[str, Message],
                    origins: dict[tuple[str, str], tuple[str, PathKey]], documents: dict[str, Document],
                    problems: list[Problem]) -> dict[str, str]:
    templates: dict[str, str] = {}
    for name, message in messages.items():
        file, path = origins[("messages", name)]
        for rest, rel in _template_refs(message):
            if rel in templates:
                continue
            target = (base / rel).resolve()
            if not target.is_relative_to(base.resolve()) or not target.is_file():
                problems.append(documents[file].problem((*path, *rest),
                                f"template file `{rel}` not found under the workspace folder"))
                continue
            templates[rel] = target.read_text(encoding="utf-8")
    return templates


def _template_refs(message: Message) -> Iterator[tuple[PathKey, str]]:
    """Each template file a message names, with where it is named inside the message."""
    if message.template is not None:
        yield ("template",), message.template
    for locale, translation in message.translations.items():
        if translation.template is not None:
            yield ("translations", locale, "template"), translation.template
