# Two commands (see README.md):  `make demo`  and  `make test`.
# Both create .venv on first use; `setup` installs Debian packages only when missing and when run as root.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEB_PACKAGES := mosquitto libgl1 libglib2.0-0 systemd

.PHONY: setup demo test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp is rebuilt whenever pyproject.toml changes, so `make test` after a pull reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing)"; fi; \
	fi
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/inspectd demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) var
