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

.PHONY: install demo test test-fast lint format bench clean submit system-packages gpu-check docs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cg-ray demo --out $(DEMO_DIR)

# Debian's packages the tests use: chromium for tests/test_serve.py's page (driven by Playwright;
# no browser download) and haproxy, which `cg-ray serve` puts in front of its replicas when found.
SYSTEM_PACKAGES := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/sbin/haproxy),,haproxy)
system-packages:
	@test -z "$(strip $(SYSTEM_PACKAGES))" || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }

# Two pytest-xdist workers, whole files each: the files that start Ray clusters of their own
# (tests/conftest.py, OWN_CLUSTERS) one after another on one worker, the heaviest other files
# first on the other, the short ones on whichever is free. Two own clusters at once overload 2
# cores (Ray's node start-up and the autoscaler's scale-down time out), and the CPUs are busy
# 95 % of the time with two workers, so more workers only help on a bigger machine.
test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -n 2 --no-loadscope-reorder

# ruff (lint and format check, configured in pyproject.toml) and mypy on the typed core
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --no-loadscope-reorder

# make submit JOB=train CONFIG=configs/demo.yaml RAY_ADDRESS=http://HEAD:8265 [ARGS="--set k=v ..."]
#   [RUNTIME_ENV=jobs/runtime_env.dev.yaml] [RETRIES=N]: `cg-ray submit JOB` (see its --help):
#   submits the command as a Ray job, follows its logs, and exits non-zero unless the job
#   SUCCEEDED. RETRIES=N submits a lost job (its head, node or driver lost; not one that failed
#   on its own) again, up to N times, with --resume auto.
RUNTIME_ENV ?= jobs/runtime_env.yaml
submit: $(STAMP)
	@test -n "$(JOB)" -a -n "$(RAY_ADDRESS)" || { echo "usage: make submit JOB=train|tune|pack|scenes|text|evaluate|serve CONFIG=FILE RAY_ADDRESS=http://HEAD:8265 [ARGS=...] [RETRIES=N]" >&2; exit 2; }
	$(BIN)/python jobs/submit.py $(JOB) --address $(RAY_ADDRESS) --runtime-env $(RUNTIME_ENV) $(if $(RETRIES),--retries $(RETRIES)) -- $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

# make docs: the site in site/ (README.md as its home page, the guides and reference of docs/);
#   the reference pages are written from the code first; strict: a broken link or anchor or a page
#   left out of mkdocs.yml's nav fails. `.venv/bin/mkdocs serve` to browse it while writing.
docs: $(STAMP)
	$(BIN)/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# make bench [BENCH="frame_count stream_cost"] [BENCH_OUT=DIR]: the CPU benchmarks one after
#   another (tens of minutes on 2 cores: recipes alone trains 6 runs of 2-5 min), each one's log
#   and JSON figures in $(BENCH_OUT)/NAME.log and NAME.json, the machine and every result in
#   summary.json; the figures and the machines that gave them: docs/benchmarks.md. BENCH_GPU
#   need a GPU (make gpu-check). tests/test_docs.py: every benchmark script is in one of them.
BENCH_CPU := frame_count manifest_scale epoch_order stream_cost storage_faults core_pipeline cold_start train_overhead \
	tune_overhead serve predict scenes data_engine recipes
BENCH_GPU := gpu_check train_step
BENCH ?= $(BENCH_CPU)
BENCH_OUT ?= bench_results
bench: $(STAMP)
	@$(if $(filter data_engine,$(BENCH)),$(BIN)/python -c 'import cv2' 2>/dev/null || $(BIN)/pip install -q -e '.[bench]')
	$(BIN)/python benchmarks/run.py --out $(BENCH_OUT) $(BENCH)

# make gpu-check [CPU=1] [OUT=gpu_check.json]: every GPU path measured in one run (under 8 min on
#   a GPU; one line and exit 0 without one); CPU=1 runs the same steps at tiny sizes on the CPU.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(if $(CPU),--cpu) $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(DEMO_DIR) runs mlflow.db mlartifacts
