# wiretun: `make demo` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := iperf3 wireguard-go wireguard-tools iproute2 procps iputils-ping nftables gcc libssl-dev
STAMP := $(VENV)/.installed

.PHONY: all demo test lint typecheck unit bench sysdeps venv clean

all: test

# Debian packages: only touch apt when something is missing (offline reruns stay fast).
sysdeps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

NATIVE_SRC := src/wiretun/datapath/_native.c
NATIVE_STAMP := $(VENV)/.native

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

# The C data path: rebuilt in place when its source changes (needs gcc and libssl-dev; without
# them the install still works and wiretun runs its pure-Python path, but make test fails).
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c 'import wiretun.datapath._native'
	touch $(NATIVE_STAMP)

venv: $(STAMP) $(NATIVE_STAMP)

lint: sysdeps venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: sysdeps venv
	$(VENV)/bin/mypy

unit: sysdeps venv
	$(VENV)/bin/pytest -q

test: lint typecheck unit

demo: sysdeps venv
	$(VENV)/bin/wiretun demo

bench: sysdeps venv
	$(VENV)/bin/wiretun bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
