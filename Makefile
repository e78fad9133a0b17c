# Two commands (see README.md):  `make demo`  and  `make test`.
# Both create .venv on first use; `setup` installs Debian packages only when missing and when run as root.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Cameras (README, Industrial cameras): libaravis and its fake GigE camera, GStreamer's RTSP server for the RTSP
# tests, and what pip needs to build PyGObject (the genicam extra) against the system's GObject introspection.
DEB_PACKAGES := mosquitto libgl1 libglib2.0-0 systemd shellcheck \
	gir1.2-aravis-0.8 aravis-tools gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	libgirepository1.0-dev libcairo2-dev pkg-config gcc python3-dev

.PHONY: setup demo lint test test-pressure clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp is rebuilt whenever pyproject.toml or this file changes, so `make test` after a pull reinstalls.
# Extras: train (the offline side the tests exercise), dev (test tools), demo (amqtt: the demo's embedded broker,
# which tests/edge/test_demo.py runs), genicam (harvesters, genicam, PyGObject: the camera tests), the last one only
# where PyGObject can be built (GObject introspection headers present).
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/activate
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing)"; fi; \
	fi
	@if pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; then extras=train,dev,demo,genicam; \
	else extras=train,dev,demo; echo "warning: libgirepository1.0-dev/libcairo2-dev missing: no genicam extra (camera tests skip)"; fi; \
	$(BIN)/pip install -q -e ".[$$extras]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/inspectd demo

# Static checks first (a few seconds; mypy ~15 s without its cache): lint, import layers (pyproject.toml
# [tool.importlinter]), types. Through `python -m` so they also run from a venv that borrows another's packages.
lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-logo
	$(BIN)/python -m mypy

# A pytest killed by a signal (a C library aborting) leaves var/pytest-running: the last line says which test.
test: lint
	@rm -f var/pytest-running
	$(BIN)/python -m pytest -q || { rc=$$?; if [ -s var/pytest-running ]; then \
		echo "pytest died (exit $$rc) while running $$(cat var/pytest-running)"; fi; exit $$rc; }

# The suite while PRESSURE busy loops compete for the CPUs (default 8: what a loaded 2-core line PC or CI box looks
# like), to catch tests that synchronise by sleeping. The loops are stopped however pytest ends.
PRESSURE ?= 8
test-pressure: setup
	@pids=""; for i in $$(seq $(PRESSURE)); do sh -c 'while :; do :; done' & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	echo "$(PRESSURE) busy loops on $$(nproc) CPUs (pids$$pids)"; rm -f var/pytest-running; \
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) || { rc=$$?; if [ -s var/pytest-running ]; then \
		echo "pytest died (exit $$rc) while running $$(cat var/pytest-running)"; fi; exit $$rc; }

clean:
	rm -rf $(VENV) var
