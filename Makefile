# broker-gateway: one entry point for people, CI and hooks.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PULSAR := local/pulsar
# make run's two local clusters, east and west, which the manifests in topics/ use.
EAST := PULSAR_CLUSTER=east
WEST := PULSAR_CLUSTER=west PULSAR_BROKER_PORT=6660 PULSAR_WEB_PORT=8090 PULSAR_BOOKIE_PORT=3191
export PULSAR_PYTHON := $(abspath $(BIN)/python)

.PHONY: help install pulsar-fetch pulsar-start pulsar-stop run test test-unit test-deploy test-faults images bench lint format clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its pinned dependencies

pulsar-fetch: ## Resolve the Pulsar jars from Maven Central (cached in ~/.m2)
	$(PULSAR) fetch

pulsar-start: $(STAMP) pulsar-fetch ## Start local Pulsar clusters east (6650/8080) and west (6660/8090)
	@$(EAST) $(PULSAR) start & east=$$!; $(WEST) $(PULSAR) start & west=$$!; \
	  wait $$east && wait $$west

pulsar-stop: ## Stop the local Pulsar clusters
	@$(EAST) $(PULSAR) stop & $(WEST) $(PULSAR) stop & wait

# make run signs development tokens with a secret of its own, made once, kept out of git.
DEV_SECRET := local/data/gateway-dev-secret

$(DEV_SECRET): $(STAMP)
	@mkdir -p $(@D)
	@$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' > $@

run: pulsar-start $(DEV_SECRET) ## Start Pulsar, apply topics/, serve on 127.0.0.1:8000 with a dev token (Ctrl-C stops all)
	@trap '$(MAKE) --no-print-directory pulsar-stop' EXIT; \
	export GATEWAY_AUTH_HS256_SECRET=$$(cat $(DEV_SECRET)); \
	$(BIN)/broker-gateway apply topics || echo "  (topics/ was not applied: see above)"; \
	token=$$($(BIN)/broker-gateway token --principal developer --scope publish,consume,admin --expires-in 7d); \
	echo; \
	echo "  broker-gateway on http://127.0.0.1:8000  (API docs: http://127.0.0.1:8000/docs)"; \
	echo "  development token (every tenant and scope, valid 7 days):"; \
	echo; \
	echo "    export TOKEN=$$token"; \
	echo; \
	echo "  try:"; \
	echo "    curl -s -XPOST localhost:8000/v1/topics/acme/orders/shipped/messages -H \"authorization: Bearer \$$TOKEN\" \\"; \
	echo "         -H 'content-type: application/json' -d '{\"messages\": [{\"value\": {\"order_id\": \"o-1\"}}]}'"; \
	echo "    curl -s 'localhost:8000/v1/topics/acme/orders/shipped/messages?position=earliest' -H \"authorization: Bearer \$$TOKEN\""; \
	echo "    $(BIN)/broker-gateway plan topics     # after editing a manifest"; \
	echo; \
	$(BIN)/broker-gateway serve

# The browser tests/browser.py drives (over --remote-debugging-pipe), from Debian's packages.
CHROMIUM := /usr/bin/chromium-headless-shell

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell

test: $(STAMP) pulsar-fetch $(CHROMIUM) ## Run the unit and integration tests; the suite starts (and stops) its own Pulsar
	$(BIN)/pytest

test-unit: $(STAMP) $(CHROMIUM) ## Run the tests that need no broker
	$(BIN)/pytest tests/unit

HELM := .tools/bin/helm
DEPLOY_STAMP := $(VENV)/.deploy-installed

$(HELM):
	GOBIN=$(abspath $(@D)) go install helm.sh/helm/v3/cmd/helm@v3.19.0

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[deploy]'
	touch $@

images: pulsar-fetch ## Build the gateway image and a Pulsar image from local/'s jars (Docker engine started if needed)
	docker/images all

test-deploy: $(DEPLOY_STAMP) $(HELM) pulsar-fetch ## Test the image, two containers as replicas, docker/compose.yaml and the Helm chart
	$(BIN)/pytest tests/deploy

LOADGEN := bench/loadgen/loadgen
BENCH_STAMP := $(VENV)/.bench-installed

$(LOADGEN): bench/loadgen/go.mod bench/loadgen/go.sum $(wildcard bench/loadgen/*.go)
	cd bench/loadgen && go build -o loadgen .

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP) pulsar-fetch $(LOADGEN) ## Side-by-side benchmarks (native, gateway, Pulsar WebSocket and REST) on local east
	@$(EAST) $(PULSAR) start
	$(BIN)/python bench/run.py $(BENCH_ARGS)

TOXIPROXY := .tools/bin/toxiproxy-server

$(TOXIPROXY):
	@mkdir -p $(@D)
	GOBIN=$(abspath .tools/toxiproxy) go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0
	mv .tools/toxiproxy/server $@

test-faults: $(STAMP) pulsar-fetch $(TOXIPROXY) $(LOADGEN) ## Kill the broker, stop replicas, break the network, overload; check the whole history
	$(BIN)/pytest tests/faults

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check broker_gateway tests bench
	$(BIN)/ruff format --check broker_gateway tests bench
	$(BIN)/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix broker_gateway tests bench
	$(BIN)/ruff format broker_gateway tests bench

clean: pulsar-stop ## Remove the venv and local Pulsar data (jars stay cached)
	rm -rf $(VENV) local/data .tools .mypy_cache .ruff_cache .pytest_cache
