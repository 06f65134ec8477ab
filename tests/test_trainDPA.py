"""trainDPA.py / dpatrainer.py: one tiny RSF iteration end to end, palette mode, resume of every stage,
bad input (tiny random model, offline values)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mapalign import dpa
from mapalign import dpatrainer
from mapalign import records
from mapalign import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES = ["sentiment", "length"]


def config(model, **kw):
    base = dict(model_name=model, objectives="sentiment,length", objective_names="helpfulness,verbosity",
                num_train_prompts=4, num_eval_prompts=2, iterations=1, samples_per_prompt=3, max_new_tokens=8,
                batch_size=12, eval_grid_step=45.0, num_train_epochs=1.0, per_device_train_batch_size=4,
                lora_r=4, lora_alpha=8, learning_rate=1e-3, max_length=512, seed=0)
    base.update(kw)
    return dpatrainer.DPAConfig(**base)


def test_one_rsf_iteration_end_to_end(tiny_lm_dir, tmp_path):
    trainer = dpatrainer.DPATrainer(config(tiny_lm_dir), tmp_path / "run", progress=False)
    final = trainer.run()
    assert final == str(tmp_path / "run" / "iter1" / "model") and training.is_finished(final)
    samples = records.load_records(trainer.path(1, "samples.json"))
    assert len(samples) == 4 * 3
    for r in samples:
        names, weights = dpa.parse_system_prompt(r["system"])
        assert names == ["helpfulness", "verbosity"] and weights == r["weights"]
        assert weights == dpa.integer_weights(dpa.direction_from_angle(r["angle"]))
        assert abs(r["angle"]) <= 45
    scored = records.load_records(trainer.path(1, "scored.json"))
    selected = records.load_records(trainer.path(1, "selected.json"))
    assert len(selected) == 4
    for p, sel in enumerate(selected):
        group = [r for r in scored if r["prompt_id"] == p]
        w = np.array(dpa.parse_system_prompt(sel["system"])[1]) / 100  # exactly the written weights
        best = int(np.argmax([w @ [r[v] for v in VALUES] for r in group]))
        assert sel["chosen_index"] == best and sel["continuation"] == group[best]["continuation"]
    meta = training.load_training_metadata(final)
    assert meta["template"] == dpa.TEMPLATE and meta["num_examples"] == 4
    for t in (0, 1):
        ev = records.load_records(str(tmp_path / "run" / "eval" / f"iter{t}.json"))
        assert sorted({r["angle"] for r in ev}) == [-45.0, 0.0, 45.0] and len(ev) == 3 * 2
        points = dpatrainer.front(ev, VALUES)
        assert [p["weights"] for p in points] == [[71, -71], [100, 0], [71, 71]]
        control = dpatrainer.direction_control(points, VALUES)
        assert set(control) == {"spearman_ratio", "spearman_second"}
    cfg = json.load(open(tmp_path / "run" / dpatrainer.CONFIG_FILE))
    assert cfg["template"] == dpa.TEMPLATE and "halves away from zero" in cfg["rounding"]
    # a second run finds everything done and rewrites nothing
    stamps = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "run") for f in fs}
    dpatrainer.DPATrainer(config(tiny_lm_dir), tmp_path / "run", progress=False).run()
    assert stamps == {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "run") for f in fs}
    # other settings into the same folder are refused
    with pytest.raises(dpa.DPAError, match="samples_per_prompt=3"):
        dpatrainer.DPATrainer(config(tiny_lm_dir, samples_per_prompt=5), tmp_path / "run", progress=False)


def test_system_prompt_swap_test(tiny_lm_dir, tmp_path):
    trainer = dpatrainer.DPATrainer(config(tiny_lm_dir, rerank_directions=3, num_train_prompts=6), tmp_path / "run",
                                    progress=False)
    trainer.run(evaluate=False)
    path = trainer.path(1, "selected.json")
    selected = records.load_records(path)
    pairs = dpa.opposite_pairs(selected)
    assert len(pairs) >= 2
    result = trainer.conditioning(1)
    assert set(result) == {"pi0", "pi1"} and all(r["n"] == len(pairs) for r in result.values())
    saved = json.load(open(trainer.path(1, "conditioning.json")))
    assert saved["pairs"] == len(pairs) and saved["objective"] == "verbosity" and saved["models"] == result
    # each response under the other's system prompt: every Δ changes sign
    for lo, hi in pairs:
        lo["system"], hi["system"] = hi["system"], lo["system"]
    records.save_records(selected, path)
    flipped = trainer.conditioning(1)
    for name in result:
        assert flipped[name]["mean"] == pytest.approx(-result[name]["mean"], abs=1e-4)
    with pytest.raises(dpa.DPAError, match="direction mode"):
        dpatrainer.DPATrainer(config(tiny_lm_dir, mode="palette"), tmp_path / "pal", progress=False).conditioning(1)


class Killed(Exception):
    pass


def _kill_after(monkeypatch, calls):
    real = records.Checkpoint.append
    count = {"n": 0}

    def append(self, recs, state=None):
        if count["n"] == calls:
            raise Killed()
        count["n"] += 1
        return real(self, recs, state)
    monkeypatch.setattr(records.Checkpoint, "append", append)


def test_resume_of_sampling_scoring_selection_and_evaluation(tiny_lm_dir, tmp_path, monkeypatch):
    cfg = config(tiny_lm_dir, batch_size=3)  # one prompt per sampling batch: 4 journal appends
    whole = dpatrainer.DPATrainer(cfg, tmp_path / "whole", progress=False)
    for stage in ("sample", "score", "select"):
        getattr(whole, stage)(1)
    whole.evaluate(0)
    killed = dpatrainer.DPATrainer(cfg, tmp_path / "killed", progress=False)
    for stage, name in (("sample", "samples.json"), ("score", "scored.json"), ("select", "selected.json")):
        with monkeypatch.context() as m:
            _kill_after(m, 1 if stage != "score" else 0)
            if stage != "select":  # selection writes once (no batches): nothing to kill mid-way
                with pytest.raises(Killed):
                    getattr(killed, stage)(1)
                assert not os.path.exists(killed.path(1, name))
        getattr(killed, stage)(1)
        a = records.load_records(whole.path(1, name))
        b = records.load_records(killed.path(1, name))
        assert a == b, stage
    with monkeypatch.context() as m:
        _kill_after(m, 1)
        with pytest.raises(Killed):
            killed.evaluate(0)
    killed.evaluate(0)
    assert records.load_records(str(tmp_path / "whole" / "eval" / "iter0.json")) == \
        records.load_records(str(tmp_path / "killed" / "eval" / "iter0.json"))


def test_training_resumes_from_its_checkpoint(tiny_lm_dir, tmp_path):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise Killed()

    trainer = dpatrainer.DPATrainer(config(tiny_lm_dir, rerank_directions=1, per_device_train_batch_size=2),
                                    tmp_path / "run", progress=False)
    for stage in ("sample", "score", "select"):
        getattr(trainer, stage)(1)
    assert len(records.load_records(trainer.path(1, "selected.json"))) == 8  # re-ranked: two examples per prompt
    with pytest.raises(Killed):
        trainer.train(1, save_steps=2, callbacks=[Stop()])
    assert os.path.isdir(trainer.path(1, "model/checkpoint-2")) and not training.is_finished(trainer.path(1, "model"))
    trainer.train(1, save_steps=2)
    meta = training.load_training_metadata(trainer.path(1, "model"))
    steps = [h["step"] for h in meta["log_history"] if "train_runtime" in h]
    assert steps == [4]  # 8 examples / batch 2: resumed at step 2 and finished at 4


def test_palette_conditioned_sft_and_one_pass_generation(tiny_lm_dir, tmp_path):
    cfg = config(tiny_lm_dir, mode="palette", samples_per_prompt=6, batch_size=12, num_palettes=3)
    trainer = dpatrainer.DPATrainer(cfg, tmp_path / "pal", progress=False)
    trainer.run()
    samples = records.load_records(trainer.path(1, "samples.json"))
    assert all(r["system"] is None for r in samples)  # drawn from p0, unconditioned
    selected = records.load_records(trainer.path(1, "selected.json"))
    meta = records.load_metadata(trainer.path(1, "selected.json"))
    scored = records.load_records(trainer.path(1, "scored.json"))
    from mapalign import solver
    R = records.reward_matrix(scored, VALUES)
    groups = records.prompt_groups(scored)
    for pal in meta["palettes"]:
        assert solver.evaluate_lambda(R, pal["lam"], pal["c"], groups=groups).success  # feasible as written
    for r in selected:
        assert dpa.parse_palette_prompt(r["system"]) == (["helpfulness", "verbosity"], r["palette"])
    c = meta["palettes"][0]["c"]
    path, result, written = trainer.generate_palette(c)
    assert result.success and written == c
    out = records.load_records(path)
    assert len(out) == 2 and all(r["system"] == dpa.render_palette_prompt(c, ["helpfulness", "verbosity"]) for r in out)
    with pytest.raises(dpa.DPAError, match="3 levels but there are 2 objectives"):
        trainer.generate_palette([1, 2, 3])
    with pytest.raises(dpa.DPAError, match="nearest feasible palette"):
        trainer.generate_palette([5.0, 500.0])
    stem = os.path.basename(path)[:-len(".json")]
    assert sorted(os.listdir(tmp_path / "pal" / "palette")) == [stem + ".json", stem + ".meta.json"]


def _cli(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))


def test_bad_input_one_clear_error_nothing_written(tmp_path):
    out = _cli([os.path.join(ROOT, "gendata.py"), "--save_directory=res", "--direction=120",
                "generate_from_original_model"], tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: direction θ=120")
    out = _cli([os.path.join(ROOT, "gendata.py"), "--save_directory=res", "--weights=0,0",
                "generate_from_original_model"], tmp_path)
    assert out.returncode == 2 and "all zero" in out.stderr
    (tmp_path / "rm").mkdir()
    out = _cli([os.path.join(ROOT, "trainDPA.py"), "--output_dir=run", "--objectives=rm:rm", "run"], tmp_path)
    assert out.returncode == 2 and "no map_reward_model.json (its attribute list)" in out.stderr
    out = _cli([os.path.join(ROOT, "trainDPA.py"), "--output_dir=run", "--objectives=length", "run"], tmp_path)
    assert out.returncode == 2 and "at least two objectives" in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["rm"]


def test_cli_stage_of_an_existing_run_needs_only_the_folder(tmp_path):
    from mapalign import train_dpa as trainDPA
    run = tmp_path / "run"
    first = trainDPA.settings(run, {"objectives": ("sentiment", "length"), "iterations": 2})
    dpatrainer.DPATrainer(dpatrainer.DPAConfig(**first), run, progress=False)
    again = trainDPA.TrainDPA(str(run), progress=False)
    assert again.config.objectives == "sentiment,length" and again.config.iterations == 2
    assert trainDPA.TrainDPA(str(run), iterations=2, progress=False).config.samples_per_prompt == 4
    with pytest.raises(dpa.DPAError, match="iterations=2"):  # refused before the stage draws anything
        trainDPA.TrainDPA(str(run), iterations=3, progress=False).sample(1)
    assert sorted(os.listdir(run)) == [dpatrainer.CONFIG_FILE]


def test_help_of_a_command_builds_nothing(tmp_path):
    # fire constructs TrainDPA before showing a command's help: the objectives (here an RM folder that
    # does not exist yet) are not loaded and no run folder is written
    for args in (["sample", "--help"], ["--help"]):
        out = _cli([os.path.join(ROOT, "trainDPA.py"), "--output_dir=run", "--objectives=rm:models/rm", *args],
                   tmp_path)
        assert out.returncode == 0 and "SYNOPSIS" in out.stdout + out.stderr, out.stderr
    assert os.listdir(tmp_path) == []
