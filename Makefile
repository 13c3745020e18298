# luce-bench: `make run` sets up and runs the main job; `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch on machines without a GPU (this version is cached locally on our CI machines); GPU users get CUDA torch
TORCH_SPEC ?= torch==2.13.0
LLAMACPP_SPEC ?= llama-cpp-python==0.3.36
LLAMACPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=OFF
ARGS ?=

.PHONY: setup run test lint check-results test-gpu llamacpp-cuda kernel clean bench-sampler

setup: $(VENV)/.luce-bench-installed

$(VENV)/.luce-bench-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install -q "$(LLAMACPP_SPEC)" diskcache
	$(BIN)/python -m pip install -q -e ".[hf,llamacpp,dev]"
	touch $@

run: setup
	$(BIN)/luce-bench compare $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the committed results agree with their CSVs: summaries, reports, results/README.md and the README's block
check-results: setup
	$(BIN)/luce-bench report --check results/

test-gpu: setup
	LUCE_BENCH_READONLY=1 $(BIN)/python -m pytest -q -m gpu $(ARGS)

# CUDA build of llama-cpp-python for this GPU's arch only. Offline machines: SDIST=path/to/llama_cpp_python-*.tar.gz
# (see scripts/repack-llamacpp-sdist.sh); otherwise the sdist is downloaded from PyPI first.
SDIST ?=
llamacpp-cuda: setup
	@sdist="$(SDIST)"; if [ -z "$$sdist" ]; then \
		$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d build/sdist "$(LLAMACPP_SPEC)" && \
		sdist=$$(ls build/sdist/llama_cpp_python-*.tar.gz | head -1); fi; \
	$(BIN)/python -m pip install -q scikit-build-core cmake ninja; \
	PYTHON=$(BIN)/python bash scripts/build-llamacpp-cuda.sh "$$sdist" build/llamacpp-cuda

kernel: setup
	$(BIN)/luce-bench kernel build

clean:
	rm -rf $(VENV) build dist .pytest_cache

# experiment: the sampler's cost on tok/s (must stay < 1 %); on a GPU machine e.g. ARGS="--workload backend --backend hf"
bench-sampler: setup
	$(BIN)/python experiments/bench_sampler_overhead.py $(ARGS)
