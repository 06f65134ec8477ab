"""conftest.py's strict mode: under MAP_STRICT=1 (set by .ci/run) no test may skip."""
import os
import subprocess
import sys

from conftest import ROOT

TESTS = os.path.join(ROOT, "tests")


def run_pytest(tmp_path, body, strict):
    test = tmp_path / "test_probe.py"
    test.write_text("import pytest\nfrom conftest import require\n\n" + body)
    env = {k: v for k, v in os.environ.items() if k not in ("MAP_STRICT", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = TESTS
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only conftest: third-party plugins take seconds to load
    if strict:
        env["MAP_STRICT"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(test)], cwd=tmp_path, capture_output=True, text=True,
                          env=env)


def test_strict_mode_fails_on_require_and_on_any_skip(tmp_path):
    body = ("def test_runs():\n    pass\n\n"
            "@pytest.mark.skipif(True, reason='no browser here')\ndef test_skipped():\n    pass\n\n"
            "def test_needs_feature():\n    require(False, 'feature X is absent')\n")
    relaxed = run_pytest(tmp_path, body, strict=False)
    assert relaxed.returncode == 0 and "1 passed, 2 skipped" in relaxed.stdout, relaxed.stdout + relaxed.stderr
    strict = run_pytest(tmp_path, body, strict=True)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "a required feature is missing: feature X is absent" in strict.stdout  # require fails
    assert "MAP_STRICT=1: 1 test(s) skipped" in strict.stdout  # and the plain skip fails the run
    assert "test_probe.py::test_skipped: Skipped: no browser here" in strict.stdout
