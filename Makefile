# Two commands set everything up on a fresh clone: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install migrate run test lint format bench clean models

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/alembic upgrade head

# API and one worker on the embedded defaults (SQLite + SQLite broker), or on
# PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set.
run: migrate
	PATH="$(abspath $(BIN)):$$PATH" scripts/run-local.sh

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: migrate
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache

# Re-create the shipped bundles from ../shared (see README, "Model card").
SHARED_DIR ?= ../shared
models: install
	$(BIN)/tussis make-negatives --out var/negatives-train --per-kind 60 --seed 1
	$(BIN)/tussis train-cough-gate --coughs $(SHARED_DIR)/data/covid19-cough \
		--yamnet-model $(SHARED_DIR)/models/yamnet.tflite \
		--negatives var/negatives-train --out models/cough-gate --version 2026.11.23
	$(BIN)/tussis train --data $(SHARED_DIR)/data/covid19-cough --backbone yamnet \
		--yamnet-model $(SHARED_DIR)/models/yamnet.tflite \
		--out models/default --name tussis-yamnet-covid19 --version 2026.11.23 \
		--logdir var/tensorboard/default
