# Mini Connector: the two commands the README promises, plus helpers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean fuzz-api package windows-check

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The AsyncAPI 3.0.0 JSON Schema from npm's @asyncapi/specs (the spec's own schemas), for
# tests/relay/api/test_asyncapi.py; fetched once into .cache when npm is there (the test
# skips without it, and fails under MC_REQUIRE_SERVICES=1).
ASYNCAPI_SCHEMA := .cache/asyncapi-specs/package/schemas/3.0.0-without-$$id.json

$(ASYNCAPI_SCHEMA):
	@if command -v npm >/dev/null 2>&1; then mkdir -p .cache/asyncapi-specs && cd .cache/asyncapi-specs && \
	  npm pack -q @asyncapi/specs@6 >/dev/null && tar xzf asyncapi-specs-*.tgz; \
	else echo "npm not found: the AsyncAPI schema test will be skipped"; fi

# Two pytest-xdist workers, a test file per worker at a time (a file's module fixtures, such
# as one relay for the schemathesis run, stay in one process): half the wall time on two
# cores, since most system tests wait on real processes. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: $(STAMP) $(ASYNCAPI_SCHEMA)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fuzz-api: $(STAMP)  ## schemathesis, every check and phase, against a relay with an agent (docs/API.md)
	$(PY) scripts/fuzz_api.py

windows-check: $(STAMP)  ## the Windows agent under Wine: Python and one-file .exe (tests/windows, docs/OPERATIONS.md)
	MC_WINDOWS_CHECK=1 MC_WINDOWS_DIST=dist $(PY) -m pytest -q -rs tests/windows

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

package: $(STAMP)  ## dist/mini-connector (PyInstaller one-file) and dist/mini-connector_*.deb
	$(PY) -m pip install -q -e '.[package]'
	installers/linux/build_binary.sh $(PY) && installers/linux/build_deb.sh $(PY)
