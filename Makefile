# captcha-crnn: `make demo` runs the main job on a built-in default, `make test` runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (a bare `torch` would pull GBs of CUDA packages).
TORCH := torch==2.13.0

.PHONY: install test lint demo bench clean

$(BIN)/captcha-crnn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test,onnx]"
	touch $@

install: $(BIN)/captcha-crnn

demo: install
	$(BIN)/captcha-crnn demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/train_captcha_v2.py

clean:
	rm -rf $(VENV) runs build *.egg-info
