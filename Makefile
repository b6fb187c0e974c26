# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATABASE_URL ?= sqlite:///./twin.db
DEMO_DIR ?= demo_artifacts
DEMO_HOURS ?= 12
DEMO_EPOCHS ?= 10
DEMO_MAX_MINUTES ?= 5
# The demo drives a twin shipped with the repository (demo/README.md: how it was trained,
# by `twin train` on the very log the demo generates); DEMO_TRAIN=1 trains a fresh one,
# under DEMO_MAX_MINUTES, and says so plainly if the budget cuts it short.
DEMO_TRAIN ?= 0
SHIPPED_TWIN := demo/cstr_twin.pt
ifeq ($(DEMO_TRAIN),1)
DEMO_TWIN := $(DEMO_DIR)/cstr_twin.pt
else
DEMO_TWIN := $(SHIPPED_TWIN)
endif
PORT ?= 8000

export DATABASE_URL

.PHONY: install demo test lint bench clean secrets

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twin db upgrade
	$(BIN)/twin data generate --process cstr --hours $(DEMO_HOURS) --seed 1 --out $(DEMO_DIR)/cstr_train.parquet
ifeq ($(DEMO_TRAIN),1)
# one torch thread: on a busy 2-core machine two threads fight and train slower
	OMP_NUM_THREADS=1 $(BIN)/twin train --process cstr --data $(DEMO_DIR)/cstr_train.parquet --epochs $(DEMO_EPOCHS) --max-minutes $(DEMO_MAX_MINUTES) --seed 0 --out $(DEMO_TWIN)
else
	@echo "demo: using the shipped twin $(SHIPPED_TWIN), trained by 'twin train' on this same log (see demo/README.md; DEMO_TRAIN=1 trains a fresh one)"
	$(BIN)/twin register --model $(SHIPPED_TWIN) --data $(DEMO_DIR)/cstr_train.parquet
endif
	$(BIN)/twin control --controller baseline --process cstr --seed 7
	$(BIN)/twin control --process cstr --model $(DEMO_TWIN) --planner casadi --seed 7
	$(BIN)/twin serve --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest

BENCH_PROCESSES ?= cstr turbofan tennessee_eastman glucose

bench: $(STAMP)
	for p in $(BENCH_PROCESSES); do $(BIN)/python benchmarks/control.py --process $$p || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Random secrets for docker-compose.yml, written once, never committed (secrets/.gitignore).
secrets: secrets/db_password.txt secrets/session_secret.txt

secrets/%.txt:
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@

clean:
	rm -rf $(VENV) $(DEMO_DIR) twin.db
