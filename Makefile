# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install packages lint format test chaos demo bench image clean

$(STAMP): pyproject.toml
	@scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

install: $(STAMP)

packages:
	@scripts/ensure-packages.sh haproxy chromium prometheus-alertmanager prometheus bind9 bind9-utils pdns-server pdns-backend-sqlite3

lint: install
	$(BIN)/ruff check orchestrator tests bench chaos
	$(BIN)/ruff format --check orchestrator tests bench chaos
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix orchestrator tests bench chaos
	$(BIN)/ruff format orchestrator tests bench chaos

test: install packages lint
	$(BIN)/pytest

chaos: install packages
	$(BIN)/pytest chaos -m chaos -p no:cacheprovider

demo: install
	@scripts/ensure-packages.sh --required haproxy
	$(BIN)/failover demo

bench: install
	@scripts/ensure-packages.sh --required haproxy
	$(BIN)/python bench/haproxy_failover.py
	$(BIN)/python bench/detector.py
	$(BIN)/python bench/nats_outage.py
	$(BIN)/python bench/election.py
	$(BIN)/python bench/prober.py
	$(BIN)/python bench/fleet.py --sizes 1000,5000 --modes healthy,partitioned

image:
	scripts/check-image.sh

clean:
	rm -rf $(VENV) .failover .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
