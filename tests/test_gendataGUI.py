"""The palette GUI: session logic (solve, suggested palette, generation) and, where Chromium and
Playwright are installed, the app end to end in a headless browser."""
import importlib.util
import inspect
import json
import shutil
import socket

import numpy as np
import pytest

from mapalign import gui as gendataGUI
from mapalign import solver
from conftest import require


def letters(prompts, continuations):
    return np.array([sum(ch.isalpha() for ch in c) for c in continuations], dtype=float)


def spaces(prompts, continuations):
    return np.array([c.count(" ") for c in continuations], dtype=float)


SCORERS = {"letters": letters, "spaces": spaces}


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    # 60 reference samples with two independent reward columns (plus a non-value numeric key)
    rng = np.random.default_rng(0)
    recs = [{"prompt": f"p{i}", "generated": f"p{i} x", "continuation": "x", "id": f"{i}-0", "prompt_id": i,
             "sample_id": 0, "letters": float(rng.normal(20, 5)), "spaces": float(rng.normal(3, 1)),
             "mc_ess": 3.0} for i in range(60)]
    path = tmp_path_factory.mktemp("gui") / "ref.json"
    path.write_text(json.dumps(recs))
    return str(path)


@pytest.fixture(scope="module")
def session(results_file):
    return gendataGUI.PaletteSession(results_file, scorers=SCORERS)


def test_session_reads_palette_ranges(session):
    assert session.values == ["letters", "spaces"]  # custom values found, mc_ess ignored
    R = session.R
    np.testing.assert_allclose(session.mean, R.mean(axis=1))
    np.testing.assert_allclose([session.low, session.high], [R.min(axis=1), R.max(axis=1)])
    report = session.palette_report(*session.mean)
    assert "**Palette: feasible**" in report and "| 0 |" in report  # at the means, λ = 0


def test_session_feasible_and_infeasible_palettes(session):
    c = [np.quantile(session.R[0], 0.8), session.mean[1]]
    result = session.solve(c)
    assert result.status == solver.FEASIBLE and result.lam[0] > 0
    report = session.palette_report(*c)
    assert f"{result.lam[0]:.4g}" in report and f"{c[0]:.4g}" in report
    # both values at their maxima: no sample is best on both, so infeasible, with a suggestion
    c_bad = session.high - 1e-3
    lam, bad, note = session.decoding_lambda(c_bad)
    assert bad.status == solver.INFEASIBLE and "suggested" in note
    suggested = session.solve(bad.suggested_palette)
    assert suggested.status == solver.FEASIBLE
    np.testing.assert_allclose(lam, suggested.lam)
    assert "Suggested feasible palette: letters = " in session.palette_report(*c_bad)


def test_per_prompt_report_says_per_prompt(tmp_path):
    rng = np.random.default_rng(1)
    recs = [{"prompt": f"p{i // 4}", "generated": "x", "prompt_id": i // 4, "letters": float(rng.normal(20, 5)),
             "spaces": float(rng.normal(3, 1))} for i in range(40)]
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(recs))
    session = gendataGUI.PaletteSession(str(path), scorers=SCORERS, per_prompt=True)
    report = session.palette_report(*session.mean)
    assert "per prompt (mean over 10 prompts of 4.0 samples on average)" in report and "of 40" not in report


