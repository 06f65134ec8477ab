"""rewardTrainer.py: the pairwise reward model through the original command line, and the
multi-objective regression reward model (masked MSE) learning a planted linear target, loaded back
through the value registry."""
import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from mapalign import cli
from mapalign import train_reward as rewardTrainer
from mapalign import tiny
from mapalign import training
from mapalign import values

WORDS = ["sunny", "rainy", "happy", "sad", "bread", "cats", "dogs", "park"]


def run_command_line(argv):
    """What `python rewardTrainer.py ARGV` does, in this process."""
    return cli.main(rewardTrainer.documented(), command=argv)


def test_masked_mse_ignores_missing():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([[0.0, float("nan")], [3.0, 3.0]])
    assert rewardTrainer.masked_mse(pred, target).item() == pytest.approx((1 + 0 + 4) / 3)
    assert rewardTrainer.masked_mse(pred, torch.full((2, 2), float("nan"))).item() == 0.0


def test_regression_reward_model_learns_planted_linear_target(tmp_path):
    base = tiny.tiny_sequence_classifier(str(tmp_path / "base"), num_labels=1, arch="gpt2")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=8), rng.normal(size=8)
    rows = []
    for _ in range(400):  # x = a[first word] + b[second word]; y = 2·a[first] − 1, missing 30% of the time
        i, j = rng.integers(8, size=2)
        rows.append({"prompt": "Rate this", "continuation": f"{WORDS[i]} {WORDS[j]}", "x": a[i] + b[j],
                     "y": 2 * a[i] - 1 if rng.random() > 0.3 else None})
    train, test = rows[:320], rows[320:]
    args = TrainingArguments(**training.common_config(str(tmp_path / "rm"), learning_rate=3e-3, max_steps=150,
                                                      per_device_train_batch_size=16, logging_steps=50,
                                                      save_steps=10000, seed=0))
    out = rewardTrainer.train_regression_reward_model(base, train, "x,y", str(tmp_path / "rm"), args=args)
    info = json.load(open(os.path.join(out, rewardTrainer.RM_FILE)))
    assert info["attributes"] == ["x", "y"] and info["template"] == rewardTrainer.DEFAULT_TEMPLATE
    config = AutoModelForSequenceClassification.from_pretrained(out).config
    assert config.num_labels == 2 and config.id2label == {0: "x", 1: "y"}
    names = rewardTrainer.register_regression_values(out, names="rm-x,rm-y", overwrite=True)
    try:
        prompts, conts = [r["prompt"] for r in test], [r["continuation"] for r in test]
        x = np.array([r["x"] for r in test])
        pred_x = values.load_scorer("rm-x")(prompts, conts)
        assert 1 - np.mean((pred_x - x) ** 2) / np.var(x) > 0.9  # R² in the original units
        seen = [k for k, r in enumerate(test) if r["y"] is not None]
        y = np.array([test[k]["y"] for k in seen])
        pred_y = values.load_scorer("rm-y")([prompts[k] for k in seen], [conts[k] for k in seen])
        assert 1 - np.mean((pred_y - y) ** 2) / np.var(y) > 0.9
    finally:
        for name in names:
            values.REGISTRY.pop(name, None)


def test_regression_errors(tmp_path):
    with pytest.raises(ValueError, match="not a column"):
        rewardTrainer.regression_targets([{"x": 1.0}], ["x", "zz"])
    with pytest.raises(ValueError, match="no finite value"):
        rewardTrainer.regression_targets([{"x": None}, {"x": float("nan")}], ["x"])
    with pytest.raises(FileNotFoundError, match="regression reward model"):
        rewardTrainer.RegressionRewardScorer(str(tmp_path))


def test_pairwise_reward_model_through_the_original_command_line(tmp_path):
    base = tiny.tiny_sequence_classifier(str(tmp_path / "base"), num_labels=1, arch="gpt2")
    good, bad = ["happy sunny park", "kind good friend", "warm bread"], ["sad broken toy", "terrible awful", "hated it"]
    rng = np.random.default_rng(0)
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for _ in range(64):
            q = "\n\nHuman: How was your day?\n\nAssistant: "
            f.write(json.dumps({"chosen": q + good[rng.integers(3)], "rejected": q + bad[rng.integers(3)]}) + "\n")
    out_dir = str(tmp_path / "rm")
    argv = [f"--model_name_or_path={base}", f"--output_dir={out_dir}", "--per_device_train_batch_size=8",
            "--num_train_epochs=3", "--gradient_accumulation_steps=1", "--learning_rate=3e-3",
            "--remove_unused_columns=False", "--optim=adamw_torch", "--logging_steps=4",
            "--evaluation_strategy=no", "--max_length=64", f"--data_source_path={data}", "--save_steps=1000",
            "--report_to=tensorboard"]
    assert run_command_line(argv) == out_dir
    events = [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith("events.out.tfevents")]
    assert events, "--report_to=tensorboard wrote no event file"
    meta = training.load_training_metadata(out_dir)
    losses = [h["loss"] for h in meta["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    model = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    q = "\n\nHuman: How was your day?\n\nAssistant: "
    with torch.no_grad():
        score = lambda t: model(**tokenizer(q + t, return_tensors="pt")).logits[0, 0].item()  # noqa: E731
        assert min(score(t) for t in good) > max(score(t) for t in bad)
    with pytest.raises(SystemExit):
        run_command_line([f"--output_dir={out_dir}", "--objective=regression"])


def test_ridge_objective_through_the_command_line(tmp_path, tiny_lm_dir, capsys):
    from mapalign import rewardmodels
    rng = np.random.default_rng(0)
    rows = [{"prompt": "Hi", "continuation": " ".join(["word"] * int(n)), "words": float(n),
             "other": None if i % 2 else float(n % 3)} for i, n in enumerate(rng.integers(1, 9, size=24))]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = str(tmp_path / "rm")
    assert run_command_line([f"--model_name_or_path={tiny_lm_dir}", "--objective=ridge", f"--output_dir={out}",
                               f"--data_source_path={data}", "--attributes=words,other", "--pooling=mean",
                               "--output_scale=0-100", "--label_range=1,8"]) == out
    info = rewardmodels.read_info(out)
    assert info["kind"] == "ridge" and info["pooling"] == "mean" and info["scale"] == {"lo": [1.0, 1.0],
                                                                                       "hi": [8.0, 8.0]}
    assert info["n_labelled"] == [24, 12]
    assert f"use it as --value_list=rm:{out}" in capsys.readouterr().out
