# specscope: `make demo` runs the main job, `make test` runs the tests.
# Each target creates / refreshes a local virtual environment first, installing the exact
# versions in constraints.txt (pyproject.toml keeps the ranges; `make lock` refreshes the pins).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.specscope-installed
TORCH_PIN ?= torch==2.13.0
LOCK   ?= constraints.txt
LOCK_VENV ?= .venv-lock
LPY    := $(LOCK_VENV)/bin/python

.PHONY: venv demo test test-slow bench docs results lock clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the pinned CPU build, so the project's range pulls no CUDA wheels
	$(PY) -m pip install -q -c $(LOCK) "$(TORCH_PIN)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[test]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/specscope demo

test: venv
	$(PY) -m pytest -q

# Headless Chromium for tests/test_report_browser.py (skipped without it; not part of `make test`). Debian / Ubuntu, as root.
browser:
	apt-get update && apt-get install -y chromium

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/weights.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/vs_weightwatcher.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/gradient_spectrum.py
	$(PY) benchmarks/shared_pass.py
	$(PY) benchmarks/covariance.py
	$(PY) benchmarks/trajectory.py

# The README's results section: every built-in study over seeds, then its claims tables copied in
# (docs/make_results.py). About 30 minutes on a 2-core CPU; one study: `make results STUDIES=sosd`.
# Grokking takes 4 seeds: with 3 a side, 3/3 vs 0/3 is p = 0.05 in Fisher's exact test, never below it.
STUDIES ?= sosd lifecycle lens taxonomy grokking
SEEDS ?= 3
GROK_SEEDS ?= 4
results: venv
	mkdir -p runs/results
	for s in $(STUDIES); do n=$(SEEDS); [ $$s = grokking ] && n=$(GROK_SEEDS); rm -rf runs/results/$$s; \
	  OMP_NUM_THREADS=1 $(VENV)/bin/specscope experiment $$s --seeds $$n --out runs/results/$$s --no-progress || exit 1; done
	$(PY) docs/make_results.py

# docs/api.md: every public module, class and function with its signature and docstring
docs: venv
	$(PY) docs/make_api.py

# Refresh the pins: a throwaway venv gets today's newest versions within pyproject's ranges
# (torch first, as above), runs the suite, and only if it passes writes its freeze to $(LOCK).
# Dropped from the freeze: the project itself, pip/wheel, CUDA runtime wheels (they follow the
# torch build, not the project) and local version tags (`torch==2.13.0` also matches `+cpu`).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LPY) -m pip install -q --upgrade pip
	$(LPY) -m pip install -q "$(TORCH_PIN)"
	$(LPY) -m pip install -q -e ".[test]"
	$(LPY) -m pytest -q
	{ echo "# Exact versions \`make test\` passed with, written by \`make lock\` on $$(date -u +%Y-%m-%d) (do not edit by hand)."; \
	  $(LPY) -m pip freeze --all --exclude-editable \
	    | grep -viE '^(pip|wheel|distribute|specscope)==|^(nvidia-|triton|cuda-)' \
	    | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK); the next make target re-installs .venv from it"

clean:
	rm -rf $(VENV) $(LOCK_VENV) runs build *.egg-info src/*.egg-info
