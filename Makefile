# tuneops: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export TUNEOPS_CACHE ?= $(HOME)/.cache/tuneops
PYTEST_ARGS ?=


.PHONY: help deps setup kube llamacpp vllm helm crd-schemas crds lint typecheck test test-unit test-integration test-workers test-serving test-e2e images release-dry-run demo bench clean

help:
	@echo "make demo   run the whole pipeline on this machine (control plane, operator, local node, tiny models)"
	@echo "make test   run every test (installs and builds what it needs on first run)"
	@echo "make demo CONTAINERS=1   the same, every Pod a container from the project's images (make images)"
	@echo "make setup | kube | llamacpp | vllm | helm | crds | images | lint | bench"

setup:            ## the project's Python environment (.venv): operator, workers, dev tools
	scripts/setup-venv.sh $(VENV)

kube: ## kube-apiserver + kube-controller-manager built from Debian's source package (cached)
	scripts/build-kube.sh

llamacpp: ## llama.cpp tools (converter, quantizer, server), built once and cached; linked into the venv
	scripts/build-llamacpp.sh $(VENV)

vllm: ## the CPU build of vLLM in its own environment (cached)
	scripts/setup-vllm.sh

helm: ## the helm binary used by the chart tests (cached)
	scripts/get-helm.sh

crd-schemas: ## published schemas of KEDA and Gateway API kinds the renderers are checked against (npm, cached)
	scripts/get-crd-schemas.sh

crds: setup
	$(BIN)/tuneops crds --output crds
	$(BIN)/tuneops argocd --output charts/tuneops/argocd

lint: setup
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	scripts/actionlint.sh

# Everything the tests need. Network-bound installs (venvs) run beside the compiles (API server, llama.cpp);
# the last line re-links llama.cpp's bindings into a venv that may have been created meanwhile (cached: instant).
deps:
	$(MAKE) --no-print-directory -j5 setup kube llamacpp vllm helm crd-schemas
	scripts/build-llamacpp.sh $(VENV)

# The images come after the tools: the gguf image copies the cached llama.cpp build instead of compiling it.
test: deps images lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup crd-schemas
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup kube helm
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-workers: setup llamacpp
	$(BIN)/pytest tests/workers $(PYTEST_ARGS)

test-serving: setup llamacpp vllm
	$(BIN)/pytest tests/serving $(PYTEST_ARGS)

test-e2e: setup kube llamacpp vllm
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

images: setup ## the project's container images, built with podman without a daemon (cached by content)
	scripts/build-images.sh

demo: setup $(if $(filter 1,$(CONTAINERS)),images)
	$(BIN)/tuneops demo $(if $(filter 1,$(CONTAINERS)),--containers)

release-dry-run: setup helm ## the release workflow's local steps: version check, chart package, CRD bundle
	$(BIN)/python scripts/release.py dry-run

bench: setup kube llamacpp vllm helm
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
