# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATABASE_URL ?= sqlite:///./twin.db
DEMO_DIR ?= demo_artifacts
DEMO_HOURS ?= 6
DEMO_EPOCHS ?= 30
PORT ?= 8000

export DATABASE_URL

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twin db upgrade
	$(BIN)/twin data generate --process cstr --hours $(DEMO_HOURS) --seed 1 --out $(DEMO_DIR)/cstr_train.csv
	$(BIN)/twin train --process cstr --data $(DEMO_DIR)/cstr_train.csv --epochs $(DEMO_EPOCHS) --seed 0 --out $(DEMO_DIR)/cstr_twin.pt
	$(BIN)/twin control --process cstr --model $(DEMO_DIR)/cstr_twin.pt --planner casadi --seed 7
	$(BIN)/twin serve --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_DIR) twin.db
