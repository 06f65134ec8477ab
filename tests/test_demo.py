"""The demo's whole pipeline on the tiny LM: generate, score, merge, assess, solve, summary."""
import json
import os

import numpy as np

from mapalign import records
from mapalign import solver
from mapalign.demo import main


def test_demo_end_to_end_on_the_tiny_model(tmp_path, tiny_lm_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # AlignValues appends to ./results/alignValues.txt
    values = ["sentiment", "coherence-minilm", "perplexity", "diversity", "length"]
    summary = main(model=tiny_lm_dir, num_prompts=8, max_new_tokens=6, batch_size=4, values=values,
                   palette_values="diversity,length", palette_quantile=60, save_directory=str(tmp_path / "results"))
    with open(tmp_path / "results" / "demo" / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    recs = records.load_records(summary["file"])
    assert summary["num_records"] == len(recs) == 8
    assert all(set(values) <= set(r) for r in recs)
    R = records.reward_matrix(recs, values)
    np.testing.assert_allclose([summary["mean_levels"][v] for v in values], R.mean(1), atol=5e-4)
    assert summary["status"] == "feasible" and set(summary["lambda"]) == {"diversity", "length"}
    lam = [summary["lambda"]["diversity"], summary["lambda"]["length"]]
    expected = solver.realized_levels(R[[3, 4]], lam, R)
    np.testing.assert_allclose([summary["realized_levels"][v] for v in values], expected, atol=5e-4)
    for v in ("diversity", "length"):  # the palette is reached
        assert summary["realized_levels"][v] >= summary["palette"][v] - 1e-3
    assert set(summary["seconds"]) == {"generate", "score", "merge", "assess", "align", "total"}
    assert os.path.isfile(summary["outputs"]["levels_csv"]) and os.path.isfile(summary["outputs"]["realized_csv"])
    assert os.path.isfile(tmp_path / "results" / "alignValues.txt")

    before = open(summary["file"]).read()
    again = main(model=tiny_lm_dir, num_prompts=8, max_new_tokens=6, batch_size=4, values=values,
                 palette_values="diversity,length", palette_quantile=60, save_directory=str(tmp_path / "results"))
    assert open(summary["file"]).read() == before  # finished stages are skipped, not redone
    assert again["lambda"] == summary["lambda"]
