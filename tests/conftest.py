"""Shared pytest setup: offline hub, one torch thread (the machines are shared: two threads can
slow down 30-50x when the other core is busy) and fixtures. The library is the installed `mapalign`
package (`pip install -e .`, done by `make install`)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

REFERENCE_DIR = os.path.join(os.path.dirname(ROOT), "shared", "reference", "map")
LLAMA_FILE = os.path.join(REFERENCE_DIR, "llama2_chat-Anthropic-harmless.json")
OPT_FILE = os.path.join(REFERENCE_DIR, "opt1.3b-Anthropic-harmless.json")
REFERENCE_LOG = os.path.join(REFERENCE_DIR, "alignValues.txt")

# CI runs with MAP_STRICT=1: there a missing feature dependency (reference data, Chromium, SLURM,
# vLLM, ...) fails the test instead of skipping it, so a green CI cannot hide an untested feature.
STRICT = os.environ.get("MAP_STRICT", "") not in ("", "0")


def require(condition, reason):
    """Skip the calling test when `condition` is false, except under MAP_STRICT=1, where it fails."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"MAP_STRICT=1 and a required feature is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def needs(condition, reason):
    """Decorator form of `require` (evaluated when the test runs, not at collection)."""
    def wrap(fn):
        import functools

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            require(condition() if callable(condition) else condition, reason)
            return fn(*args, **kwargs)
        return inner
    return wrap


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Under MAP_STRICT=1 a skipped test fails the run: CI must not pass while a feature went
    untested (pytest.skip called directly, skipif, importorskip, ...)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if STRICT and skipped:
        terminalreporter.write_line(f"MAP_STRICT=1: {len(skipped)} test(s) skipped; in CI every test must run:",
                                    red=True)
        for report in skipped:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            terminalreporter.write_line(f"  {report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    """... and the exit status says so (1, "tests failed") even when every test that ran passed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if STRICT and reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1


needs_reference = needs(lambda: os.path.isfile(LLAMA_FILE),
                        "../shared/reference/map is absent (only CI and developers have it)")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama causal LM + ChatML tokenizer saved to a folder (built once per session)."""
    from mapalign import tiny
    return tiny.tiny_causal_lm(str(tmp_path_factory.mktemp("tiny_lm")))


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Empty Hugging Face and toolkit caches for one test, so that it checks the same thing whatever
    this machine has cached (HF_HOME, HF_HUB_CACHE, huggingface_hub's resolved constant, MAP_CACHE_DIR)."""
    import huggingface_hub.constants as hub_constants
    hub = tmp_path / "hf_home" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(hub.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path / "map_cache"))
    return hub
