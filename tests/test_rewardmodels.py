"""rewardmodels.py: ridge probes recover known linear attributes; saved folders are values anywhere."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mapalign import rewardmodels
from mapalign import values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ridge_probes_recover_linear_attributes_with_nan_gaps():
    rng = np.random.default_rng(0)
    n, d = 600, 12
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((3, d))
    b = np.array([1.0, -2.0, 0.5])
    Y = X @ W.T + b + 0.01 * rng.standard_normal((n, 3))
    Y[rng.random((n, 3)) < 0.3] = np.nan  # 30% of labels missing, different rows per attribute
    Y[:50, 2] = np.nan
    probes = rewardmodels.fit_ridge_probes(X, Y, val_fraction=0.2, seed=0)
    assert np.allclose(probes["coef"], W, atol=0.01)
    assert np.allclose(probes["intercept"], b, atol=0.01)
    assert np.all(probes["alpha"] <= 1.0)  # little noise: weak regularisation wins on validation
    assert np.all(probes["val_mse"] < 2e-4)
    assert probes["n_labelled"].tolist() == np.isfinite(Y).sum(0).tolist()


def test_ridge_chooses_strong_regularisation_for_pure_noise():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((80, 40)), rng.standard_normal((80, 1))
    probes = rewardmodels.fit_ridge_probes(X, y, seed=0)
    assert probes["alpha"][0] >= 100


def test_fit_ridge_matches_the_normal_equations():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((30, 5)), rng.standard_normal(30)
    coefs, intercepts = rewardmodels.fit_ridge(X, y, [0.7])
    Xc, yc = X - X.mean(0), y - y.mean()
    w = np.linalg.solve(Xc.T @ Xc + 0.7 * np.eye(5), Xc.T @ yc)
    assert np.allclose(coefs[0], w) and np.isclose(intercepts[0], y.mean() - X.mean(0) @ w)


def test_dpa_scale_maps_label_range_to_10_and_90():
    Y = np.array([[0.0, 2.0], [4.0, 6.0], [np.nan, 4.0]])
    scale = rewardmodels.label_range(Y, "0-100")
    assert scale == {"lo": [0.0, 2.0], "hi": [4.0, 6.0]}
    assert np.allclose(rewardmodels.to_dpa_scale([[0, 2], [4, 6], [2, 4]], scale["lo"], scale["hi"]),
                       [[10, 10], [90, 90], [50, 50]])
    assert rewardmodels.label_range(Y, "0-100", [0, 4])["hi"] == [4.0, 4.0]
    assert rewardmodels.label_range(Y, None) is None


@pytest.fixture(scope="module")
def ridge_folder(tiny_lm_dir, tmp_path_factory):
    rows = []
    rng = np.random.default_rng(0)
    words = "good happy sad bad bread park sleep joke".split()
    for i in range(40):
        text = " ".join(rng.choice(words, size=rng.integers(1, 8)))
        rows.append({"prompt": "Say something.", "continuation": text, "length": float(len(text.split())),
                     "happy": float(text.count("happy")) if i % 3 else None})
    folder = str(tmp_path_factory.mktemp("rm") / "ridge")
    rewardmodels.train_ridge_reward_model(tiny_lm_dir, rows, ["length", "happy"], folder, pooling="mean",
                                          output_scale="0-100", progress=False)
    return folder, rows


def test_saved_ridge_folder_scores_and_registry_names(ridge_folder):
    folder, rows = ridge_folder
    info = rewardmodels.read_info(folder)
    assert info["kind"] == "ridge" and info["attributes"] == ["length", "happy"]
    assert info["n_labelled"] == [40, sum(1 for i in range(40) if i % 3)]
    assert info["scale"]["lo"][0] == min(r["length"] for r in rows)
    names = values.expand_value_list(f"rm:{folder},length")
    assert names == [f"rm:{folder}/length", f"rm:{folder}/happy", "length"]
    rm = rewardmodels.load(folder)
    direct = rm([r["prompt"] for r in rows[:5]], [r["continuation"] for r in rows[:5]])
    via_registry = values.score(names[0], [r["prompt"] for r in rows[:5]], [r["continuation"] for r in rows[:5]])
    assert np.allclose(direct[:, 0], via_registry)
    assert values.get_spec(names[1]).display_name == "Happy"


def test_registry_loads_a_saved_rm_folder_in_a_fresh_process(ridge_folder):
    folder, rows = ridge_folder
    expected = rewardmodels.load(folder)(["Say something."], ["good happy park"])[0]
    code = ("import json; from mapalign import values; "
            f"names = values.expand_value_list('rm:{folder}'); "
            "print(json.dumps([names, [values.score(n, ['Say something.'], ['good happy park'])[0] "
            "for n in names]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    names, scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert names == [f"rm:{folder}/length", f"rm:{folder}/happy"]
    assert np.allclose(scores, expected)


def test_bad_rm_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no map_reward_model.json"):
        values.expand_value_list(f"rm:{empty}")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / rewardmodels.RM_FILE).write_text(json.dumps({"kind": "regression"}))
    with pytest.raises(ValueError, match="no attribute list"):
        values.expand_value_list(f"rm:{broken}")
    with pytest.raises(ValueError, match="no reward-model folder"):
        values.get_spec(f"rm:{tmp_path}/nope/x")


def test_unknown_attribute(ridge_folder):
    folder, _ = ridge_folder
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        values.expand_value_list(f"rm:{folder}/nope")


def test_every_cli_takes_rm_values(ridge_folder, tmp_path):
    """rewardProcessor add_reward + merge, and alignValues, with rm:FOLDER/attr value names."""
    from mapalign.align import AlignValues
    from mapalign.merging import MergeProcessor
    from mapalign.rewarding import RewardProcessor
    from mapalign import records
    folder, rows = ridge_folder
    path = str(tmp_path / "run.json")
    records.save_json_atomic([dict(prompt=r["prompt"], continuation=r["continuation"],
                                   generated=r["prompt"] + " " + r["continuation"], id=f"{i}-0", prompt_id=i,
                                   sample_id=0) for i, r in enumerate(rows)], path)
    for head in values.expand_value_list(f"rm:{folder}"):
        RewardProcessor(file_path=path, progress=False).add_reward(value=head)
    MergeProcessor().merge_added_rewards(original_file_path=path)
    recs = records.load_records(path)
    assert {f"rm:{folder}/length", f"rm:{folder}/happy"} <= set(recs[0])
    expected = rewardmodels.load(folder)([r["prompt"] for r in rows], [r["continuation"] for r in rows])
    assert np.allclose([r[f"rm:{folder}/length"] for r in recs], expected[:, 0])
    align = AlignValues(value_list=f"rm:{folder}", file_path=path)
    means = align.mean_levels()
    result = align.solve(c=means + np.array([1.0, 0.0]))
    assert result.success and np.allclose(result.realized[0], means[0] + 1.0, atol=1e-5)


def test_rm_value_names_stay_one_file_name(ridge_folder):
    from mapalign import decoding
    from mapalign import training
    folder, _ = ridge_folder
    name = decoding.shard_path("res", "m-builtin", [1.0, 2.0], ["length", "sentiment"], 0, 4)
    assert name == "res/temp/m-builtin_lam=1.000,2.000_val=length,sentiment_0to4.json"
    name = decoding.shard_path("res", "m-builtin", [1.0, 2.0], f"rm:{folder}", 0, 4)
    assert os.path.dirname(name) == "res/temp" and "%2F" in name
    assert "/" not in training.map_model_name("m", "builtin", [1.0], ["rm:models/rm/helpfulness"])
