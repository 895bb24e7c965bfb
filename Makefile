# One command to run the demo shop, one to run the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install run test lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

install: $(PY)
	$(PIP) install -e '.[dev]'

# The demo shop on http://127.0.0.1:8000/ (PORT=8001 make run for another port), with its
# Celery worker and beat; SQLite and a filesystem broker under var/ unless configured otherwise.
run: install
	VENV=$(VENV) bash sandbox/run.sh

# Only load the demo data (idempotent), without starting anything.
.PHONY: demo
demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py sandbox_load_demo

# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-x -k checkout"`. The database is
# SQLite unless DATABASE_URL is set (e.g. postgres://postgres@127.0.0.1:5432/omnichannel).
PYTEST_ARGS ?=

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

# Benchmarks on PostgreSQL (DATABASE_URL picks the server; see bench/README.md).
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var build dist *.egg-info
