"""plot/plot_dpa_front.py on a synthetic trainDPA run folder (no models)."""
import json
import os

import pytest

from mapalign import dpa
from mapalign import dpatrainer
from mapalign import records
from mapalign.plots import plot_dpa_front


def _run(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    values = ["rm:x/helpfulness", "length"]
    (run / dpatrainer.CONFIG_FILE).write_text(json.dumps({"config": {"values": values,
                                                                     "names": ["helpfulness", "verbosity"]}}))
    for t in (0, 1):
        recs = []
        for angle in dpa.direction_grid(15):
            for i in range(3):
                words = 10 + t * angle / 5 + i
                recs.append({"prompt": "p", "continuation": " ".join(["w"] * int(words)), "angle": angle,
                             "weights": dpa.integer_weights(dpa.direction_from_angle(angle)), "words": int(words),
                             values[0]: 50.0 - t * angle / 10 + i, values[1]: float(int(words))})
        records.save_json_atomic(recs, str(run / "eval" / f"iter{t}.json"))
        records.save_metadata(str(run / "eval" / f"iter{t}.json"), {"fingerprint": {}})
    return run, values


def test_front_and_direction_control(tmp_path):
    run, values = _run(tmp_path)
    _, names, fronts = plot_dpa_front.load_run(str(run))
    assert names == ["helpfulness", "verbosity"] and sorted(fronts) == [0, 1]
    control0 = dpatrainer.direction_control(fronts[0], values)
    control1 = dpatrainer.direction_control(fronts[1], values)
    assert control1["spearman_ratio"] == pytest.approx(1.0) and control1["spearman_second"] == pytest.approx(1.0)
    assert control0["spearman_second"] != control0["spearman_second"]  # constant verbosity: undefined (NaN)
    assert fronts[1][0]["mean"][values[0]] == pytest.approx(50 + 4.5 + 1)
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"label": "MAP-D", "x": 50, "y": 11}]}))
    paths = plot_dpa_front.plot_front(str(run), output_prefix=str(tmp_path / "fig"), points_file=str(points))
    assert [os.path.basename(p) for p in paths] == ["fig.pdf", "fig.png"] and all(os.path.getsize(p) for p in paths)


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trainDPA run folder"):
        plot_dpa_front.load_run(str(tmp_path))
