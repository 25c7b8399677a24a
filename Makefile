# pdeinv — every target first makes sure the stack exists (tools/stack/ensure.sh: builds PETSc,
# petsc4py, Firedrake once into a cache outside the clone, links ./.venv, installs pdeinv editable).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help stack test test-serial test-parallel demo lint format docs clean distclean

PY      := .venv/bin/python
MPIEXEC ?= mpiexec
NPROCS  ?= 2
PYTEST_ARGS ?=

export OMP_NUM_THREADS := 1
# Open MPI refuses to start as root unless told to; set only for root.
ifeq ($(shell id -u),0)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
endif

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

stack:  ## build the stack if missing (cached), link .venv, install pdeinv editable
	@tools/stack/ensure.sh

test: stack  ## the whole test suite: serial, then 2 MPI ranks; fails if either fails
	@tools/run_tests.sh $(PYTEST_ARGS)

test-serial: stack  ## only the serial pass
	@tools/run_tests.sh --serial-only $(PYTEST_ARGS)

test-parallel: stack  ## only the 2-rank pass
	@tools/run_tests.sh --parallel-only $(PYTEST_ARGS)

demo: stack  ## run the main case (for now: the stack self-check on 1 and 2 ranks)
	@echo "[demo] The heat case does not exist yet; running the smallest real thing instead:"
	@echo "[demo] pdeinv selfcheck = Poisson convergence study + Taylor test of an adjoint gradient."
	@mkdir -p results/demo
	@.venv/bin/pdeinv selfcheck --json results/demo/selfcheck-1rank.json
	@$(MPIEXEC) -n $(NPROCS) .venv/bin/pdeinv selfcheck --json results/demo/selfcheck-$(NPROCS)ranks.json
	@echo "[demo] measurements written to results/demo/"

lint: stack  ## ruff
	@$(PY) -m ruff check pdeinv tests cases benchmarks

format: stack  ## ruff format + import sorting
	@$(PY) -m ruff check --select I --fix pdeinv tests cases benchmarks
	@$(PY) -m ruff format pdeinv tests cases benchmarks

clean:  ## remove project outputs (results, caches, build files); keeps the stack
	rm -rf results build dist .pytest_cache .ruff_cache pdeinv.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove the stack cache and the .venv link
	@tools/stack/ensure.sh --distclean
