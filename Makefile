# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

# Debian packages the end-to-end tests and the benchmarks drive (installed by scripts/install-packages).
TEST_PACKAGES  := unbound prometheus knot-dnsutils bind9-dnsutils nats-server chromium chromium-driver
# Node.js and npm run the cache-tests suite; a machine may already have them from another
# source (NodeSource's nodejs bundles npm, and Debian's npm package conflicts with it).
NODE_PACKAGES  := nodejs npm
BENCH_PACKAGES := dnsperf gdnsd pdns-server pdns-backend-geoip nginx wrk

.PHONY: demo demo-load test lint typecheck bench fuzz cache-tests test-packages bench-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'  # dev includes the demo extra
	touch $@

# The bench extra (matplotlib, for the scaling part's plots) on top of the dev install.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

demo: $(STAMP)
	$(BIN)/cdnlab

demo-load: $(STAMP)
	$(BIN)/cdnlab --load

test-packages:
	scripts/install-packages $(TEST_PACKAGES)
	command -v npm >/dev/null || scripts/install-packages $(NODE_PACKAGES)

bench-packages:
	scripts/install-packages $(BENCH_PACKAGES)

test: $(STAMP) test-packages
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check cdn georouter edge cdnlab tests benchmarks fuzz
	$(BIN)/ruff format --check cdn georouter edge cdnlab tests benchmarks fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BENCH_STAMP) test-packages bench-packages
	$(BIN)/python -m benchmarks

# Each fuzz target for FUZZ_SECONDS under atheris (libFuzzer) if it installs, else under
# our structured mutator; a find fails the run and is saved under fuzz/crashes/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install --quiet 'atheris>=2.3' || echo "fuzz: atheris does not install here: the structured mutator runs instead"
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m fuzz

cache-tests: $(STAMP)
	$(BIN)/python scripts/cache-tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
