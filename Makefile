# The two commands of the README: `make run` serves, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make run HOST=0.0.0.0 PORT=9000: where `make run` listens.
HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: run test lint typecheck unit ledger-debian bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tokenledger serve --transport http --first-run --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers (the machines have 2 cores; most tests wait on PostgreSQL or a subprocess), each taking
# whole files: the README test runs its blocks in order in one module.
PYTEST := $(BIN)/pytest -n 2 --dist loadfile

unit: $(STAMP)
	$(PYTEST)

# Where a Debian PostgreSQL server is reachable (CI starts one), the ledger tests run on it too.
ledger-debian: $(STAMP)
	@if [ -n "$$TOKENLEDGER_TEST_DEBIAN_URL" ]; then \
	  echo "ledger tests again, on Debian's PostgreSQL server"; \
	  TOKENLEDGER_TEST_DATABASE_URL="$$TOKENLEDGER_TEST_DEBIAN_URL" $(PYTEST) -m ledger; \
	else echo "TOKENLEDGER_TEST_DEBIAN_URL unset: ledger tests ran on the embedded server only"; fi

test: lint typecheck unit ledger-debian

bench: $(STAMP)
	$(BIN)/python bench/counting.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/mcp_roundtrips.py
	$(BIN)/python bench/integrations.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
