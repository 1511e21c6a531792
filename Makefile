# `make demo` and `make test` work on a fresh machine: each sets up .venv and builds first.
VENV := .venv
PY := $(VENV)/bin/python
# torch's guess from the nvcc wrapper on PATH misses libcudart; point it at the toolkit itself.
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= $(shell nproc)

TORCH_VERSION ?= 2.14.1
DEPS := torch==$(TORCH_VERSION) transformers pybind11 ninja numpy safetensors huggingface_hub tqdm \
	pytest pytest-benchmark setuptools wheel pyarrow pandas
SOURCES := $(wildcard csrc/*) setup.py

.PHONY: demo test bench build clean

$(VENV)/.deps: Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	# The integrations' tests need pyvene and TransformerLens importable; their own pins would
	# replace torch and transformers, so they come without them, with what their imports need.
	$(PY) -m pip install -q matplotlib einops jaxtyping datasets
	$(PY) -m pip install -q --no-deps pyvene==0.1.8 transformer_lens==4.3.0
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES) pyproject.toml
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import steerkern, json; print(json.dumps(steerkern.build_info()))"
	touch $@

build: $(VENV)/.built

demo: build
	$(VENV)/bin/steerkern demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest -q benchmarks --benchmark-columns=median,iqr,rounds

clean:
	rm -rf build *.egg-info steerkern/_C*.so $(VENV)/.built
