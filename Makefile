# Developer entry points. `make test` is the README's (and CI's) test command.
SHELL := /bin/bash
PYTHON := .venv/bin/python
# The cached venv may be shared by several checkouts (its editable install points at whichever ran last):
# this checkout's own packages come first on the path, so every target runs the code it sits next to.
export PYTHONPATH := $(CURDIR)/api:$(CURDIR)/operator:$(CURDIR)/runtime:$(CURDIR)/devcluster

.PHONY: venv lock test unit lint format typecheck crds control-plane cluster-up cluster-down demo kind-up kind-e2e

venv:  ## the cached virtual environment (~/.cache/maas-operator/venv/<python + uv.lock hash>), linked as .venv
	@bash hack/ensure-venv.sh >/dev/null

lock:  ## re-resolve uv.lock after a dependency change in pyproject.toml (then `make venv` builds the new venv)
	@"$$(bash hack/ensure-uv.sh)" lock

control-plane:  ## build etcd, Kubernetes, kwok, helm and the real node's components from Go modules (cached)
	@bash hack/build-control-plane.sh

test: venv control-plane lint typecheck  ## everything CI runs: lint, types, unit, runtime and cluster tests
	$(PYTHON) -m pytest

unit: venv  ## the fast tests only (no cluster, no multi-process torch, no image installs)
	$(PYTHON) -m pytest -m "not cluster and not distributed and not packaging"

lint: venv
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: venv
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck: venv  ## mypy --strict on every package
	$(PYTHON) -m mypy api/maas_api operator/maas_operator runtime/maas_runtime devcluster/maas_devcluster

crds: venv  ## regenerate crds/maasjob.yaml from the API models (and the Helm chart's copy of it)
	$(PYTHON) -m maas_api.crd --output crds/maasjob.yaml
	cp crds/maasjob.yaml charts/maas-operator/crds/maasjob.yaml

cluster-up: venv control-plane  ## start the local control plane (REAL_NODE=1: and a real node); prints `export KUBECONFIG=...` last
	@$(PYTHON) -m maas_devcluster up $(if $(filter 1,$(REAL_NODE)),--real-node)

cluster-down: venv  ## stop the operator the demo started (if any), then the local control plane
	@PATH=$(CURDIR)/.venv/bin:$$PATH bash hack/local-operator.sh stop
	@$(PYTHON) -m maas_devcluster down

demo: venv control-plane  ## the README's demo: cluster + operator + a job to Ready (left running; make cluster-down)
	@bash hack/demo.sh

kind-up:  ## (needs Docker, kind, kubectl, helm; not run by CI) a kind cluster with both images and the chart
	@bash hack/kind-up.sh

kind-e2e:  ## (needs Docker; not run by CI) kind-up, then an example job applied and waited for until Succeeded
	@bash hack/kind-e2e.sh
