# kd-pipeline: every task a user or developer runs. `make help` lists them.
# README's quickstart and .ci/run use exactly these targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIPELINE_ROOT ?= runs
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup system-deps engine demo test test-fast lint typecheck compile image \
        image-offline run-local inspect bench clean

help:  ## list the tasks
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python: requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(BIN)/python

setup: $(BIN)/python  ## create .venv from the pinned requirements (idempotent)

system-deps:  ## install Docker engine, debootstrap and Chromium with apt (root), start dockerd
	bash tools/install_system_deps.sh

engine:  ## start the Docker engine (installs docker.io with apt if missing; root)
	bash docker/install_engine.sh

demo: setup engine  ## THE MAIN JOB: the whole pipeline locally in Docker on the shipped sample (offline)
	$(BIN)/python -m local_runner run --build offline --pipeline-root $(PIPELINE_ROOT) $(ARGS)

run-local: setup  ## the pipeline locally without Docker (kfp.local SubprocessRunner)
	$(BIN)/python -m local_runner run --runner subprocess --pipeline-root $(PIPELINE_ROOT) $(ARGS)

inspect: setup  ## list local runs (ARGS="RUN" for one run, ARGS="--json" for scripts)
	$(BIN)/python -m local_runner inspect --pipeline-root $(PIPELINE_ROOT) $(ARGS)

compile: setup  ## compile the pipeline to pipeline.yaml (ARGS="--target vertex --gpus 1 --accelerator L4")
	$(BIN)/python pipeline.py compile --output pipeline.yaml $(ARGS)

image: setup  ## build the image from the public base (needs a registry)
	bash docker/build.sh $(ARGS)

image-offline: setup engine  ## build the image with no registry (local base + wheelhouse)
	bash docker/build.sh --offline $(ARGS)

lint: setup  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup  ## mypy on the library and the CLIs
	$(BIN)/mypy

test: setup system-deps  ## THE TEST COMMAND: lint, types, then every test (Docker end-to-end included)
	$(MAKE) lint typecheck
	$(BIN)/pytest -q --durations=25 $(ARGS)

test-fast: setup  ## unit tests only (no Docker, no slow tests)
	$(BIN)/pytest -q -m "not docker and not slow" $(ARGS)

bench: setup  ## CPU benchmarks (see bench/README.md; ARGS passes options)
	$(BIN)/python -m bench.cpu_speed $(ARGS)

clean:  ## remove local runs and caches (keeps .venv)
	rm -rf $(PIPELINE_ROOT) .pytest_cache .mypy_cache .ruff_cache pipeline.yaml
