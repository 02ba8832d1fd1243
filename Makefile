# Everyday commands. `make run` brings the demo up; `make test` runs the suite; `make lint` checks the code.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ENV := DJANGO_DEBUG=$${DJANGO_DEBUG:-1} LOG_FORMAT=$${LOG_FORMAT:-plain}

.PHONY: install run port-free test lint migrate clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(DEMO_ENV) $(PY) manage.py migrate --noinput

# The demo: SQLite and the in-process backends; the scheduler runs the stages every few seconds.
run: port-free migrate
	$(DEMO_ENV) $(PY) manage.py ensure_demo --base-url http://$(HOST):$(PORT)
	@echo "Starting the scheduler and the server on http://$(HOST):$(PORT)/ (Ctrl-C stops both)"
	@bash -c 'trap "kill 0" EXIT; \
	  $(DEMO_ENV) SCHEDULER_INTERVAL_SECONDS=$${SCHEDULER_INTERVAL_SECONDS:-5} $(PY) manage.py run_scheduler & \
	  $(DEMO_ENV) $(PY) manage.py runserver --noreload $(HOST):$(PORT)'

# A taken port stops `make run` before it sets anything up, with a hint, rather than runserver's error at the
# end. Binds as runserver does (SO_REUSEADDR: a port a stopped server just left is free).
define PORT_CHECK
import errno, socket, sys
host, port = sys.argv[1].strip("[]"), int(sys.argv[2])
with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            sys.exit(f"port {port} is in use; try make run PORT={port + 1}")
        sys.exit(f"cannot listen on {host}:{port}: {e}")
endef
export PORT_CHECK

port-free:
	@$(PYTHON) -c "$$PORT_CHECK" $(HOST) $(PORT)

# The suite; set DATABASE_URL=postgres://... to run it on PostgreSQL (.ci/run does).
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff with the rules in ruff.toml (the version is pinned in requirements-dev.txt).
lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-* .demo-credentials.json .pytest_cache .ruff_cache

# Benchmarks of issue 7: measurement only, never part of `make test` (see docs/performance.md). They use
# PostgreSQL on 127.0.0.1:5432 (user postgres) and create their own databases, aps_bench and
# aps_bench_procrastinate. The peer of workload 4 (procrastinate, bench/requirements.txt) lives in a
# virtualenv of its own: it brings psycopg 3, which Django would pick over psycopg2 in .venv.
BENCH_PEER_VENV := bench/.venv-peer

$(BENCH_PEER_VENV)/.installed: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_PEER_VENV)
	$(BENCH_PEER_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

.PHONY: bench bench-large bench-reconcile bench-vendors
bench: install $(BENCH_PEER_VENV)/.installed
	$(PY) -m bench.run

# Reconciliation of 10,000 and 100,000 local accounts: time, and peak RSS side by side (about a minute).
bench-reconcile: install
	$(PY) -m bench.reconcile

# Provisioning against the WeLink and Exmail simulators at the vendors' documented limits, 10,000 persons
# each: calls per person and persons/s against the limit (WeLink ~1 minute; Exmail ~40 minutes, its
# 15,000 calls an hour bind). BENCH_VENDORS_ARGS="--exmail-persons 600" for a shorter Exmail sample.
bench-vendors: install
	$(PY) -m bench.vendors $(BENCH_VENDORS_ARGS)

bench-large: install $(BENCH_PEER_VENV)/.installed
	$(PY) -m bench.run --large
