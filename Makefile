# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATABASE_URL ?= sqlite:///./twin.db
DEMO_DIR ?= demo_artifacts
DEMO_HOURS ?= 12
DEMO_EPOCHS ?= 20
DEMO_MAX_MINUTES ?= 4.5
PORT ?= 8000

export DATABASE_URL

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twin db upgrade
	$(BIN)/twin data generate --process cstr --hours $(DEMO_HOURS) --seed 1 --out $(DEMO_DIR)/cstr_train.parquet
	$(BIN)/twin train --process cstr --data $(DEMO_DIR)/cstr_train.parquet --epochs $(DEMO_EPOCHS) --max-minutes $(DEMO_MAX_MINUTES) --seed 0 --out $(DEMO_DIR)/cstr_twin.pt
	$(BIN)/twin control --process cstr --model $(DEMO_DIR)/cstr_twin.pt --planner casadi --seed 7
	$(BIN)/twin serve --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest

BENCH_PROCESSES ?= cstr turbofan tennessee_eastman glucose

bench: $(STAMP)
	for p in $(BENCH_PROCESSES); do $(BIN)/python benchmarks/control.py --process $$p || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) twin.db
