# The two commands a newcomer types: `make run` and `make test`.
# Each one installs what is missing first (see scripts/setup.sh).
# The local stack itself (Redis, Dapr placement and scheduler) is started and
# stopped by tools/stack/commands.py; nothing here starts processes on its own.

PYTHON ?= python3
VENV_PY := .venv/bin/python
STACK := $(VENV_PY) -m tools.stack
export PYTHON
# make run/serve LLM=local: SmolLM2-135M on this machine (docs/local-model.md); LLM=echo: Dapr's echo.
# Left out: OPENAI_BASE_URL, then OPENAI_API_KEY, then echo (tools/stack/llm.py).
LLM_FLAG := $(if $(LLM),--llm $(LLM))
LOCAL_MODEL_SETUP := if [ "$(LLM)" = local ]; then bash scripts/install-local-model.sh; fi

.DEFAULT_GOAL := help
.PHONY: help setup doctor run serve serve-ha test bench images up stop status env workflows history purge dashboard crash-demo approval-demo approve team-demo kube-up kube-dapr kube-load kube-shell kube-down switch-offs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## install the virtualenv, Redis and the pinned Dapr runtime and CLI (once)
	@bash scripts/setup.sh

doctor: ## check this machine: tools, versions, ports, resources, LLM choice; one line per check with its fix
	@$(PYTHON) -m tools.doctor

run: setup ## one-shot: start the stack, run durable_agent_minimal.py through `dapr run`, stop everything (LLM=local: a real model here)
	@$(LOCAL_MODEL_SETUP)
	@$(VENV_PY) -m tools.doctor --quick --failures-only
	@$(STACK) run $(LLM_FLAG)

serve: setup ## the service on :8001 with the whole stack, in the foreground; Ctrl+C stops it all (TDA_SECURE=1: secure mode; LLM=local)
	@$(LOCAL_MODEL_SETUP)
	@$(STACK) serve $(LLM_FLAG)

serve-ha: setup ## the service as 3 replicas with 3 placement and 3 scheduler nodes on 127.0.0.2-4; Ctrl+C stops it all [APP=refund-agent]
	@$(VENV_PY) -m tools.ha serve $(if $(APP),--app "$(APP)")

test: setup ## lint (ruff), then the end-to-end test suite against a real local Dapr stack
	@bash scripts/install-browser.sh      # Debian's Chromium, for the dashboard tests
	@bash scripts/install-kube-check.sh   # kube-apiserver, etcd, helm: the Kubernetes manifests' check (once)
	@bash scripts/install-kube-image.sh   # buildah, podman, a base image, wheels: the service's container image (once)
	@bash scripts/install-kube-node.sh    # kubelet, controller-manager, scheduler, kubectl; containerd: the node (once)
	@bash scripts/install-kube-dapr.sh    # Dapr's operator, injector, sentry, placement, scheduler, daprd: its images (once)
	@bash scripts/install-local-model.sh  # Ollama and SmolLM2-135M: tests/test_local_model.py (once)
	@.venv/bin/ruff check .
	@$(VENV_PY) -m tools.proof.suite   # the test modules in groups side by side (tools/proof/suite.py)

bench: setup ## what durability costs: latency, throughput of both doors, cost per run (table, bench/results/, images/bench.png; LLM=local: also a real model)
	@$(LOCAL_MODEL_SETUP)
	@$(VENV_PY) -m tools.bench $(if $(filter local,$(LLM)),--local-model)

images: setup ## regenerate the pictures in images/ from the real thing (architecture, bench, Zipkin, history, the dashboard)
	@bash scripts/install-image-tools.sh
	@bash scripts/render-architecture.sh
	@$(VENV_PY) -m tools.bench
	@$(VENV_PY) -m tools.runs.screenshots

up: setup ## start Redis, placement and scheduler in the background (for your own `dapr run`)
	@$(STACK) up

stop: ## stop everything the stack started (also what a crashed run left behind)
	@if [ -x $(VENV_PY) ]; then $(STACK) down; fi

status: ## what is running and where its logs are
	@$(STACK) status

env: ## print the exports that put our `dapr` on your PATH: eval "$(make -s env)"
	@$(STACK) env

workflows: ## list the running service's workflow runs [APP=<app id>, e.g. APP=team-poet]
	@$(VENV_PY) -m tools.runs.workflows $(if $(APP),--app-id "$(APP)") list

history: ## one run's history: make history ID=<instance id> [APP=durable-agent-minimal]
	@test -n "$(ID)" || { echo "usage: make history ID=<instance id>  (ids: make workflows)"; exit 2; }
	@$(VENV_PY) -m tools.runs.workflows $(if $(APP),--app-id "$(APP)") history "$(ID)"

dashboard: ## the runs in your browser at http://localhost:8080 while the service runs [APP=<app id>]; Ctrl+C stops it
	@$(VENV_PY) -m tools.runs.dashboard $(if $(APP),--app-id "$(APP)")

crash-demo: setup ## watch a run survive a SIGKILL of its app mid LLM call (offline, under a minute)
	@$(VENV_PY) -m tools.runs.crash_demo

approval-demo: setup ## watch a refund wait for a human through a SIGKILL of app and sidecar, then run once (offline)
	@$(VENV_PY) -m tools.runs.approval_demo

team-demo: setup ## the assistant finds the Poet (examples/team) in the registry and delegates; SIGKILL of the Poet mid run (offline)
	@$(VENV_PY) -m tools.runs.team_demo

approve: ## answer a run of examples/approval waiting for a human: make approve ID=<instance> [DENY=1]; no ID: list them
	@$(VENV_PY) -m tools.runs.approvals $(ID) $(if $(DENY),--deny)

kube-up: setup ## a real one-machine Kubernetes node in a network namespace of its own (builds its parts once; docs/kubernetes.md)
	@bash scripts/install-kube-check.sh
	@bash scripts/install-kube-node.sh
	@bash scripts/install-kube-image.sh
	@$(VENV_PY) -m tools.kube.node up

kube-dapr: setup ## Dapr's control plane on the node of make kube-up, by its Helm chart, images built here (NO_HA=1: one replica each)
	@bash scripts/install-kube-check.sh
	@bash scripts/install-kube-dapr.sh
	@$(VENV_PY) -m tools.kube.dapr install $(if $(NO_HA),--no-ha)

kube-load: setup ## the images the manifests name (the service's, the demo Redis's and Zipkin's, made here) and the Redis volume, onto the node
	@bash scripts/install-kube-image.sh
	@bash scripts/install-zipkin.sh
	@$(VENV_PY) -m tools.kube.app load

kube-shell: ## a shell in the node's network namespace, kubectl on its PATH: docs/kubernetes.md's commands run there
	@$(VENV_PY) -m tools.kube.app shell

kube-down: ## stop the node of make kube-up, its pods and its network namespace
	@$(VENV_PY) -m tools.kube.node down

switch-offs: setup ## switch each claim off in a throw-away copy; its test must fail (long) [ONLY="test_a test_b": those rows]
	@$(VENV_PY) -m tools.proof.switch_offs $(if $(ONLY),--only $(ONLY) --merge)

purge: ## remove one run, and only that one (a run stuck on bad input, say): make purge ID=<instance id>
	@test -n "$(ID)" || { echo "usage: make purge ID=<instance id>  (ids: make workflows)"; exit 2; }
	@$(VENV_PY) -m tools.runs.workflows $(if $(APP),--app-id "$(APP)") purge "$(ID)"

clean: stop ## stop the stack and delete its logs and data (.stack/)
	rm -rf .stack
