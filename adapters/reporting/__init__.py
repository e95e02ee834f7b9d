"""`journey report`: the report's figures, built from the store's reads, shown as rich tables or one page.

  model.py      the report as plain data, and `build_report`, which reads it through the `Reads` port
  cohorts.py    segment sizes per day and weekly retention cohorts
  cells.py      the figures as text, shared by both renderings
  terminal.py   `render_terminal`: rich tables
  page.py       `render_html`: one self-contained HTML page with inline SVG (and the demo run, if given)
  versions.py   the versions table and the refusal of an unknown `--version`
"""

from adapters.reporting.model import Report, build_report
from adapters.reporting.page import render_html
from adapters.reporting.terminal import render_terminal

__all__ = ["Report", "build_report", "render_html", "render_terminal"]
