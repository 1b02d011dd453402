# specscope: `make demo` runs the main job, `make test` runs the tests.
# Each target creates / refreshes a local virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.specscope-installed
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test test-slow bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the pinned CPU build, so the project's range pulls no CUDA wheels
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/specscope demo

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/weights.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/vs_weightwatcher.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/gradient_spectrum.py
	$(PY) benchmarks/covariance.py
	$(PY) benchmarks/trajectory.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
