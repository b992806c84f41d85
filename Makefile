# Every target goes through the `sftmerge` CLI inside .venv; `make setup` is implied.
PYTHON ?= python3
VENV ?= .venv
# torch goes in first so the resolver keeps it (here: the local CPU wheel).
TORCH ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.sftmerge-installed

.PHONY: setup test quickstart bench-merge clean eval

setup: $(STAMP)

$(STAMP): pyproject.toml _build/backend.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: setup
	$(BIN)/python -m pytest tests

# Main job until the end-to-end demo lands: tiny models built on the spot, merged by
# the stock mergekit-yaml with param_select (+ resample), report printed.
QUICK ?= runs/quickstart
quickstart: setup
	$(BIN)/sftmerge toy-models $(QUICK) --overwrite
	$(BIN)/mergekit-yaml $(QUICK)/recipes/select.yml $(QUICK)/merged/select-stock
	$(BIN)/sftmerge merge $(QUICK)/recipes/resample.yml $(QUICK)/merged/resample --overwrite
	$(BIN)/python -c "import json,sys; print(json.dumps(json.load(open('$(QUICK)/merged/resample/merge_report.json')), indent=1))"

BENCH_RUNS ?= 3
bench-merge: setup
	$(BIN)/sftmerge bench merge --runs $(BENCH_RUNS)

clean:
	rm -rf runs/quickstart .pytest_cache

# Evaluate every model of a training run (RUN/order-*/, RUN/merged/*/) on TASKS.
# Optional: LIMIT (first N examples per task), DATA_DIR (local data instead of the Hub),
# EVAL_FLAGS (e.g. --allow-code-execution --judge models/smollm2-135m-instruct --backend hf).
RUN ?= runs/demo
TASKS ?= arith,gsm8k
LIMIT ?=
OUT ?= results/$(notdir $(RUN))
DATA_DIR ?=
EVAL_FLAGS ?=
eval: setup
	$(BIN)/sftmerge eval --run $(RUN) --tasks $(TASKS) --out $(OUT) $(if $(LIMIT),--limit $(LIMIT)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(EVAL_FLAGS)
