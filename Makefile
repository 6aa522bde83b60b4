# kubestep — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv with kubestep and its development tools

include controlplane/controlplane.mk

.PHONY: test
test: $(STAMP) controlplane-binaries ## Run every test (unit, control plane, end to end)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(STAMP) ## Run the fast tests that need no control plane
	$(PY) -m pytest -m 'not controlplane' $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff, mypy and import-linter
	$(VENV)/bin/ruff check operator controlplane tests examples benchmarks
	$(VENV)/bin/ruff format --check operator controlplane tests examples benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: $(STAMP) ## Format and auto-fix the code
	$(VENV)/bin/ruff format operator controlplane tests examples benchmarks
	$(VENV)/bin/ruff check --fix operator controlplane tests examples benchmarks

.PHONY: crds
crds: $(STAMP) ## Generate crds/*.yaml (and the chart's copy) from the Pydantic models
	$(PY) -m kubestep.api.crdgen crds

.PHONY: docs
docs: $(STAMP) ## Regenerate the resource reference in README.md from the models
	$(PY) -m kubestep.api.reference README.md

.PHONY: images
images: $(STAMP) ## Build the runner and operator images from this tree (Docker if it answers, else buildah)
	PYTHONPATH=controlplane $(PY) -m kubecp.images --builder $(or $(BUILDER),auto) --tag $(or $(TAG),dev)

.PHONY: demo-local
demo-local: $(STAMP) ## Run the contacts example on this machine, no cluster
	@rm -rf examples/contacts/.demo
	cd examples/contacts && ../../$(VENV)/bin/kubestep run workflow.yaml --event event.yaml

.PHONY: demo
demo: $(STAMP) controlplane-binaries ## The contacts example as users install it (images, helm install, kubectl apply) on a local control plane
	PYTHONPATH=controlplane $(PY) examples/contacts/cluster_demo.py

.PHONY: bench
bench: $(STAMP) controlplane-binaries ## Benchmarks, printing figures
	PYTHONPATH=controlplane $(PY) -m benchmarks

.PHONY: clean
clean: ## Remove the virtual environment and local run state
	rm -rf $(VENV) .kubestep examples/contacts/.demo .pytest_cache .mypy_cache .ruff_cache
