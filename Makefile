# captcha-crnn: `make demo` runs the main job on a built-in default, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (a bare `torch` would pull GBs of CUDA packages).
TORCH := torch==2.13.0

.PHONY: install test test-fast lint demo bench readme models clean

$(BIN)/captcha-crnn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,pretrained]"
	touch $@

install: $(BIN)/captcha-crnn

demo: install
	$(BIN)/captcha-crnn demo

test: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest

test-fast: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

# Regenerate the CLI reference in docs/cli.md from the argument parser (tests fail when it is stale).
readme: install
	$(BIN)/python scripts/cli_reference.py

# Rebuild the shipped models in src/captcha_crnn/zoo (needs ../shared/datasets).
models: install
	$(BIN)/python scripts/train_models.py

bench: install
	$(BIN)/python benchmarks/train_captcha_v2.py

clean:
	rm -rf $(VENV) runs build *.egg-info
