"""plot/plot_cal_winrate.py, plot/plot_tab_in_quantiles.py and plot/plot_sequential_baseline.py on
small fixture files: hand-computed win rates and quantiles, the files each writes, and clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import OPT_FILE, ROOT, needs_reference
from mapalign.plots import plot_cal_winrate, plot_sequential_baseline, plot_tab_in_quantiles
from mapalign.plots.artefacts import ArtefactError
from mapalign.evaluation import EvaluationError


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _results(path, rows, prompt_ids=None):
    """rows: list of {metric: score}; one record per row."""
    recs = []
    for j, row in enumerate(rows):
        pid = j if prompt_ids is None else prompt_ids[j]
        recs.append({"prompt": f"p{pid}", "generated": f"p{pid} out", "prompt_id": pid, "sample_id": 0, **row})
    return _write(path, recs)


def _nonempty(paths, exts=("pdf", "png")):
    for ext in exts:
        match = [p for p in paths if p.endswith("." + ext)]
        assert match and os.path.getsize(match[0]) > 0, (ext, paths)


@pytest.fixture
def winrate_files(tmp_path):
    base = _results(tmp_path / "base.json", [{"gpt2-helpful": h, "gpt2-harmless": s, "perplexity": -3.0}
                                             for h, s in [(1, 1), (2, 2), (3, 3), (4, 4)]])
    # helpful: win, tie, loss, win -> 0.625; harmless: win, win, win, loss -> 0.75
    a = _results(tmp_path / "a.json", [{"gpt2-helpful": h, "gpt2-harmless": s, "perplexity": -2.0}
                                       for h, s in [(5, 2), (2, 3), (1, 4), (9, 0)]])
    # no perplexity (as decoding runs); shuffled prompt order; helpful 4 losses, harmless 4 ties
    b = _results(tmp_path / "b.json", [{"gpt2-helpful": 0, "gpt2-harmless": s} for s in (4, 3, 2, 1)],
                 prompt_ids=[3, 2, 1, 0])
    return base, a, b


def test_collect_and_render_table(tmp_path, winrate_files):
    base, a, b = winrate_files
    prefix = str(tmp_path / "wr")
    out = plot_cal_winrate.collect_multiple_results(f"{a},{b}", base, prefix)
    assert out == prefix + ".json"
    entries = json.loads(open(out).read())
    assert [e["label"] for e in entries] == ["a", "b"]
    assert entries[0]["gpt2-helpful"] == pytest.approx(0.625) and entries[0]["gpt2-harmless"] == pytest.approx(0.75)
    assert entries[0]["perplexity"] == 1.0 and entries[0]["n_pairs"] == 4
    assert entries[0]["basemodel-path"] == base and entries[0]["model-path"] == a
    se = np.std([1, 0.5, 0, 1]) / 2
    assert entries[0]["gpt2-helpful_SE"] == pytest.approx(se)
    assert entries[1]["gpt2-helpful"] == 0.0 and entries[1]["gpt2-harmless"] == 0.5
    assert "perplexity" not in entries[1]

    tex = plot_cal_winrate.render_latex_table(out, prefix)
    text = open(tex).read()
    assert "\\toprule" in text and "\\bottomrule" in text
    lines = [line for line in text.splitlines() if line.startswith(("a &", "b &"))]
    # columns in the paper's order: perplexity, harmless, helpful
    assert lines[0] == r"a & 1.00 $\pm$ 0.00 & 0.75 $\pm$ 0.22 & 0.62 $\pm$ 0.21 \\"
    assert lines[1].startswith("b & --")
    # the original's string rates are read too
    legacy = [{"model-path": "m.json", "basemodel-path": "b.json", "humor": "0.61", "humor_SE": "0.01"}]
    text = open(plot_cal_winrate.render_latex_table(legacy, str(tmp_path / "legacy"))).read()
    assert r"m & 0.61 $\pm$ 0.01 \\" in text


def test_collect_refuses_mismatched_prompts(tmp_path, winrate_files):
    base, a, _ = winrate_files
    other = _results(tmp_path / "other.json", [{"gpt2-helpful": 1, "gpt2-harmless": 1}] * 3, prompt_ids=[0, 1, 7])
    with pytest.raises(EvaluationError, match="different prompts"):
        plot_cal_winrate.collect_multiple_results([a, other], base, str(tmp_path / "bad"))
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ValueError, match="'humor' is missing"):
        plot_cal_winrate.collect_multiple_results(a, base, str(tmp_path / "bad"), metrics="humor")


def test_winrate_figures(tmp_path):
    entries = [
        {"model-path": "m1.json", "group": "MAP", "gpt2-helpful": 0.6, "gpt2-helpful_SE": 0.01,
         "gpt2-harmless": 0.55, "gpt2-harmless_SE": 0.01},
        {"model-path": "m2.json", "group": "MAP", "gpt2-helpful": 0.48, "gpt2-helpful_SE": 0.01,
         "gpt2-harmless": 0.7, "gpt2-harmless_SE": 0.01},
        {"model-path": "m3.json", "group": "DPO", "gpt2-helpful": 0.8, "gpt2-helpful_SE": 0.01,
         "gpt2-harmless": 0.3, "gpt2-harmless_SE": 0.01},
    ]
    path = _write(tmp_path / "wr.json", entries)
    paths = plot_cal_winrate.plot_winrate(path, str(tmp_path / "fig_winrate"), tolerance=0.03, jitter=0.005)
    _nonempty(paths)
    summary = json.loads(open(str(tmp_path / "fig_winrate_navigation.json")).read())
    assert summary["MAP"]["navigation_efficiency"] == 1.0 and summary["DPO"]["navigation_efficiency"] == 0.0
    summary_strict = plot_cal_winrate.plot_winrate(entries, str(tmp_path / "strict"), tolerance=0.0)[-1]
    assert json.loads(open(summary_strict).read())["MAP"]["navigation_efficiency"] == 0.5
    _nonempty(plot_cal_winrate.plot_helpful_vs_harmless(path, "0.9,0.1,0.5", str(tmp_path / "fig_ratio")))
    with pytest.raises(ArtefactError, match="one ratio per entry"):
        plot_cal_winrate.plot_helpful_vs_harmless(path, [0.1, 0.2], str(tmp_path / "x"))
    with pytest.raises(ArtefactError, match="no 'humor' win rate"):
        plot_cal_winrate.plot_winrate(path, str(tmp_path / "x"), x_metric="humor")


def test_malformed_win_rate_files(tmp_path):
    with pytest.raises(ArtefactError, match="not valid JSON"):
        plot_cal_winrate.render_latex_table(str(_write_text(tmp_path / "a.json", "[{")), str(tmp_path / "t"))
    with pytest.raises(ArtefactError, match="not a win-rate entry"):
        plot_cal_winrate.render_latex_table(_write(tmp_path / "b.json", [{"x": 1}]), str(tmp_path / "t"))
    with pytest.raises(ArtefactError, match="not a number"):
        plot_cal_winrate.render_latex_table([{"model-path": "m", "humor": "high", "humor_SE": 0.1}],
                                            str(tmp_path / "t"))
    assert not (tmp_path / "t.tex").exists()


def _write_text(path, text):
    path.write_text(text)
    return path


def test_cli_prints_one_error_line(tmp_path):
    env = dict(os.environ, MAP_DEBUG="")
    env.pop("MAP_DEBUG")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "plot", "plot_cal_winrate.py"), "render_latex_table",
                           f"--win_rate_results_list={tmp_path / 'missing.json'}", f"--file_prefix={tmp_path / 't'}"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: win-rate")


def test_tab_in_quantiles(tmp_path):
    ref = _results(tmp_path / "ref.json", [{"humor": h, "gpt2-helpful": g} for h, g in
                                           [(1, 10), (2, 20), (2, 30), (3, 40), (5, 50)]])
    real = tmp_path / "m_realC-levels.csv"
    real.write_text("Statistic,humor,gpt2-helpful\navg,2.0,35.0\navg_std,0.1,0.1\n70%,2.5,45\n")
    numeric = tmp_path / "m_lam=1_val=humor_numericC-levels.csv"
    numeric.write_text("humor,gpt2-helpful,humor_lam\n5.0,10.0,1.0\n0.5,60,2.0\n")
    points = _write(tmp_path / "points.json", {"reference": ref, "values": ["humor", "gpt2-helpful"], "points": [
        {"label": "paper", "levels": {"humor": 3, "gpt2-helpful": 20}}, {"label": "Original"}]})
    prefix = str(tmp_path / "tab")
    paths = plot_tab_in_quantiles.tab_in_quantiles(levels_csvs=f"{real},{numeric}", points_file=points,
                                                  file_prefix=prefix)
    assert paths == [prefix + ".json", prefix + ".csv"]
    out = json.loads(open(paths[0]).read())
    assert out["values"] == ["humor", "gpt2-helpful"] and out["reference"] == ref
    got = {r["label"]: [r["quantiles"]["humor"], r["quantiles"]["gpt2-helpful"]] for r in out["rows"]}
    # left searchsorted / 5 on humor [1,2,2,3,5] and helpful [10..50]; Original = means 2.6, 30
    assert got == {"paper": [0.6, 0.2], "Original": [0.6, 0.4], "m": [0.2, 0.6], "m_lam=1_val=humor#0": [0.8, 0.0],
                   "m_lam=1_val=humor#1": [0.0, 1.0]}
    assert open(paths[1]).read().splitlines()[0] == "label,humor,gpt2-helpful"
    row70 = plot_tab_in_quantiles.tab_in_quantiles(ref, str(real), file_prefix=prefix, row="70%")
    assert json.loads(open(row70[0]).read())["rows"][0]["quantiles"] == {"humor": 0.6, "gpt2-helpful": 0.8}
    with pytest.raises(ArtefactError, match="no row '90%'"):
        plot_tab_in_quantiles.tab_in_quantiles(ref, str(real), file_prefix=prefix, row="90%")
    with pytest.raises(ArtefactError, match=r"no column\(s\) \['humor'\]"):
        bad = tmp_path / "bad_realC-levels.csv"
        bad.write_text("Statistic,gpt2-helpful\navg,1\n")
        plot_tab_in_quantiles.tab_in_quantiles(ref, str(bad), value_list="humor,gpt2-helpful", file_prefix=prefix)
    with pytest.raises(ArtefactError, match="give the levels"):
        plot_tab_in_quantiles.tab_in_quantiles(ref)


@pytest.fixture
def tradeoff_file(tmp_path):
    """Two negatively correlated values, so aligning one at a time undershoots the first."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = -0.6 * x + 0.8 * rng.normal(size=400)
    return _results(tmp_path / "tradeoff.json", [{"humor": a, "gpt2-helpful": b} for a, b in zip(x, y)])


