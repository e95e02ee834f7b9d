"""`journey demo` and `journey report` through the command line: what a marketer runs and reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.cli import app

EXAMPLES = Path(__file__).parent.parent / "journeys"
runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`journey demo` with 150 users for 3 days, run in a fresh working folder with its defaults."""
    folder = tmp_path_factory.mktemp("cli-demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("JOURNEY_DATABASE_URL", raising=False)
        result = runner.invoke(app, ["demo", "--users", "150", "--days", "3", "--workspace", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_demo_prints_the_report_and_writes_the_html(demo_run: tuple[Path, str]) -> None:
    """The demo prints the report, the bandits against a fixed choice and the holdout, and writes both
    its database and its HTML report into the working folder."""
    folder, output = demo_run
    assert "journey report" in output and "onboarding" in output and "funnel" in output
    assert "the bandit beats the fixed choice" in output or "the bandit does not beat" in output
    assert "loyalty:" in output and "held out" in output
    assert (folder / "journey-demo.db").exists()
    page = (folder / "journey-demo.html").read_text(encoding="utf-8")
    assert '<section id="demo">' in page and "Adaptive choice against a fixed one" in page
    assert "report written to journey-demo.html" in output


def test_report_reads_the_demo_database(demo_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo ends with the exact `journey report` command for its database; that command prints every
    journey and writes --html."""
    folder, output = demo_run
    monkeypatch.chdir(folder)
    command = f"journey report --database sqlite:///journey-demo.db --workspace {EXAMPLES}"
    assert f"report on this run again with: {command}" in output
    result = runner.invoke(app, [*command.split()[1:], "--html", "report.html"])
    assert result.exit_code == 0, result.output
    for journey in ("onboarding", "cart_abandonment", "reactivation", "winback", "loyalty"):
        assert journey in result.output
    assert "holdout lift" in result.output
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and 'id="journey-loyalty"' in page


def test_report_of_one_journey_and_of_an_unknown_one(demo_run: tuple[Path, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`journey report JOURNEY` shows that journey only; an unknown name exits 1 with a suggestion."""
    folder, _ = demo_run
    monkeypatch.chdir(folder)
    args = ["--database", "sqlite:///journey-demo.db", "--workspace", str(EXAMPLES)]
    one = runner.invoke(app, ["report", "winback", *args])
    assert one.exit_code == 0, one.output
    assert "winback" in one.output and "cart_abandonment" not in one.output
    unknown = runner.invoke(app, ["report", "winbak", *args])
    assert unknown.exit_code == 1
    assert "winback" in unknown.output


def test_serve_refuses_the_demo_database(demo_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's database holds simulated sends to made-up people: `journey serve` on it exits 1 and says
    why and what to do, before it listens or sends anything (SPEC §3 item 10)."""
    folder, _ = demo_run
    monkeypatch.chdir(folder)
    monkeypatch.delenv("JOURNEY_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["serve", "--workspace", str(EXAMPLES), "--database", "sqlite:///journey-demo.db",
                                 "--port", "1"])
    assert result.exit_code == 1
    assert "was written by `journey demo`" in result.output
    assert "--allow-simulated" in result.output


def test_the_demo_and_bench_mark_their_databases_as_simulated(tmp_path: Path) -> None:
    """A database written by `journey bench` is marked too; a fresh one is not."""
    from adapters.storage.sql import SqlStore
    fresh = SqlStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert fresh.simulated() is None
    fresh.close()
    result = runner.invoke(app, ["bench", "--store", "sqlite", "--users", "20", "--events", "50", "--json",
                                 "--database", f"sqlite:///{tmp_path / 'bench.db'}", "--workspace", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    bench = SqlStore(f"sqlite:///{tmp_path / 'bench.db'}")
    assert bench.simulated() == "journey bench"
    bench.close()
