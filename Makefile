# Two commands on a fresh machine: `make demo` (score sample photos with the embedded default model) and `make test`.
# `make lint` runs ruff and mypy (strict; see [tool.mypy] in pyproject.toml; TensorRT calls are typed against stubs).
# CI (`.ci/run`) runs `make lint`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the CPU build of torch comes from. Empty: pip's configured indexes (this project's machines serve the CPU
# wheel locally). On a plain PyPI set-up `torch==2.13.0` is the multi-GB CUDA build on Linux: pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU one.
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

$(BIN)/diffv2iqa-trt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,precision,dev,ray,openvino]'
	touch $@

# The serving environment (`diffv2iqa-trt serve`): PyTriton needs NumPy < 2, the development environment NumPy 2
# (see the `serve` extra in pyproject.toml), so serving gets its own virtualenv beside $(VENV). The serve tests start
# the server from it (DIFFV2IQA_TRT_SERVE_PYTHON) and talk to it from $(VENV), as a client would.
SERVE_VENV ?= $(VENV)-serve
$(SERVE_VENV)/bin/diffv2iqa-trt: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve]'
	touch $@

# The TensorRT 10.13 type stubs, fixed up, for mypy and the engine tests (scripts/tensorrt_stubs.py; needs PyPI once).
typings/.installed: scripts/tensorrt_stubs.py | $(BIN)/diffv2iqa-trt
	$(BIN)/python scripts/tensorrt_stubs.py typings

.PHONY: install demo lint test test-all
install: $(BIN)/diffv2iqa-trt typings/.installed $(SERVE_VENV)/bin/diffv2iqa-trt

demo: install
	$(BIN)/python scripts/make_samples.py out/samples
	$(BIN)/diffv2iqa-trt score out/samples

lint: install
	$(BIN)/python -m ruff check diffv2iqa_trt tests
	$(BIN)/python -m mypy diffv2iqa_trt

# --durations: CI logs the slowest tests, so a test that grows slow is seen.
test: install
	DIFFV2IQA_TRT_SERVE_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(BIN)/python -m pytest -m "not slow" -q --durations=15

test-all: install
	DIFFV2IQA_TRT_SERVE_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(BIN)/python -m pytest -q
