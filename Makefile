# songbook: `make run` serves the API on SQLite, `make test` runs every check.
# Needs only Python 3.11+ and make: uv is installed into .tools/ when it is missing.

UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
RUN := cd backend && $(UV) run --locked
# Installed packages compiled to bytecode once, as the image does: where nothing may write it at run
# time (PYTHONDONTWRITEBYTECODE, a read-only install), each start would compile them again (the
# app's import took 3.1 s instead of 2.0 on a loaded machine).
export UV_COMPILE_BYTECODE := 1

.PHONY: run key test lint typecheck pytest screenshots sync check-docker bench bench-telemetry bench-cpu bench-queries bench-transfer clean

# Without the dev tools: a laptop that only runs the service installs only what it needs.
run: $(UV)
	cd backend && $(UV) run --locked --no-dev songbook migrate
	cd backend && $(UV) run --locked --no-dev songbook serve

# A write key for the local service (make key SCOPE=admin NAME=... for others); printed once,
# as KEY=sb_...: pasted into a shell, it sets $KEY for the README's examples.
SCOPE ?= write
NAME ?= $(SCOPE)-$(shell date +%Y%m%d-%H%M%S)
key: $(UV)
	cd backend && $(UV) run --locked --no-dev songbook migrate >/dev/null
	@key=$$(cd backend && $(UV) run --locked --no-dev songbook keys create --name "$(NAME)" --scope "$(SCOPE)") && echo "KEY=$$key"

test: lint typecheck pytest

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: sync
	$(RUN) mypy

pytest: sync
	$(RUN) pytest $(PYTEST_ARGS)

# The page's screenshots in docs/screenshots/, made again by the browser tests (which otherwise
# keep theirs in a temporary folder).
screenshots: sync
	cd backend && SONGBOOK_SCREENSHOTS=$(CURDIR)/docs/screenshots $(UV) run --locked pytest tests/test_browser.py

# Requests/s of the hot routes as a share of a bare ASGI app's over asyncpg, beside plain
# FastAPI routes, on PostgreSQL (BENCH_SERVE_DATABASE_URL); with wrk. About eight minutes.
bench: sync
	$(RUN) python bench/serve.py $(BENCH_ARGS)

# What request ids, metrics and the access log each cost, in µs a request (in one process, no HTTP).
bench-telemetry: sync
	$(RUN) python bench/telemetry.py $(BENCH_ARGS)

# CPU time a request of the service and of the floor, in one process (no HTTP server): where the
# difference goes, with BENCH_ARGS="get --profile". Needs the catalog `make bench` seeds.
bench-cpu: sync
	$(RUN) python bench/cpu.py $(or $(BENCH_ARGS),get)

# Query latency at a million songs on PostgreSQL (BENCH_DATABASE_URL) and SQLite.
bench-queries: sync
	$(RUN) python bench/queries.py $(BENCH_ARGS)

# Bulk import and export of a million songs on PostgreSQL (BENCH_TRANSFER_DATABASE_URL,
# dropped and made again) and SQLite, against psql's \copy of the same file; a second
# million into the first beside psql's own insert; readers' latency meanwhile. About ten minutes.
bench-transfer: sync
	$(RUN) python bench/transfer.py $(BENCH_ARGS)

check-docker: sync
	scripts/check-docker

sync: $(UV)
	cd backend && $(UV) sync --locked

# A private virtual environment works where the system Python is externally
# managed (PEP 668) and needs no root.
$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

clean:
	rm -rf .tools backend/.venv backend/.pytest_cache backend/.mypy_cache backend/.ruff_cache