def test_sequential_baseline_compute_and_plot(tmp_path, tradeoff_file):
    prefix = str(tmp_path / "seq")
    path = plot_sequential_baseline.compute_sequential_baseline(tradeoff_file, "humor,gpt2-helpful", levels="60,70%",
                                                                rounds=3, file_prefix=prefix)
    data = json.loads(open(path).read())
    assert [lv["level"] for lv in data["levels"]] == ["60%", "70%"] and data["rounds"] == 3
    for lv in data["levels"]:
        assert lv["MAP"]["status"] == "feasible"
        assert np.all(np.array(lv["MAP"]["realized"]) >= np.array(lv["c"]) - 1e-6)
        assert [s["round"] for s in lv["sequential"]] == [1, 2, 3]
        first = lv["sequential"][0]
        # the last value aligned is reached; the first is pulled back below its target
        assert first["realized"][1] == pytest.approx(lv["c"][1], abs=1e-6)
        assert first["quantiles"][0] < lv["MAP"]["quantiles"][0] - 0.02
        assert lv["sequential"][2]["quantiles"][0] > first["quantiles"][0]
    _nonempty(plot_sequential_baseline.plot_sequential_baseline(path))
    _nonempty(plot_sequential_baseline.plot_sequential_baseline(path, str(tmp_path / "one"), values_shown="humor",
                                                                rounds_shown="2"))
    with pytest.raises(ValueError, match="not palette rows"):
        plot_sequential_baseline.compute_sequential_baseline(tradeoff_file, "humor", levels="75", file_prefix=prefix)
    with pytest.raises(ArtefactError, match="not a sequential-baseline file"):
        plot_sequential_baseline.plot_sequential_baseline(_write(tmp_path / "bad.json", {"values": ["humor"]}))


