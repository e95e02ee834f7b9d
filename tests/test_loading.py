"""Loading a workspace: YAML to models, every mistake of every file reported at once as file:line:col."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from journey_engine.errors import WorkspaceError
from journey_engine.loading import Workspace, parse_yaml, read_workspace

JOURNEY = """\
version: 1
journey: onboarding
entry:
  on: Signed Up
initial: welcome
states:
  welcome:
    send: hello
    transitions:
      - after: 2d
        to: done
  done:
    final: true
"""

MESSAGES = """\
version: 1
messages:
  hello:
    channel: push
    body: Hi
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def problems(root: Path, files: dict[str, str]) -> list[str]:
    """The problems `read_workspace` raises, as `file:line:col: severity: message` relative to `root`."""
    with pytest.raises(WorkspaceError) as caught:
        read_workspace(write(root, files))
    return [str(p).replace(f"{root}/", "") for p in caught.value.problems]


def load(root: Path, files: dict[str, str]) -> Workspace:
    return read_workspace(write(root, files))


def test_a_good_workspace_loads(tmp_path: Path) -> None:
    """A journey and its messages in two files load into one workspace, each name remembering its file."""
    ws = load(tmp_path, {"onboarding.yaml": JOURNEY, "messages.yaml": MESSAGES})
    assert list(ws.journeys) == ["onboarding"]
    assert ws.messages["hello"].body == "Hi"
    assert ws.origins[("messages", "hello")] == (str(tmp_path / "messages.yaml"), ("messages", "hello"))


def test_yaml_syntax_error_is_reported_where_it_is(tmp_path: Path) -> None:
    """A YAML syntax error becomes a problem at the line and column the parser stopped at."""
    found = problems(tmp_path, {"bad.yaml": "version: 1\nmessages:\n  hello: [push, Hi\n  other: 1\n"})
    assert found == ["bad.yaml:4:8: error: YAML syntax: expected ',' or ']', but got ':'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("state: no", "no", id="no"),
        pytest.param("state: yes", "yes", id="yes"),
        pytest.param("state: on", "on", id="on"),
        pytest.param("state: off", "off", id="off"),
        pytest.param("state: true", True, id="true-is-still-a-boolean"),
    ],
)
def test_yaml_1_1_booleans_stay_strings(text: str, expected: object) -> None:
    """`on`, `off`, `yes`, `no` are names here, so only `true`/`false` are booleans."""
    assert parse_yaml(text, "f.yaml").data == {"state": expected}


