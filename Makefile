# The README's commands. `make demo` and `make test` install into .venv/ first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the engine's hot modules compiled with mypyc (tools/build_native.py), rebuilt when the core
# changes; the package uses them only while they match its sources, and runs as Python otherwise
NATIVE := $(VENV)/native/manifest.json

.PHONY: install system demo test lint typecheck bench clean native kill-loop chaos reference soak mutants

install: $(NATIVE)

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

$(NATIVE): $(STAMP) $(wildcard journey_engine/*.py journey_engine/*/*.py) tools/build_native.py
	@echo "compiling the engine's hot modules (mypyc, about a minute)"
	@JOURNEY_NATIVE=0 $(BIN)/python tools/build_native.py $(VENV)/native \
	  || echo "note: the native build failed (see above); the engine runs as Python, slower"

native: $(NATIVE)

demo: $(NATIVE)
	$(BIN)/journey demo

lint: $(STAMP)
	$(BIN)/ruff check journey_engine adapters tests

typecheck: $(STAMP)
	$(BIN)/mypy

# the suite twice: compiled, as `make demo` runs, then pure Python, as a plain `pip install` runs
test: system lint typecheck $(NATIVE)
	$(BIN)/pytest
	JOURNEY_NATIVE=0 $(BIN)/pytest

# the CI kill loop's long variant: 150 SIGKILLs of journey serve during 10,000 emails to a real SMTP server
kill-loop: $(STAMP)
	JOURNEY_KILL_LOOP=long $(BIN)/pytest -s tests/test_kill_loop.py

# the bus under chaos at full size (50,000 events; CI runs 4,000): needs PostgreSQL and nats-server
chaos: $(STAMP)
	JOURNEY_BUS_CHAOS=long $(BIN)/pytest -s tests/test_bus_chaos.py

bench: $(NATIVE)
	$(BIN)/journey bench --store memory --users 100000 --events 1000000 --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# the engine against the reference model of the SPEC (tests/reference/), ~200 examples
reference: $(STAMP)
	JOURNEY_NATIVE=0 $(BIN)/pytest tests/reference

# the same for as long as asked: make soak SECONDS=1800
SECONDS ?= 1800
soak: $(STAMP)
	JOURNEY_NATIVE=0 JOURNEY_SOAK_SECONDS=$(SECONDS) $(BIN)/pytest -s -x tests/reference/test_differential.py

# each mutant of tools/mutants.py against the tests that should catch it; prints a table
mutants: $(STAMP)
	JOURNEY_NATIVE=0 $(BIN)/python tools/mutants.py
