# longconn: every command a developer or CI needs. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TOOLS_DIR ?= $(CURDIR)/.tools
IMAGES_DIR ?= $(CURDIR)/.images

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.PHONY: test
test: lint fuzz tools images chart-test krew-test ## Run every test: formatting, lints, fuzzing, unit, integration and end-to-end tests (on real nodes).
	$(CARGO) build --workspace --bins --locked
	LONGCONN_E2E_REQUIRE_TOOLS=1 LONGCONN_E2E_TOOLS_DIR="$(TOOLS_DIR)" $(CARGO) test --workspace --locked

.PHONY: lint
lint: deny ## cargo fmt --check, clippy with warnings denied, cargo-deny.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: deny
deny: ## cargo-deny: licenses, bans, sources, and advisories where their database can be fetched.
	CARGO="$(CARGO)" bash scripts/deny.sh

.PHONY: unit
unit: ## Every crate's tests; the end-to-end ones skip (and say so) without `make tools`.
	$(CARGO) test --workspace --locked

.PHONY: fuzz
fuzz: ## Fuzz the gateway's frame scanner and HTTP head parser, FUZZ_SECONDS (30) each.
	LONGCONN_REQUIRE_FUZZ=1 bash gateway/fuzz/run.sh

.PHONY: chart-test
chart-test: tools ## Lint and render the Helm chart; check values, RBAC, CRD copy, dashboard, Dockerfiles; checkov.
	TOOLS_DIR="$(TOOLS_DIR)" CARGO="$(CARGO)" bash charts/test.sh

.PHONY: krew
krew: images ## Package kubectl-longconn for krew into .krew/: the archive and the plugin manifest longconn.yaml.
	IMAGES_DIR="$(IMAGES_DIR)" bash kubectl-longconn/krew/package.sh .krew

.PHONY: krew-test
krew-test: tools images ## Install kubectl-longconn with krew from its archive and manifest, and run it as kubectl longconn.
	TOOLS_DIR="$(TOOLS_DIR)" IMAGES_DIR="$(IMAGES_DIR)" bash kubectl-longconn/krew/test.sh

.PHONY: crd
crd: ## Regenerate crds/ from the Rust types.
	$(CARGO) run -q -p longconn-operator -- crd > crds/longconnservices.longconn.dev.yaml
	cp crds/longconnservices.longconn.dev.yaml charts/longconn-operator/crds/

.PHONY: demo
demo: ## Run the main job on the embedded local cluster.
	bash scripts/demo.sh

.PHONY: tools
tools: ## Build the control plane, kubelet, kube-proxy, containerd, kubectl, helm and metrics-server into .tools/.
	bash e2e/controlplane/build.sh "$(TOOLS_DIR)"

.PHONY: images
images: ## Build the operator, gateway, echo and pause images offline into .images/, as OCI archives.
	CARGO="$(CARGO)" bash images/build.sh "$(IMAGES_DIR)"

.PHONY: bench-rollout
bench-rollout: ## A 6-pod rolling update under live sessions: longconn against a plain Deployment.
	bash scripts/bench-rollout.sh

.PHONY: bench-operator
bench-operator: ## The operator's cost on the API server: COUNT (1000) LongConnServices against COUNT plain Deployments, no nodes.
	TOOLS_DIR="$(TOOLS_DIR)" CARGO="$(CARGO)" bash scripts/bench-operator.sh

.PHONY: bench-gateway
bench-gateway: ## Gateway against nginx and HAProxy: memory per idle session, throughput, latency, handshakes.
	bash gateway/bench/run.sh