def test_a_state_named_no_and_an_event_named_on_load(tmp_path: Path) -> None:
    """A state called `no` and an event called `on` are kept as those names in the journey."""
    journey = JOURNEY.replace("- after: 2d\n        to: done", "- on: on\n        to: no").replace(
        "  done:\n", "  no:\n")
    ws = load(tmp_path, {"j.yaml": journey, "m.yaml": MESSAGES})
    transition = ws.journeys["onboarding"].states["welcome"].transitions[0]
    assert (transition.on, transition.to) == ("on", "no")
    assert ws.journeys["onboarding"].states["no"].final is True


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    """A key written twice in one mapping is reported at the second one, naming the first line."""
    journey = JOURNEY + "  welcome:\n    final: true\n"
    found = problems(tmp_path, {"j.yaml": journey, "m.yaml": MESSAGES})
    assert found == ["j.yaml:14:3: error: duplicate key `welcome` (first written on line 7)"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("    transitions:", "    tranistions:",
                     "j.yaml:9:5: error: unknown key `tranistions` in states.welcome; "
                     "did you mean `transitions`?",
                     id="misspelled-transitions"),
        pytest.param("  done:\n    final: true", "  final:\n    fianl: true",
                     "j.yaml:13:5: error: unknown key `fianl` in states.final; did you mean `final`?",
                     id="state-named-like-a-field"),
        pytest.param("entry:\n  on: Signed Up", "entry:\n  on: Signed Up\n  reentry: {afer: 2d}",
                     "j.yaml:5:13: error: unknown key `afer` in entry.reentry; did you mean `after`?",
                     id="inside-a-union"),
        pytest.param("version: 1\n", "version: 1\njorney: x\n",
                     "j.yaml:2:1: error: unknown key `jorney` in the file; did you mean `journey`?",
                     id="top-level"),
    ],
)
def test_unknown_keys_suggest_the_known_one(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """An unknown key is reported where it is written, with the closest key that is allowed there."""
    found = problems(tmp_path, {"j.yaml": JOURNEY.replace(old, new), "m.yaml": MESSAGES})
    assert expected in found


def test_a_union_mistake_is_reported_once_not_per_member(tmp_path: Path) -> None:
    """`reentry: {afer: 2d}` says what the mapping lacks, not that it is not `never` or `always`."""
    journey = JOURNEY.replace("  on: Signed Up\n", "  on: Signed Up\n  reentry: {afer: 2d}\n")
    found = problems(tmp_path, {"j.yaml": journey, "m.yaml": MESSAGES})
    assert found == [
        "j.yaml:5:3: error: `after` is required in entry.reentry",
        "j.yaml:5:13: error: unknown key `afer` in entry.reentry; did you mean `after`?",
    ]


def test_mistakes_in_sibling_transitions_are_all_reported(tmp_path: Path) -> None:
    """An error deep in one transition does not hide an error in the next one."""
    timer = '      - at: "9:00"\n        to: done\n'
    journey = JOURNEY.replace("        to: done\n", "        to: done\n" + timer)
    journey = journey.replace("after: 2d", "after: 2x")
    found = problems(tmp_path, {"j.yaml": journey, "m.yaml": MESSAGES})
    assert [f.split(": error")[0] for f in found] == ["j.yaml:10:9", "j.yaml:12:9"]
    assert "`2x` is not a duration" in found[0]
    assert "`9:00` is not a time of day" in found[1]


def test_a_misspelled_choice_suggests_the_allowed_value(tmp_path: Path) -> None:
    """A value outside a fixed set of choices suggests the closest one."""
    found = problems(tmp_path, {"j.yaml": JOURNEY, "m.yaml": MESSAGES.replace("push", "psuh")})
    assert found == ["m.yaml:4:5: error: messages.hello.channel: unknown value `psuh`; did you mean `push`?"]


def test_a_bad_duration_names_the_accepted_forms(tmp_path: Path) -> None:
    """`after: 2x` is an error at that key, showing how durations are written."""
    found = problems(tmp_path, {"j.yaml": JOURNEY.replace("2d", "2x"), "m.yaml": MESSAGES})
    assert found == ["j.yaml:10:9: error: states.welcome.transitions.0.after: `2x` is not a duration: "
                     "write it like 30s, 5m, 4h, 2d, 1w, 1h30m or PT90M"]


def test_a_missing_version_is_an_error(tmp_path: Path) -> None:
    """Every file carries `version: 1`; a file without it is reported at its top."""
    found = problems(tmp_path, {"j.yaml": JOURNEY, "m.yaml": MESSAGES.removeprefix("version: 1\n")})
    assert found == ["m.yaml:1:1: error: `version` is required in the file"]


def test_journey_keys_without_a_journey_name(tmp_path: Path) -> None:
    """`entry`, `initial` and `states` without `journey:` ask for the journey's name."""
    found = problems(tmp_path, {"j.yaml": JOURNEY.replace("journey: onboarding\n", ""), "m.yaml": MESSAGES})
    assert found == ["j.yaml:1:1: error: entry, initial, states belong to a journey: "
                     "add `journey: <name>` at the top"]


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        pytest.param("version: 1\nsegments:\n  hello: \"true\"\n",
                     "n.yaml:3:3: error: `hello` is already declared as a message in m.yaml:3; "
                     "names are unique across the workspace", id="segment-named-like-a-message"),
        pytest.param("version: 1\nmessages:\n  hello: {channel: push, body: Hey}\n",
                     "n.yaml:3:3: error: `hello` is already declared as a message in m.yaml:3; "
                     "names are unique across the workspace", id="message-twice"),
        pytest.param(JOURNEY.replace("states:\n", "states:\n  x:\n    final: true\n"),
                     "n.yaml:2:1: error: `onboarding` is already declared as a journey in j.yaml:2; "
                     "names are unique across the workspace", id="journey-twice"),
    ],
)
def test_names_declared_twice_across_files(tmp_path: Path, second: str, expected: str) -> None:
    """A name declared in two files is reported at the second, naming where the first is."""
    assert expected in problems(tmp_path, {"j.yaml": JOURNEY, "m.yaml": MESSAGES, "n.yaml": second})


