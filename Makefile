# Quick start (fresh Debian/Ubuntu):  make demo   |   make test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc bubblewrap rsync git vim
STAMP := $(VENV)/.setup-stamp

.PHONY: setup system-packages test demo serve bench bench-deps clean

# Idempotent: system packages only when missing, the venv only when pyproject.toml changed.
setup: system-packages $(STAMP)

system-packages:
	@bash scripts/setup-system.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml | system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: setup
	@bash scripts/run-tests.sh

demo: setup
	@$(PY) -m arkerfs demo

serve: setup
	@$(PY) -m arkerfs serve

# sshfs and a private sshd are the benchmark's baseline; only `make bench` installs them.
bench-deps:
	@bash scripts/setup-system.sh sshfs openssh-server openssh-client

bench: setup bench-deps
	@$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