@needs_reference
def test_sequential_baseline_opt_70(tmp_path):
    """SPEC-MAP §12: after one sequential round at the OPT 70% palette helpfulness reaches only the
    0.437 quantile (MAP: 0.700); round-1 λ 8.418, 0.479, 0.966 for humor, helpful, harmless."""
    path = plot_sequential_baseline.compute_sequential_baseline(OPT_FILE, "all", levels=70, rounds=1,
                                                                file_prefix=str(tmp_path / "opt"))
    level = json.loads(open(path).read())["levels"][0]
    assert level["MAP"]["quantiles"][1] == pytest.approx(0.700, abs=0.002)
    assert level["sequential"][0]["quantiles"][1] == pytest.approx(0.437, abs=0.003)
    np.testing.assert_allclose(level["sequential"][0]["lam"][:3], [8.418, 0.479, 0.966], atol=0.01)


def test_model_file_names_with_commas(tmp_path, winrate_files):
    # MAP-D files carry λ in their names ("..._lam=2.090,8.610_val=a,b.json"): a comma-separated
    # --model_files must not cut them apart.
    base, a, b = winrate_files
    lam_named = str(tmp_path / "m_lam=2.090,8.610_val=gpt2-helpful,gpt2-harmless.json")
    os.rename(a, lam_named)
    out = plot_cal_winrate.collect_multiple_results(f"{lam_named},{b}", base, str(tmp_path / "w"))
    entries = json.load(open(out[0] if isinstance(out, (list, tuple)) else out))
    assert [e["model-path"] for e in entries] == [lam_named, b]
    assert entries[0]["gpt2-helpful"] == pytest.approx(0.625)
