"""`journey bench` from the command line: refusals a person can act on."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from adapters.cli import app

EXAMPLES = Path(__file__).parent.parent / "journeys"
runner = CliRunner()


def test_bench_on_an_unreachable_postgres_says_so_in_one_line() -> None:
    """--store postgres on a database nobody listens at: the store's one-line error and exit 1, no traceback."""
    url = "postgresql+psycopg://bench:secret@127.0.0.1:1/nothing"
    result = runner.invoke(app, ["bench", "--store", "postgres", "--database", url, "--workspace", str(EXAMPLES),
                                 "--users", "10", "--events", "10"])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.output and "secret" not in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
