# Two commands on a fresh Debian machine (as root): `make demo` and `make test`.
# Each installs what it needs: Debian packages, a virtualenv, the Python packages.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEBS   := prosody sqlite3 openssl iproute2 prometheus-alertmanager systemd nats-server
DEMO_SECONDS ?= 30

.PHONY: demo test deps debs venv bench clean

demo: deps
	$(BIN)/xmppmon demo --duration $(DEMO_SECONDS)

test: deps
	$(BIN)/python -m pytest

bench: deps
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/all.py

deps: debs venv

# apt-get only when something is missing, so a ready machine starts at once.
debs:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
