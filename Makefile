# Quick start (fresh Debian/Ubuntu):  make demo   |   make test
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc bubblewrap rsync git vim systemd
STAMP := $(VENV)/.setup-stamp

.PHONY: setup system-packages mount-helper test demo serve bench bench-deps clean

# Idempotent: system packages only when missing, the venv only when pyproject.toml changed.
setup: system-packages $(STAMP) mount-helper

system-packages:
	@bash scripts/setup-system.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml | system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# mount(8) runs /sbin/mount.<type> for `mount -t fuse.arkerfs` and fstab lines: link ours there.
HELPER := /sbin/mount.fuse.arkerfs
mount-helper: $(STAMP)
	@target="$(abspath $(VENV))/bin/mount.fuse.arkerfs"; \
	if [ "$$(readlink $(HELPER))" != "$$target" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "setup: linking $(HELPER) -> $$target"; \
	  $$sudo ln -sfn "$$target" $(HELPER) || echo "setup: could not link $(HELPER): mount -t fuse.arkerfs will not work"; \
	fi

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
