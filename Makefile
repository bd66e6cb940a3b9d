# Two commands set everything up on a fresh clone: `make run` and `make test`.
# Every install comes from uv.lock, so a clone next month gets what CI tested.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# uv itself is pinned and kept in .tools/, so nothing is installed by hand.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: install lock lock-upgrade migrate run test test-faults lint format docs bench bench-inception clean models default-model inception-model model-selection

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# Bytecode is compiled at install, as in the Docker image: where the environment
# sets PYTHONDONTWRITEBYTECODE, every worker child would otherwise compile
# TensorFlow's sources again (about 8 s of each child's start).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode --python $(PYTHON) --extra train
	touch $(STAMP)

install: $(STAMP)

# Re-resolve after editing pyproject.toml (keeps current versions where they fit).
lock: $(UV)
	$(UV) lock --python $(PYTHON)

# Move every dependency to the newest version its range allows.
lock-upgrade: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

migrate: install
	$(BIN)/alembic upgrade head

# API and one worker on the embedded defaults (SQLite + SQLite broker), or on
# PostgreSQL/Redis when DATABASE_URL/REDIS_URL are set.
run: migrate
	PATH="$(abspath $(BIN)):$$PATH" scripts/run-local.sh

# The failure suite (tests/faults, marker "faults") kills and restarts real processes
# and takes several minutes: `make test-faults` runs it, `make test` everything else.
test: install
	UV="$(abspath $(UV))" $(BIN)/pytest -m "not faults" $(PYTEST_ARGS)

test-faults: install
	UV="$(abspath $(UV))" $(BIN)/pytest -m faults -s tests/faults $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: install
	$(BIN)/mkdocs build --strict

bench: migrate
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# Inception V3 to mixed8, fp32 against dynamic-range int8: trains both bundles into
# var/models once (about 5 min on 2 cores), then compares AUC and clips/s in one run.
INCEPTION_WEIGHTS ?= $(SHARED_DIR)/models/inception_v3_imagenet_to_mixed8.weights.h5
var/models/inception-mixed8-%: | install
	$(BIN)/tussis train --backbone inception_v3 --inception-layer mixed8 --precision $* \
		--inception-weights $(INCEPTION_WEIGHTS) --data $(SHARED_DIR)/data/covid19-cough \
		--out $@ --version 0.1.0 --cache var/feature-cache --no-progress

bench-inception: var/models/inception-mixed8-fp32 var/models/inception-mixed8-int8-dynamic
	$(BIN)/python scripts/bench_inception.py

clean:
	rm -rf var site .pytest_cache .ruff_cache .mypy_cache

# Re-create the shipped bundles from ../shared (see docs/model-card.md). The cough
# gate also learns from, and is measured on, real recordings that `tussis
# gate-data` gathers from public git repositories pinned in ml/gate_data.py (about
# 200 MB, never committed); GATE_MIRROR=DIR reads local OWNER+NAME/repo copies instead.
# The long recordings that choose (validation) and measure (test) the counting
# threshold are built from the same data (tussis make-long-recordings; 1.3 GB in
# var/long). PREVIOUS_GATE=DIR measures a gate being replaced beside the new one.
SHARED_DIR ?= ../shared
GATE_DATA ?= var/gate-data
GATE_MIRROR ?=
LONG_RECORDINGS ?= var/long
PREVIOUS_GATE ?=
LONG_OPTIONS = --coughs $(SHARED_DIR)/data/covid19-cough --labelled $(GATE_DATA) --count 8 --minutes 30
models: install
	$(BIN)/tussis gate-data --out $(GATE_DATA) $(if $(GATE_MIRROR),--mirror $(GATE_MIRROR))
	$(BIN)/tussis make-negatives --out var/negatives-train --per-kind 60 --seed 1
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/validation --split validation \
		--seed 1 $(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/test --split test --seed 2 \
		$(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/test-with-evaluation-only \
		--split test --seed 3 --with-evaluation-only $(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/validation-phone \
		--split validation --seed 4 --channel phone $(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/validation-wideband \
		--split validation --seed 5 --channel wideband $(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/test-phone --split test \
		--seed 6 --channel phone $(LONG_OPTIONS)
	$(BIN)/tussis make-long-recordings --out $(LONG_RECORDINGS)/test-wideband --split test \
		--seed 7 --channel wideband $(LONG_OPTIONS)
	$(BIN)/tussis train-cough-gate --coughs $(SHARED_DIR)/data/covid19-cough \
		--yamnet-model $(SHARED_DIR)/models/yamnet.tflite --labelled $(GATE_DATA) \
		--negatives var/negatives-train --out models/cough-gate --version 2026.12.07 \
		--counting-validation $(LONG_RECORDINGS)/validation \
		--counting-validation $(LONG_RECORDINGS)/validation-phone \
		--counting-validation $(LONG_RECORDINGS)/validation-wideband \
		--counting-test $(LONG_RECORDINGS)/test \
		--counting-test $(LONG_RECORDINGS)/test-with-evaluation-only \
		--counting-test $(LONG_RECORDINGS)/test-phone \
		--counting-test $(LONG_RECORDINGS)/test-wideband \
		$(if $(PREVIOUS_GATE),--previous $(PREVIOUS_GATE)) --cache var/feature-cache --no-progress
	$(MAKE) default-model
	$(MAKE) inception-model

# The diagnosis bundle alone, with the options model-selection chose (see
# docs/model-card.md#model-selection): cross-validated on within-source AUC, the
# test split only measured on. It does not need the cough gate's downloads.
DEFAULT_MODEL_OPTIONS := --features embedding_mean+embedding_max+embedding_std
default-model: install
	$(BIN)/tussis train --data $(SHARED_DIR)/data/covid19-cough --backbone yamnet \
		--yamnet-model $(SHARED_DIR)/models/yamnet.tflite $(DEFAULT_MODEL_OPTIONS) \
		--out models/default --name tussis-yamnet-covid19 --version 2026.12.03 \
		--cache var/feature-cache --no-progress

# The Inception V3 (mixed8) diagnosis bundle served beside the default, with the
# options model-selection found best for Inception that a bundle can express (the
# telephone band; it pools by the mean). Its manifest references the 43 MB backbone
# in ../shared by path and sha256 (never committed). About 10 min on 2 cores the
# first time (features cached in var/feature-cache).
INCEPTION_MODEL_OPTIONS := --telephone-band
inception-model: install
	$(BIN)/tussis train --data $(SHARED_DIR)/data/covid19-cough --backbone inception_v3 \
		--inception-layer mixed8 --precision fp32 --inception-weights $(INCEPTION_WEIGHTS) \
		$(INCEPTION_MODEL_OPTIONS) --out models/inception --name tussis-inception-covid19 \
		--version 2026.12.08 --cache var/feature-cache --no-progress

# Every option of issue 12 (preprocessing, pooling, features, per-source
# standardisation, YAMNet against Inception V3 to mixed8, the loudness baseline)
# cross-validated on the same folds: prints the model card's selection table and
# writes var/selection/*.json (features cached in var/feature-cache: about 25 min
# on 2 cores the first time, most of it Inception).
model-selection: install
	TUSSIS_SHARED_DIR=$(SHARED_DIR) $(BIN)/python scripts/model_selection.py extract
	TUSSIS_SHARED_DIR=$(SHARED_DIR) $(BIN)/python scripts/model_selection.py extract-inception --variants raw,tel
	TUSSIS_SHARED_DIR=$(SHARED_DIR) $(BIN)/python scripts/model_selection.py cv