def test_a_subscription_declared_twice_is_an_error(tmp_path: Path) -> None:
    """Subscriptions have their own names, unique across the workspace like the others."""
    subs = "version: 1\nsubscriptions:\n  news: {channel: email}\n"
    found = problems(tmp_path, {"j.yaml": JOURNEY, "m.yaml": MESSAGES, "a.yaml": subs, "b.yaml": subs})
    assert found == [
        "b.yaml:3:3: error: `news` is already declared as a subscription in a.yaml:3; "
        "names are unique across the workspace"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param("  hello:\n    channel: push\n    template: templates/gone.html\n",
                     "m.yaml:5:5: error: template file `templates/gone.html` not found",
                     id="message-template"),
        pytest.param("  hello:\n    channel: push\n    body: Hi\n    translations:\n"
                     "      ko: {template: templates/ko.html}\n      de: {body: Hallo}\n",
                     "m.yaml:7:12: error: template file `templates/ko.html` not found",
                     id="translation-template"),
        pytest.param("  hello:\n    channel: push\n    template: ../outside.html\n",
                     "m.yaml:5:5: error: template file `../outside.html` not found",
                     id="outside-the-workspace"),
    ],
)
def test_a_missing_template_file_is_an_error(tmp_path: Path, message: str, expected: str) -> None:
    """A template file that does not exist under the workspace is reported at the key naming it."""
    (tmp_path / "outside.html").write_text("x", encoding="utf-8")
    root = tmp_path / "ws"
    found = problems(root, {"j.yaml": JOURNEY, "m.yaml": "version: 1\nmessages:\n" + message})
    assert found == [f"{expected} under the workspace folder"]


def test_templates_of_translations_are_read(tmp_path: Path) -> None:
    """Template files named by a message and by its translations are read once each."""
    message = ("version: 1\nmessages:\n  hello:\n    channel: push\n    template: templates/en.html\n"
               "    translations:\n      ko: {template: templates/ko.html}\n      de: {body: Hallo}\n")
    ws = load(tmp_path, {"j.yaml": JOURNEY, "m.yaml": message, "templates/en.html": "Hi",
                         "templates/ko.html": "안녕"})
    assert ws.templates == {"templates/en.html": "Hi", "templates/ko.html": "안녕"}


def test_every_mistake_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    """Two mistakes in two files come back together in one WorkspaceError, sorted by file and line."""
    files = {"j.yaml": JOURNEY.replace("2d", "2x"), "m.yaml": MESSAGES.replace("push", "pish")}
    found = problems(tmp_path, files)
    assert [f.split(": error")[0] for f in found] == ["j.yaml:10:9", "m.yaml:4:5"]


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A workspace file holds a mapping; a list at the top is reported with what to write instead."""
    found = problems(tmp_path, {"j.yaml": JOURNEY, "m.yaml": "- version: 1\n"})
    assert found == ["m.yaml:1:1: error: a workspace file is a mapping starting with `version: 1`"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(False, "workspace folder not found", id="no-folder"),
        pytest.param(True, "no *.yaml files in the workspace", id="empty-folder"),
    ],
)
def test_an_empty_or_missing_workspace(tmp_path: Path, make: bool, expected: str) -> None:
    """A workspace folder that is missing or holds no YAML files does not load."""
    root = tmp_path / "ws"
    if make:
        root.mkdir()
    with pytest.raises(WorkspaceError, match=re.escape(expected)):
        read_workspace(root)


def test_journey_problems_point_inside_the_journey_file(tmp_path: Path) -> None:
    """A journey's paths are relative to its file, so a state's problem points at the state's line."""
    ws = load(tmp_path, {"j.yaml": JOURNEY, "m.yaml": MESSAGES})
    problem = ws.problem("journeys", "onboarding", ("states", "done"), "look here")
    assert (problem.line, problem.column) == (12, 3)
    problem = ws.problem("journeys", "onboarding", ("journey",), "the name")
    assert (problem.line, problem.column) == (2, 1)


@pytest.mark.parametrize(
    ("translation", "expected"),
    [
        pytest.param("de: {subject: 'Hallo {{ traits.first_name ', body: Hallo}", "9:12: error: template: line 1, "
                     "column 7: expected '}}', found end of file", id="inline-subject"),
        pytest.param("de: {template: templates/de.html}", "9:12: error: template: line 1, column 11: expected "
                     "tag endif, found end of expression", id="template-file"),
    ],
)
def test_a_broken_translation_template_fails_the_load(tmp_path: Path, translation: str, expected: str) -> None:
    """Translations are checked like the base message: a broken German template is named at its key."""
    from journey_engine.compiler import load_workspace

    message = ("version: 1\nmessages:\n  hello:\n    channel: email\n    subject: Hi\n    body: Hi\n"
               f"    translations:\n      ko: {{subject: 안녕, body: 안녕}}\n      {translation}\n")
    write(tmp_path, {"j.yaml": JOURNEY, "m.yaml": message, "templates/de.html": "{% if x %}"})
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    assert [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems] == [f"m.yaml:{expected}"]
