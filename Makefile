# One command does the set-up: both targets install into .venv first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo test test-fast lint format bench clean submit browser gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cg-ray demo --out $(DEMO_DIR)

# Debian's chromium for tests/test_serve_page.py (driven by Playwright; no browser download).
browser:
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }

# One test at a time (about 33 min on 2 cores). In parallel, on 2 cores, the cluster tests fail:
# `-n 2 --dist loadfile` (two real clusters at once) timed out three of them; `-n 2 --dist
# loadgroup` with the four own-cluster files in one group, beside the session's Ray, timed out
# the autoscaler's scale-down; `-n 3` (load average 54) timed out Ray's node start-up.
# tests/conftest.py keeps each xdist worker apart (own Ray temp dir and S3 port), so test-fast
# runs in parallel: `make test-fast` is about 70 s.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# ruff (lint and format check, configured in pyproject.toml) and mypy on the typed core
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

# make submit JOB=train CONFIG=configs/demo.yaml RAY_ADDRESS=http://HEAD:8265 [ARGS="--set k=v ..."]
#   [RUNTIME_ENV=jobs/runtime_env.dev.yaml]: submits jobs/$(JOB).py, follows its logs, and exits
#   non-zero unless the job SUCCEEDED.
RUNTIME_ENV ?= jobs/runtime_env.yaml
submit: $(STAMP)
	@test -n "$(JOB)" -a -n "$(RAY_ADDRESS)" || { echo "usage: make submit JOB=train|tune|pack|scenes|text|evaluate|serve CONFIG=FILE RAY_ADDRESS=http://HEAD:8265 [ARGS=...]" >&2; exit 2; }
	$(BIN)/python jobs/submit.py $(JOB) --address $(RAY_ADDRESS) --runtime-env $(RUNTIME_ENV) -- $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/core_pipeline.py

# make gpu-check [CPU=1] [OUT=gpu_check.json]: every GPU path measured in one run (under 8 min on
#   a GPU; one line and exit 0 without one); CPU=1 runs the same steps at tiny sizes on the CPU.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(if $(CPU),--cpu) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(DEMO_DIR) runs mlflow.db mlartifacts
