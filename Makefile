# Two commands on a fresh Debian machine (as root): `make demo` and `make test`.
# Each installs what it needs: Debian packages, a virtualenv, the Python packages.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEBS   := prosody lua-dbi-sqlite3 ejabberd erlang-p1-sqlite3 sqlite3 openssl iproute2 prometheus-alertmanager systemd systemd-container debootstrap prometheus tmux chromium nats-server
DEMO_SECONDS ?= 30

.PHONY: demo test deps debs venv azurite bench clean install uninstall

demo: deps
	$(BIN)/xmppmon demo --duration $(DEMO_SECONDS)

# Two workers (pytest-xdist): most tests wait on servers and processes, and the soak's minutes overlap
# the rest. --dist loadgroup keeps tests that share a booted container on one worker.
test: deps
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

bench: deps
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/all.py

deps: debs venv azurite

# apt-get only when something is missing, so a ready machine starts at once.
debs:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Azurite (Microsoft's Azure Storage emulator, npm) for the export tests, in .lab/ of this checkout.
# 3.35 is the newest that runs on Debian 12's Node.js 18 (3.36 wants Node 21, 3.37 Node 22).
AZURITE_VERSION ?= 3.35.0
azurite: .lab/node_modules/.bin/azurite-blob

.lab/node_modules/.bin/azurite-blob:
	@command -v npm >/dev/null || { echo "installing Debian packages: nodejs npm"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	mkdir -p .lab && cd .lab && npm install --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The service on this host (README, "Run it as a service"): a virtualenv in PREFIX, BINDIR/xmppmon,
# the units, an /etc/xmppmon skeleton. DESTDIR stages it all elsewhere (for packaging).
PREFIX     ?= /opt/xmppmon
BINDIR     ?= /usr/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= /etc/systemd/system
INSTALL_ENV = PREFIX='$(PREFIX)' BINDIR='$(BINDIR)' SYSCONFDIR='$(SYSCONFDIR)' UNITDIR='$(UNITDIR)' \
              DESTDIR='$(DESTDIR)' PYTHON='$(PYTHON)'

install:
	@$(INSTALL_ENV) sh systemd/install.sh install '$(CURDIR)'

uninstall:
	@$(INSTALL_ENV) sh systemd/install.sh uninstall

clean:
	rm -rf $(VENV) .lab build *.egg-info .pytest_cache .hypothesis
