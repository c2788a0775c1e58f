# Two commands: `make setup` (virtualenv, dependencies, model weights) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lock test test-fast lint bench eval clean docs int8 fuzz image-test

# uv, bootstrapped into the venv at the locked version, installs exactly what uv.lock says
# (--frozen: never re-resolved, so a later release of any dependency changes nothing here).
UV_VERSION := 0.13.10
EXTRAS := --extra server --extra distributed --extra heif
export UV_LINK_MODE ?= copy

setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv sync --frozen --quiet $(EXTRAS)
	$(BIN)/alphacut models pull medium
	bash scripts/setup-browser.sh

# Re-resolves every dependency to its newest release within pyproject.toml's ranges; say so
# in CHANGELOG.md ("Dependencies: lock refreshed") and run `make test` before committing.
lock:
	$(BIN)/uv lock --upgrade
	$(BIN)/uv sync --frozen --quiet $(EXTRAS)

# Optional, not part of setup (1.5-5 min on 2 cores): the int8 model `medium-int8` (docs/models.md).
int8:
	$(BIN)/alphacut models quantize medium

test:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -rs
	$(MAKE) docs

# Everything but the tests that need the real ISNet weights or headless Chromium.
test-fast:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -rs -m "not real_model and not browser"
	$(MAKE) docs

# The container image, built with podman on a Debian base made here (cached in
# .alphacut/image-test) and run: an API node and a worker on the services of scripts/services.sh,
# a photo through them. Skips, saying why, where podman cannot run containers (docs/scaling.md).
image-test:
	bash scripts/image-test.sh

# schemathesis against a live server with many more examples than `make test` runs.
fuzz:
	ALPHACUT_FUZZ_EXAMPLES=300 $(BIN)/pytest -q -rs -s tests/service/test_fuzz.py

lint:
	$(BIN)/ruff check src tests bench

# The documentation site (mkdocs.yml); --strict turns every warning into an error.
docs:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

bench:
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache test-artifacts
