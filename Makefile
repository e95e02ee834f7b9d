# The README's commands. `make demo` and `make test` install into .venv/ first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system demo test lint typecheck bench clean native

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian packages some tests use: chromium (the dashboard test) and graphviz (svg graphs). Installed
# when missing and we are root (CI); otherwise those tests skip and say how to enable them.
system:
	@command -v chromium >/dev/null && command -v dot >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium graphviz >/dev/null) \
	    || echo "note: install chromium and graphviz for the browser and svg tests"; }

demo: $(STAMP)
	$(BIN)/journey demo

lint: $(STAMP)
	$(BIN)/ruff check journey_engine adapters tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: system lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/journey bench --store memory --users 100000 --events 1000000 --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Optional: the engine's hot modules compiled with mypyc into .venv/native (journey_engine/native.py),
# used only while they match the sources; 1.4-1.5x faster on `journey bench`.
native: $(STAMP)
	$(BIN)/python -c "from journey_engine import native; native.build(native.directory())"
