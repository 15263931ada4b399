# Edgewise: two commands on a fresh machine.
#   make demo   build, fetch the default model, run it end to end
#   make test   every test, model tests included (optimised build)
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
BIN := $(or $(CARGO_TARGET_DIR),target)/release/edgewise
# Models and downloads live outside the clone so they survive fresh clones.
export EDGEWISE_HOME ?= $(HOME)/.local/share/edgewise
VENV := .venv
APT_PACKAGES := cmake clang libclang-dev mosquitto mosquitto-clients iproute2 tcpdump

.PHONY: all deps build components models venv demo test bench fmt clean

all: build

# Installs missing system packages with apt-get when we are root on Debian; otherwise says what is missing.
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v clang >/dev/null || missing="$$missing clang"; \
	ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing="$$missing libclang-dev"; \
	command -v mosquitto >/dev/null || missing="$$missing mosquitto mosquitto-clients"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v tcpdump >/dev/null || missing="$$missing tcpdump"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (install them, e.g. sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

build: deps
	$(CARGO) build --release --locked

# Guest components (components/, a workspace of their own) for wasm32-wasip2.
COMPONENTS_TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/components
COMPONENTS_DIR := $(COMPONENTS_TARGET)/wasm32-wasip2/release
export EDGEWISE_COMPONENTS := $(COMPONENTS_DIR)
components:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	$(CARGO) build --release --locked --target wasm32-wasip2 --manifest-path components/Cargo.toml --target-dir $(COMPONENTS_TARGET)

models: build
	$(BIN) pull qwen2.5-coder-0.5b-instruct
	$(BIN) pull all-minilm-l6-v2
	$(BIN) pull gemma-3-270m

# The official OpenAI client and jinja2, used by the e2e tests as reference peers; pyyaml reads
# eval/tools.yaml for bench/eval-llama-server.sh.
venv: $(VENV)/.ready
$(VENV)/.ready:
	$(PYTHON) -m venv $(VENV) || { apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check openai==1.* jinja2==3.* mcp==1.* pyyaml==6.*
	touch $@

demo: models components
	bash examples/demo.sh $(BIN)

test: models venv components
	EDGEWISE_TEST_PYTHON=$(CURDIR)/$(VENV)/bin/python $(CARGO) test --release --locked --workspace -- --test-threads=2

bench: models
	bash bench/llama-bench-compare.sh $(BIN)
	bash bench/vector-compare.sh $(BIN) --n 100000 --dim 384

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
