# pdeinv — every target first makes sure the stack exists (tools/stack/ensure.sh: builds PETSc,
# petsc4py, Firedrake once into a cache outside the clone, links ./.venv, installs pdeinv editable).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help stack test test-serial test-parallel demo selfcheck lint format docs clean distclean

PY      := .venv/bin/python
MPIEXEC ?= mpiexec
# GPU=cuda: the CUDA variant of the stack (tools/stack/spec-cuda.sh; docs/gpu.md), e.g.
# `make stack GPU=cuda`, `make test GPU=cuda`.  ./.venv is on the stack of the last call.
GPU     ?= $(PDEINV_GPU)
export PDEINV_GPU := $(GPU)
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

stack:  ## build the stack if missing (cached), link .venv, install pdeinv editable (GPU=cuda: CUDA variant)
	@tools/stack/ensure.sh

test: stack  ## the whole test suite: serial, then 2 MPI ranks; fails if either fails
	@tools/run_tests.sh $(PYTEST_ARGS)

test-serial: stack  ## only the serial pass
	@tools/run_tests.sh --serial-only $(PYTEST_ARGS)

test-parallel: stack  ## only the 2-rank pass
	@tools/run_tests.sh --parallel-only $(PYTEST_ARGS)

demo: stack  ## run the main case: the heat inversion (truth, data, MAP, Laplace posterior) on 2 ranks
	@$(MPIEXEC) -n $(NPROCS) .venv/bin/pdeinv run cases/heat/config.toml --out results/demo-heat --overwrite
	@echo "[demo] outputs in results/demo-heat/: summary.json, fields.png, convergence.png, eigenvalues.png,"
	@echo "[demo] data_fit.png, ParaView files (*.pvd, observation_points.vtk), results.h5"

selfcheck: stack  ## check the stack: Poisson convergence + adjoint Taylor test on 1 and 2 ranks
	@.venv/bin/pdeinv selfcheck
	@$(MPIEXEC) -n $(NPROCS) .venv/bin/pdeinv selfcheck

lint: stack  ## ruff
	@$(PY) -m ruff check pdeinv tests cases benchmarks

format: stack  ## ruff format + import sorting
	@$(PY) -m ruff check --select I --fix pdeinv tests cases benchmarks
	@$(PY) -m ruff format pdeinv tests cases benchmarks

docs: stack  ## Sphinx HTML (pages + API reference from docstrings) into docs/_build/html
	@OMP_NUM_THREADS=1 $(PY) -m sphinx -q -b html docs docs/_build/html
	@echo "[docs] docs/_build/html/index.html"

clean:  ## remove project outputs (results, caches, build files); keeps the stack
	rm -rf results build dist .pytest_cache .ruff_cache pdeinv.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove the stack cache and the .venv link
	@tools/stack/ensure.sh --distclean