def test_session_generates_original_and_aligned(session, tiny_lm_dir):
    prompt = "Tell me a joke about cats."
    args = (tiny_lm_dir, prompt)
    text, info = session.generate(*args, gendataGUI.MODES[0], 4, 1.0, 50, 1, 8, 0, *session.mean)
    assert text.startswith(prompt) and "original" in info
    c = [np.quantile(session.R[0], 0.9), session.mean[1]]
    text, info = session.generate(*args, gendataGUI.MODES[2], 6, 1.0, 50, 1, 8, 0, *c)
    assert text.startswith(prompt) and "Kept sample" in info
    lam = session.solve(c).lam
    # best of N with λ on letters only keeps the sample with the most letters among the 6
    from mapalign import decoding
    model, tok = session.load(tiny_lm_dir)
    res, _ = decoding.mc_decode(model, tok, [prompt], lam, session.values, 6, scorers=SCORERS, max_new_tokens=8,
                                best_of_n=True, seed=0, return_candidates=True)
    assert f"letters = {res[0]['rewards']['letters']:.4g}" in info
    assert res[0]["rewards"]["letters"] == max(res[0]["candidate_rewards"][0])
    _, info = session.generate(*args, gendataGUI.MODES[1], 4, 1.0, 50, 2, 8, 0, *c)
    assert "Num Beams to 1" in info
    _, info = session.generate(tiny_lm_dir, "  ", gendataGUI.MODES[0], 4, 1.0, 50, 1, 8, 0, *c)
    assert info == "Type a prompt first."


def test_generateGUI_from_original_model_keeps_seed_signature(monkeypatch, session, tiny_lm_dir):
    params = inspect.signature(gendataGUI.generateGUI_from_original_model).parameters
    assert [(p.name, p.default) for p in params.values()] == [
        ("prompt", inspect.Parameter.empty), ("temperature", 1.0), ("top_k", 50), ("num_beams", 1),
        ("max_new_tokens", 50)]
    monkeypatch.setitem(gendataGUI._DEFAULT_MODEL_CACHE, "pair", session.load(tiny_lm_dir))
    text = gendataGUI.generateGUI_from_original_model("How do I bake bread?", max_new_tokens=5)
    assert text.startswith("How do I bake bread? ")


def test_missing_reward_columns_is_a_clear_error(tmp_path):
    from mapalign import records
    path = tmp_path / "plain.json"
    path.write_text(json.dumps([{"prompt": "a", "generated": "a b"}]))
    with pytest.raises(records.RecordsError, match="no reward columns"):
        gendataGUI.PaletteSession(str(path))
    with pytest.raises(records.RecordsError, match="--results_file"):
        gendataGUI.PaletteSession(str(tmp_path / "missing.json"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_end_to_end_in_headless_chromium(session, tiny_lm_dir):
    # require: skips locally without a browser, fails in CI (MAP_STRICT=1), where .ci/run installs it
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    require(importlib.util.find_spec("playwright") is not None, "playwright is not installed (pip install playwright)")
    require(importlib.util.find_spec("gradio") is not None, "gradio is not installed (pip install -r requirements.txt)")
    from playwright import sync_api
    app = gendataGUI.build_app(session, model_name=tiny_lm_dir)
    url = gendataGUI.launch(app, port=free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(url)
            expect = sync_api.expect
            report = page.locator("#palette-report")
            expect(report).to_contain_text("Palette: feasible", timeout=20000)
            # move the Letters slider to its 80% quantile: the report shows the solved λ and level
            target = round(float(np.quantile(session.R[0], 0.8)), 2)
            page.locator("#palette-letters input[type=range]").fill(str(target))
            # the slider snaps to its step grid: solve for the value it actually holds
            held = [float(page.locator(f"#palette-{v} input[type=number]").input_value()) for v in session.values]
            assert abs(held[0] - target) < 0.05
            result = session.solve(held)
            expect(report).to_contain_text(f"{result.lam[0]:.4g}", timeout=20000)
            assert result.lam[0] > 0
            # generate from the aligned model
            page.locator("#prompt textarea").fill("Tell me a joke about cats.")
            page.locator("#generate").click()
            info = page.locator("#generation-info")
            expect(info).to_contain_text("Kept sample", timeout=30000)
            assert f"λ = {result.lam[0]:.4g}" in info.inner_text()
            assert page.locator("#output textarea").input_value().startswith("Tell me a joke about cats.")
            # an unattainable palette: the page names the suggested feasible palette
            page.locator("#palette-spaces input[type=range]").fill(str(float(session.high[1])))
            page.locator("#palette-letters input[type=range]").fill(str(float(session.high[0])))
            expect(report).to_contain_text("Suggested feasible palette", timeout=20000)
            browser.close()
    finally:
        app.close()
