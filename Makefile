# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench install clean

$(VENV)/.deps: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[all,test]'
	touch $@

install: $(VENV)/.deps
	$(PY) -m pip install --quiet --no-deps --force-reinstall .

demo: install
	$(VENV)/bin/fsq demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m fsq.bench

clean:
	rm -rf $(VENV) build *.egg-info
