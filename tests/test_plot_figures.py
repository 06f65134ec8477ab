"""Figures of plot/ (reward distributions, Pareto, radar, λ region) and plot/make_gallery.py on tiny
fixtures: each writes a real PDF and PNG, draws the numbers its artefacts hold (checked against
independent computations), and refuses malformed inputs with one clear error and no output."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mapalign.plots import artefacts, figstyle  # noqa: E402
from mapalign.plots import make_gallery, plot_pairwise_pareto, plot_radar_tabresults, plot_rand_lambda_MAP_region  # noqa: E402
from mapalign.plots import plot_reward_dist  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign.align import AlignValues  # noqa: E402
from mapalign.rewarding import RewardProcessor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES3 = ["humor", "gpt2-helpful", "gpt2-harmless"]


def write_results(path, n=60, seed=0, positive=None):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"prompt": f"p{i}", "continuation": f" c{i}", "generated": f"p{i} c{i}", "id": f"{i}-0",
               "prompt_id": i, "sample_id": 0, "humor": float(rng.normal(1.0, 1.0)),
               "gpt2-helpful": float(rng.normal(-1.0, 0.7)), "gpt2-harmless": float(rng.normal(0.5, 0.8))}
        if positive is not None:
            row["positive"] = float(positive[i])
        rows.append(row)
    records.save_json_atomic(rows, str(path))
    return str(path)


@pytest.fixture
def results_file(tmp_path):
    return write_results(tmp_path / "model-data.json", positive=np.linspace(0.02, 0.98, 60))


@pytest.fixture
def captured(monkeypatch):
    """The figures passed to figstyle.save_figure (still saved), to read back what was drawn."""
    figs = []
    original = figstyle.save_figure

    def capture(fig, output_prefix, **kw):
        figs.append(fig)
        return original(fig, output_prefix, **kw)
    monkeypatch.setattr(figstyle, "save_figure", capture)
    return figs


def assert_pdf_png(paths, prefix):
    assert paths == [f"{prefix}.pdf", f"{prefix}.png"]
    with open(paths[0], "rb") as f:
        assert f.read(5) == b"%PDF-"
    with open(paths[1], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert all(os.path.getsize(p) > 1000 for p in paths)


def no_outputs(folder):
    return not [f for f in os.listdir(folder) if f.endswith((".pdf", ".png"))]


# --------------------------------------------------------------------------- reward distributions

def test_plot_hist_one_panel_per_value(results_file, tmp_path, captured):
    paths = plot_reward_dist.plot_hist(results_file, value_list="humor,gpt2-helpful", bins=10,
                                       output_prefix=str(tmp_path / "h"))
    assert_pdf_png(paths, str(tmp_path / "h"))
    axes = [ax for ax in captured[0].axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in axes] == ["Humor", "Helpfulness"]
    humor = artefacts.load_rewards(results_file, ["humor"])[0]
    assert sum(p.get_height() for p in axes[0].patches) == pytest.approx(60)
    assert axes[0].lines[0].get_xdata()[0] == pytest.approx(humor.mean())


def test_plot_hist_positive_draws_probabilities_as_stored(results_file, tmp_path, captured):
    paths = plot_reward_dist.plot_hist_positive(results_file, bins=10, output_prefix=str(tmp_path / "pos"))
    assert_pdf_png(paths, str(tmp_path / "pos"))
    ax = captured[0].axes[0]
    # the original exponentiated: its mean line would sit at mean(exp(p)) ≈ 1.67, outside [0, 1]
    assert ax.lines[0].get_xdata()[0] == pytest.approx(0.5)
    assert ax.patches[0].get_x() == pytest.approx(0.0)
    assert ax.patches[-1].get_x() + ax.patches[-1].get_width() == pytest.approx(1.0)


def test_plot_hist_positive_refuses_log_probabilities(tmp_path):
    path = write_results(tmp_path / "logp.json", positive=np.log(np.linspace(0.02, 0.98, 60)))
    with pytest.raises(records.RecordsError, match="not \\[0, 1\\]"):
        plot_reward_dist.plot_hist_positive(path, output_prefix=str(tmp_path / "pos"))
    assert no_outputs(tmp_path)


def test_weighted_histograms_mark_the_tilted_mean(results_file, tmp_path, captured):
    lam = [0.8, 0.3, 0.5]
    paths = plot_reward_dist.plot_weighted_unweighted_histograms(results_file, ",".join(VALUES3), lam=lam,
                                                                 output_prefix=str(tmp_path / "w"))
    assert_pdf_png(paths, str(tmp_path / "w"))
    R = artefacts.load_rewards(results_file, VALUES3)
    w = np.exp(np.array(lam) @ R)
    w /= w.sum()
    for ax, row in zip([a for a in captured[0].axes if a.get_visible()], R):
        before, after = (line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--")
        assert before == pytest.approx(row.mean())
        assert after == pytest.approx(w @ row)


def test_weighted_histograms_read_lambda_from_the_log(results_file, tmp_path, captured):
    log = tmp_path / "alignValues.txt"
    log.write_text(f"filepath: {results_file}, c Levels: 1.0,0.0, values: ['humor', 'gpt2-helpful'], "
                   "optimized lambda: NaN\n"
                   f"filepath: {results_file}, c Levels: 1.2,-0.8, values: ['humor', 'gpt2-helpful'], "
                   "optimized lambda: 0.700,0.200\n")
    plot_reward_dist.plot_weighted_unweighted_histograms(results_file, "humor,gpt2-helpful", lambda_log=str(log),
                                                         output_prefix=str(tmp_path / "w"))
    R = artefacts.load_rewards(results_file, ["humor", "gpt2-helpful"])
    w = np.exp(np.array([0.7, 0.2]) @ R)
    assert captured[0].axes[0].lines[-1].get_xdata()[0] == pytest.approx((w / w.sum()) @ R[0])


def test_weighted_histograms_refuse_wrong_lambda_length(results_file, tmp_path):
    with pytest.raises(artefacts.ArtefactError, match="one λ per value"):
        plot_reward_dist.plot_weighted_unweighted_histograms(results_file, ",".join(VALUES3), lam="1,2",
                                                             output_prefix=str(tmp_path / "w"))
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- Pareto and pair plot

@pytest.fixture
def random_lambda_csv(results_file):
    return RewardProcessor(values_to_evaluate=VALUES3, values_to_align=VALUES3, file_path=results_file,
                           progress=False).assess_postalignment_multivalue(k=25, scaling=-1, scaling_MAX=3, seed=1)


def test_matrix_scatterplot(random_lambda_csv, tmp_path, captured):
    paths = plot_pairwise_pareto.plot_matrix_scatterplot(random_lambda_csv, output_prefix=str(tmp_path / "m"))
    assert_pdf_png(paths, str(tmp_path / "m"))
    assert len(captured[0].axes) == 36  # 3 levels + 3 λ columns, no index column


def test_matrix_scatterplot_refuses_non_numeric_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    with pytest.raises(artefacts.ArtefactError, match="at least 2 numeric columns"):
        plot_pairwise_pareto.plot_matrix_scatterplot(str(path), output_prefix=str(tmp_path / "m"))
    with pytest.raises(artefacts.ArtefactError, match="no column"):
        plot_pairwise_pareto.plot_matrix_scatterplot(str(path), columns="a,c", output_prefix=str(tmp_path / "m"))
    assert no_outputs(tmp_path)


def test_pareto_draws_quantiles_and_points(results_file, random_lambda_csv, tmp_path, captured):
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"reference": results_file, "points": [
        {"label": "Original"}, {"label": "MAP", "lam": {"humor": 1.0, "gpt2-helpful": 0.5}},
        {"label": "Sole-Humor", "lam": {"humor": 1.0}}]}))
    paths = plot_pairwise_pareto.plot_pareto(random_lambda_csv, pairs="gpt2-harmless:gpt2-helpful",
                                             points_file=str(points), output_prefix=str(tmp_path / "p"))
    assert_pdf_png(paths, str(tmp_path / "p"))
    ax = captured[0].axes[0]
    assert ax.get_xlim() == (0, 1.04) and ax.get_ylim() == (0, 1.04)
    R = artefacts.load_rewards(results_file, ["gpt2-harmless", "gpt2-helpful"])
    with open(random_lambda_csv) as f:
        rows = list(csv.DictReader(f))
    cloud = ax.collections[0].get_offsets()
    expect_x = [np.mean(R[0] < float(r["gpt2-harmless"])) for r in rows]
    assert np.allclose(cloud[:, 0], expect_x)
    original = ax.collections[1].get_offsets()[0]
    assert np.allclose(original, [np.mean(R[0] < R[0].mean()), np.mean(R[1] < R[1].mean())])
    w = np.exp(1.0 * artefacts.load_rewards(results_file, ["humor"])[0])
    sole = ax.collections[3].get_offsets()[0]
    assert sole[1] == pytest.approx(np.mean(R[1] < (w / w.sum()) @ R[1]))


def test_pareto_refuses_a_points_table_of_another_file(results_file, random_lambda_csv, tmp_path):
    other = write_results(tmp_path / "other.json", seed=3)
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"reference": other, "points": [{"label": "Original"}]}))
    with pytest.raises(artefacts.ArtefactError, match="same file"):
        plot_pairwise_pareto.plot_pareto(random_lambda_csv, points_file=str(points), output_prefix=str(tmp_path / "p"))
    with pytest.raises(artefacts.ArtefactError, match="x:y"):
        plot_pairwise_pareto.plot_pareto(random_lambda_csv, pairs="humor", output_prefix=str(tmp_path / "p"))
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- radar

def test_radar_plots_quantiles_of_each_point(results_file, tmp_path, captured):
    points = tmp_path / "radar.json"
    points.write_text(json.dumps({"reference": results_file, "values": VALUES3, "points": [
        {"label": "Original"}, {"label": "typed", "levels": {"humor": 1.0, "gpt2-helpful": -1.0, "gpt2-harmless": 9}}]}))
    paths = plot_radar_tabresults.plot_radar(str(points), output_prefix=str(tmp_path / "r"))
    assert_pdf_png(paths, str(tmp_path / "r"))
    ax = captured[0].axes[0]
    R = artefacts.load_rewards(results_file, VALUES3)
    original, typed = (line.get_ydata() for line in ax.lines[:2])
    assert np.allclose(original[:3], [np.mean(r < r.mean()) for r in R])
    assert np.allclose(typed[:3], [np.mean(R[0] < 1.0), np.mean(R[1] < -1.0), 1.0])
    assert original[3] == original[0]  # the polygon is closed
    assert ax.get_ylim()[1] == pytest.approx(1.0)


def test_radar_needs_three_values_and_a_reference(results_file, tmp_path):
    points = tmp_path / "radar.json"
    points.write_text(json.dumps({"reference": results_file, "values": ["humor", "gpt2-helpful"],
                                  "points": [{"label": "Original"}]}))
    with pytest.raises(artefacts.ArtefactError, match="at least 3 values"):
        plot_radar_tabresults.plot_radar(str(points), output_prefix=str(tmp_path / "r"))
    points.write_text(json.dumps({"points": [{"label": "x", "levels": {"humor": 1}}]}))
    with pytest.raises(artefacts.ArtefactError, match="reference"):
        plot_radar_tabresults.plot_radar(str(points), output_prefix=str(tmp_path / "r"))
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- λ region

def test_lambda_region_from_gen_rand_MAP_lambda(results_file, tmp_path, captured):
    prefix = str(tmp_path / "rand")
    accepted, _ = AlignValues(VALUES3, results_file, seed=0).gen_rand_MAP_lambda(6, 30, save_prefix=prefix)
    assert len(accepted) == 6
    with open(prefix + ".csv", "a") as f:  # a failed row is not drawn
        f.write(f'"{results_file}","1,1,1","{",".join(VALUES3)}","NaN,NaN,NaN","1,1,1","infeasible","0"\n')
    paths = plot_rand_lambda_MAP_region.plot_lambdas_3D(prefix + ".csv", "gpt2-helpful", "gpt2-harmless", "humor",
                                                        str(tmp_path / "l3"))
    assert_pdf_png(paths, str(tmp_path / "l3"))
    xs, ys, zs = captured[0].axes[0].collections[0]._offsets3d
    assert np.allclose(np.column_stack([zs, xs, ys]), accepted, atol=6e-4)  # the CSV keeps 3 decimals
    paths = plot_rand_lambda_MAP_region.plot_lambdas_2D_subplots([prefix + ".csv", prefix + ".csv"], "humor",
                                                                 "gpt2-helpful", str(tmp_path / "l2"))
    assert_pdf_png(paths, str(tmp_path / "l2"))
    assert len(captured[1].axes) == 2
    assert np.allclose(captured[1].axes[0].collections[0].get_offsets(), np.array(accepted)[:, :2], atol=6e-4)


def test_lambda_region_refuses_unknown_values_and_other_files(results_file, tmp_path):
    prefix = str(tmp_path / "rand")
    AlignValues(VALUES3, results_file, seed=0).gen_rand_MAP_lambda(2, 30, save_prefix=prefix)
    with pytest.raises(artefacts.ArtefactError, match="not for \\['positive'\\]"):
        plot_rand_lambda_MAP_region.plot_lambdas_2D_subplots(prefix + ".csv", "humor", "positive", str(tmp_path / "x"))
    with pytest.raises(artefacts.ArtefactError, match="not a random-λ CSV"):
        plot_rand_lambda_MAP_region.plot_lambdas_3D(results_file, "humor", "gpt2-helpful", "gpt2-harmless",
                                                    str(tmp_path / "x"))
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- gallery and CLI

def test_make_gallery_renders_every_figure(results_file, tmp_path):
    out = tmp_path / "figs"
    paths = make_gallery.make_gallery(file_path=results_file, summary=None, out_dir=str(out), num_random_lambda=30,
                                      num_rand_map=5, skip_mc=True)
    expected = ["fig_reward_hist", "fig_positive_hist", "fig_hist_MAP70", "fig_matrix_randlambda", "fig_pareto",
                "fig_radar_palettes", "fig_radar_single", "fig_lambda_region_3D", "fig_lambda_region_2D"]
    for stem in expected:
        for ext in ("pdf", "png"):
            assert str(out / f"{stem}.{ext}") in paths
            assert os.path.getsize(out / f"{stem}.{ext}") > 1000
    # every λ in the points tables comes from the gallery's own λ log
    log = artefacts.read_lambda_log(str(out / "data" / "alignValues.txt"))
    with open(out / "data" / "points_pareto.json") as f:
        table = json.load(f)
    logged = [e["lam"].tolist() for e in log if e["lam"] is not None]
    for point in table["points"][1:]:
        assert any(np.allclose(list(point["lam"].values()), lam) for lam in logged)
    assert not os.path.exists(os.path.join(os.path.dirname(results_file), "model-data_realC-levels.csv"))


def test_mix_series_interpolates_the_single_value_lambdas():
    sole = {"sentiment": {"sentiment": 4.0}, "coherence-minilm": {"coherence-minilm": 1.0},
            "harmlessness": {"harmlessness": 10.0}}
    x, y, series = make_gallery.mix_series(sole, ["sentiment", "coherence-minilm", "harmlessness"], [0, 0.25, 1])
    assert (x, y) == ("sentiment", "harmlessness")  # y: the harmless-like value, x: the first other one
    assert [r for r, _ in series] == [0.0, 0.25, 1.0]
    assert np.allclose([lam for _, lam in series], [[4.0, 0.0], [3.0, 2.5], [0.0, 10.0]])
    x, y, _ = make_gallery.mix_series({"humor": {"humor": 1.0}, "gpt2-helpful": {"gpt2-helpful": 2.0}},
                                      ["humor", "gpt2-helpful"], [0.5])
    assert (x, y) == ("humor", "gpt2-helpful")
    assert make_gallery.mix_series({"humor": None, "gpt2-helpful": {"gpt2-helpful": 2.0}},
                                   ["humor", "gpt2-helpful"], [0.5]) is None  # an infeasible Sole-X palette


def test_make_gallery_names_the_missing_demo(tmp_path):
    with pytest.raises(artefacts.ArtefactError, match="make demo"):
        make_gallery.make_gallery(file_path=str(tmp_path / "absent.json"), out_dir=str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")


def test_cli_prints_one_error_line(tmp_path):
    run = subprocess.run([sys.executable, "plot/plot_reward_dist.py", "plot_hist",
                          f"--json_file={tmp_path / 'absent.json'}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "absent.json" in lines[0]
