# luce-bench: `make run` sets up and runs the main job; `make test` sets up and runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch on machines without a GPU (this version is cached locally on our CI machines); GPU users get CUDA torch
# from TORCH_INDEX/<cu tag for the driver> unless a torch that sees the GPU is already installed (system-wide too)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl
LLAMACPP_SPEC ?= llama-cpp-python==0.3.36
LLAMACPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=OFF
# Offline / air-gapped: a directory of pre-downloaded wheels and sdists; every pip call then uses only it
WHEELS ?=
# llamacpp-cuda: build from this sdist (else WHEELS' or PyPI's); CUDA_ARCH builds it (and make kernel) for another GPU (e.g. 90)
SDIST ?=
CUDA_ARCH ?=
ARGS ?=
JOBS ?= auto
SETUP_ARGS ?=
# The GPU / no-GPU decisions live in luce_bench/setup/ (stdlib only, run by $(PYTHON); tests/test_setup_*.py)
SETUP = $(PYTHON) -m luce_bench.setup --venv "$(VENV)" --wheels "$(WHEELS)" --torch-spec "$(TORCH_SPEC)" \
	--torch-index "$(TORCH_INDEX)" --llamacpp-spec "$(LLAMACPP_SPEC)" --llamacpp-cmake-args="$(LLAMACPP_CMAKE_ARGS)" \
	--sdist "$(SDIST)" $(SETUP_ARGS)

.PHONY: setup ready run test lint check-results test-gpu llamacpp-cuda kernel clean bench-sampler

# re-checks the machine and installs what is missing (after installing a driver or the CUDA toolkit, say)
setup:
	@$(SETUP)

# what run/test/lint need: the setup, unless nothing it depends on changed since the last one (then instant)
ready:
	@$(SETUP) --if-changed

run: ready
	$(BIN)/luce-bench compare $(ARGS)

# pytest with the suite's own plugins only: a venv that sees the system's site-packages (a GPU machine's torch) would
# load whatever plugins are installed there (pytest-benchmark warned once per worker on the H200). Another plugin
# needs its -p in ARGS (ARGS="-p pytest_cov --cov=luce_bench").
PYTEST = PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(BIN)/python -m pytest \
	$$($(BIN)/python -c "import _hypothesis_pytestplugin" 2>/dev/null && echo "-p _hypothesis_pytestplugin")

# the suite in parallel processes where cores and memory allow (pytest-xdist; tests/parallel.py keeps the GPU tests
# together on one worker and each module whole); JOBS=0: one process, JOBS=N: N workers
test: ready
	$(PYTEST) -q $$($(BIN)/python -c "import xdist" 2>/dev/null && echo "-p xdist.plugin -n $(JOBS)") $(ARGS)

lint: ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the committed results agree with their CSVs: summaries, reports, results/README.md and the README's block
check-results: ready
	$(BIN)/luce-bench report --check results/

test-gpu: ready
	LUCE_BENCH_READONLY=1 $(PYTEST) -q -m gpu $(ARGS)

# CUDA build of llama-cpp-python for this GPU's arch only (again, even if one is installed), from SDIST, a CUDA wheel
# or sdist in WHEELS, or PyPI's sdist (see scripts/build-llamacpp-cuda.sh and scripts/repack-llamacpp-sdist.sh)
llamacpp-cuda: ready
	@$(SETUP) --llamacpp-cuda --cuda-arch "$(CUDA_ARCH)"

kernel: ready
	$(BIN)/luce-bench kernel build $(if $(CUDA_ARCH),--arch $(CUDA_ARCH))

clean:
	rm -rf $(VENV) build dist .pytest_cache

# experiment: the sampler's cost on tok/s (must stay < 1 %); on a GPU machine e.g. ARGS="--workload backend --backend hf"
bench-sampler: ready
	$(BIN)/python experiments/bench_sampler_overhead.py $(ARGS)
