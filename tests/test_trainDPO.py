"""trainDPO.py: MAP-DPO pair construction ranked by λᵀr, the DPO/KTO trainers on a tiny Llama, the
original baseline on local HH-RLHF-shaped data, naming and metadata."""
import json
import os

import numpy as np
import pytest

from mapalign import models
from mapalign import records
from mapalign import training
from mapalign import train_dpo as trainDPO
from test_genDPOdata import write_source

WORDS = ["sunny happy day", "grey rainy night", "good kind friend", "sad broken toy", "warm bread smell"]


def make_records(n_prompts=4, per_prompt=4, seed=0):
    """Records with several samples per prompt and two values a, b."""
    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_prompts):
        for s in range(per_prompt):
            cont = f"{WORDS[(p + s) % len(WORDS)]} {s}"
            recs.append({"prompt": f"prompt {p}?", "continuation": cont, "generated": f"prompt {p}? {cont}",
                         "id": f"{p}-{s}", "prompt_id": p, "sample_id": s,
                         "a": float(rng.normal()), "b": float(rng.normal())})
    return recs


def test_best_worst_pairs_follow_lambda():
    recs = make_records()
    lam = [2.0, -0.5]
    pairs = trainDPO.map_preference_pairs(recs, ["a", "b"], lam, pairing="best_worst")
    assert len(pairs) == 4
    for pair in pairs:
        group = [r for r in recs if r["prompt_id"] == pair["prompt_id"]]
        score = {r["continuation"]: 2.0 * r["a"] - 0.5 * r["b"] for r in group}
        assert pair["chosen"] == max(score, key=score.get) and pair["rejected"] == min(score, key=score.get)
        assert pair["gap"] == pytest.approx(max(score.values()) - min(score.values()))
        assert pair["prompt"] == group[0]["prompt"]
    # a huge margin drops every prompt, with a clear error
    with pytest.raises(ValueError, match="no preference pair"):
        trainDPO.map_preference_pairs(recs, ["a", "b"], lam, pairing="best_worst", margin=1e9)


def test_all_pairs_margin_and_cap():
    recs = make_records(n_prompts=2, per_prompt=4)
    pairs = trainDPO.map_preference_pairs(recs, ["a"], [1.0], pairing="all")
    assert len(pairs) == 2 * 6 and all(p["gap"] > 0 for p in pairs)
    gaps = sorted(p["gap"] for p in pairs)
    margin = gaps[5]
    assert all(p["gap"] > margin for p in trainDPO.map_preference_pairs(recs, ["a"], [1.0], pairing="all",
                                                                        margin=margin))
    capped = trainDPO.map_preference_pairs(recs, ["a"], [1.0], pairing="all", max_pairs_per_prompt=2)
    assert len(capped) == 4


def test_bradley_terry_labels_match_sigmoid_of_the_gap():
    # two samples per prompt, reward gap exactly 1: the better one must win with probability σ(1) = 0.731
    recs = []
    for p in range(3000):
        for s, value in enumerate((1.0, 0.0)):
            recs.append({"prompt": f"q{p}", "continuation": f"c{s}", "prompt_id": p, "sample_id": s, "v": value})
    pairs = trainDPO.map_preference_pairs(recs, ["v"], [1.0], pairing="bradley_terry", seed=1)
    wins = np.mean([p["chosen"] == "c0" for p in pairs])
    assert abs(wins - 1 / (1 + np.exp(-1.0))) < 0.025
    again = trainDPO.map_preference_pairs(recs, ["v"], [1.0], pairing="bradley_terry", seed=1)
    assert again == pairs


def test_pairing_needs_several_samples_and_known_values():
    recs = make_records(per_prompt=1)
    with pytest.raises(ValueError, match="one sample per prompt"):
        trainDPO.map_preference_pairs(recs, ["a"], [1.0])
    with pytest.raises(records.RecordsError, match="'zz' is missing"):
        trainDPO.map_preference_pairs(make_records(), ["zz"], [1.0])
    with pytest.raises(ValueError, match="pairing"):
        trainDPO.map_preference_pairs(make_records(), ["a"], [1.0], pairing="nope")


def test_kto_labels_and_loss_type_parsing():
    recs = make_records()
    examples = trainDPO.map_kto_examples(recs, ["a"], [1.0])
    for e in examples:
        group = [r["a"] for r in recs if r["prompt_id"] == e["prompt_id"]]
        own = next(r["a"] for r in recs if r["continuation"] == e["completion"] and r["prompt_id"] == e["prompt_id"])
        assert e["label"] == (own > np.mean(group))
    assert trainDPO.parse_loss_type("ipo,hinge") == ("dpo", ["ipo", "hinge"])
    assert trainDPO.parse_loss_type("kto") == ("kto", ["kto"])
    with pytest.raises(ValueError, match="cannot be combined"):
        trainDPO.parse_loss_type("kto,sigmoid")
    with pytest.raises(ValueError, match="unknown --loss_type"):
        trainDPO.parse_loss_type("simpo")


def write_results(path, recs, model_name):
    records.save_json_atomic(recs, path)
    records.save_metadata(path, {"model": model_name, "sampling": {"use_chat_template": None}})


def test_map_dpo_loss_falls_end_to_end(tiny_lm_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "tiny-builtin.json")
    write_results(path, make_records(n_prompts=4, per_prompt=4), tiny_lm_dir)
    save_path = trainDPO.train_map_dpo(path, lam_list="2.0,-0.5", value_list="a,b", pairing="best_worst",
                                       learning_rate=5e-3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                                       num_train_epochs=8, logging_steps=1, seed=0)
    assert save_path == os.path.join("modelsDPO", "tiny-builtin-lam_2.000_-0.500-val_a_b-best_worst-sigmoid")
    meta = training.load_training_metadata(save_path)
    assert meta["method"] == "MAP-DPO" and meta["lam"] == [2.0, -0.5] and meta["base_model"] == tiny_lm_dir
    assert meta["trainer"] == "TokenizedDPOTrainer" and meta["num_examples"] == 4  # exact ids, hard labels
    losses = [h["loss"] for h in meta["log_history"] if "loss" in h]
    assert losses[0] == pytest.approx(np.log(2), abs=1e-3)  # the policy starts at the reference
    assert np.mean(losses[-2:]) < 0.5 * losses[0]
    models.load_model_and_tokenizer(save_path, device="cpu")


def test_exact_token_ids_keep_sampled_ids_and_add_eos_only_to_stopped_samples(tiny_lm_dir):
    _, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    eos = tokenizer.eos_token_id
    short, long = " the cat", " the weather is lovely and the children are playing"
    n_long = len(tokenizer(long, add_special_tokens=False)["input_ids"])
    examples = [{"prompt": "Tell me", "chosen": short, "rejected": long, "gap": 1.0},
                {"prompt": "Tell me", "chosen": "x", "rejected": "y", "gap": 1.0, "prompt_ids": [5, 6],
                 "chosen_ids": [7, 8, eos], "rejected_ids": [9]}]
    formatted = models.format_prompts(tokenizer, [e["prompt"] for e in examples])
    out = trainDPO.exact_token_ids(tokenizer, examples, formatted, chat=True, max_new_tokens=n_long)
    assert out["prompt_ids"][0] == tokenizer(formatted[0], add_special_tokens=False)["input_ids"]
    assert out["chosen_ids"][0] == tokenizer(short, add_special_tokens=False)["input_ids"] + [eos]  # it stopped
    assert out["rejected_ids"][0] == tokenizer(long, add_special_tokens=False)["input_ids"]  # cut: no EOS
    # ids the sampler recorded are used as they are
    assert (out["prompt_ids"][1], out["chosen_ids"][1], out["rejected_ids"][1]) == ([5, 6], [7, 8, eos], [9])
    # the leading space sampled after the prompt is kept (the continuation is not stripped and re-joined)
    assert tokenizer.decode(out["chosen_ids"][0][:1]).startswith(" ")
    unknown = trainDPO.exact_token_ids(tokenizer, examples[:1], formatted[:1], chat=True, max_new_tokens=None)
    assert eos not in unknown["chosen_ids"][0]


def test_soft_pairs_need_the_sigmoid_loss(tiny_lm_dir, tmp_path):
    model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    pairs = trainDPO.map_preference_pairs(make_records(), ["a"], [1.0])
    assert all(0.5 <= p["soft_label"] < 1 and p["gap"] >= 0 for p in pairs)
    with pytest.raises(ValueError, match="soft labels are defined for --loss_type=sigmoid"):
        trainDPO.build_preference_trainer(model, tokenizer, pairs, str(tmp_path), loss_type="ipo",
                                          ref_model=training.frozen_copy(model), max_steps=1)


def test_dpo_loss_lists_and_kto_run(tiny_lm_dir, tmp_path):
    model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    pairs = trainDPO.map_preference_pairs(make_records(), ["a"], [1.0], pairing="all")
    trainer = trainDPO.build_preference_trainer(
        model, tokenizer, pairs, str(tmp_path / "dpo"), loss_type="ipo,hinge", loss_weights="1.0,0.5",
        ref_model=training.frozen_copy(model), learning_rate=1e-3, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_steps=2, logging_steps=1, save_steps=1000)
    assert trainer.loss_types == ["ipo", "hinge"] and trainer.loss_weights == [1.0, 0.5]
    trainer.train()
    model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    kto = trainDPO.build_preference_trainer(
        model, tokenizer, trainDPO.map_kto_examples(make_records(), ["a"], [1.0]), str(tmp_path / "kto"),
        loss_type="kto", ref_model=training.frozen_copy(model), learning_rate=1e-3, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_steps=2, logging_steps=1, save_steps=1000)
    assert type(kto).__name__ == "KTOTrainer"
    kto.train()
    assert len([h for h in kto.state.log_history if "loss" in h]) == 2


def test_original_baseline_on_local_hh_with_lora(tiny_lm_dir, tmp_path, monkeypatch):
    hh = tmp_path / "hh"
    write_source(str(hh), "harmless", 12)
    write_source(str(hh), "helpful", 12)
    monkeypatch.chdir(tmp_path)
    save_path = trainDPO.train_dpo(sample_size=8, beta=0.1, harmless_ratio=0.25, model_name=tiny_lm_dir,
                                   data_source_path=str(hh), use_lora=True, lora_r=4, learning_rate=1e-3,
                                   per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
                                   logging_steps=1)
    short = models.model_short_name(tiny_lm_dir)
    assert save_path == os.path.join("modelsDPO", f"{short}-8sample-0.1beta-0.25harmless")
    meta = training.load_training_metadata(save_path)
    assert meta["harmless_ratio"] == 0.25 and meta["use_lora"] and meta["lora_merged"]
    assert meta["num_examples"] == 8 and meta["hyperparameters"]["learning_rate"] == 1e-3
    assert os.path.isfile(os.path.join(save_path, "adapter", "adapter_model.safetensors"))
    assert json.load(open(os.path.join(save_path, "adapter", "adapter_config.json")))["r"] == 4


def test_killed_run_resumes_from_its_last_checkpoint(tiny_lm_dir, tmp_path):
    out = str(tmp_path / "run")
    pairs = trainDPO.map_preference_pairs(make_records(), ["a"], [1.0], pairing="all")

    def run(max_steps):
        model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
        trainer = trainDPO.build_preference_trainer(model, tokenizer, pairs, out, ref_model=training.frozen_copy(model),
                                                    learning_rate=1e-3, per_device_train_batch_size=2,
                                                    gradient_accumulation_steps=1, max_steps=max_steps,
                                                    logging_steps=1, save_steps=1)
        trainer.train(resume_from_checkpoint=training.resume_checkpoint(out))
        return trainer

    assert training.resume_checkpoint(out) is None  # nothing to resume: start fresh
    run(2)  # "killed" after step 2: its checkpoints stay
    assert training.resume_checkpoint(out).endswith("checkpoint-2")
    resumed = run(3)
    assert resumed.state.global_step == 3
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3]  # history restored
    assert training.resume_checkpoint(out, False) is None
    with pytest.raises(FileNotFoundError):
        training.resume_checkpoint(str(tmp_path / "empty"), True)


def test_argument_helpers():
    assert training.report_to_list("none") == [] and training.report_to_list("tensorboard,wandb") == [
        "tensorboard", "wandb"]
    assert training.sanitize_save_path("modelsPPO/sub/m-lam=1.000,2.000-val=a,b") == \
        "modelsPPO/sub/m-lam_1.000_2.000-val_a_b"
    assert training.map_model_name("opt1.3b", "Anthropic-harmless", [1.548, 1.148], ["gpt2-helpful", "gpt2-harmless"]) \
        == "opt1.3b-Anthropic-harmless-lam_1.548_1.148-val_gpt2-helpful_gpt2-harmless"


def test_iterated_map_dpo_regenerates_pairs_and_tracks_the_palette(tiny_lm_dir, tmp_path, monkeypatch):
    from mapalign import values
    values.register_value("test-e", fn=lambda p, c: np.array([x.count("e") / 4.0 for x in c]), overwrite=True)
    monkeypatch.chdir(tmp_path)
    recs = []
    for p in range(6):
        for s in range(3):
            cont = WORDS[(p + s) % len(WORDS)]
            recs.append({"prompt": f"prompt {p}?", "continuation": cont, "prompt_id": p, "sample_id": s,
                         "test-e": cont.count("e") / 4.0})
    path = str(tmp_path / "tiny-builtin.json")
    records.save_json_atomic(recs, path)
    records.save_metadata(path, {"model": tiny_lm_dir, "sampling": {"temperature": 1.0, "top_k": 0,
                                                                    "max_new_tokens": 4, "use_chat_template": None}})
    save = trainDPO.train_map_dpo(path, value_list="test-e", lam_list="1.0", palette="0.3", dual_update="ascent",
                                  dual_step=0.5, palette_rounds=2, palette_prompts=2,
                                  palette_samples=2, palette_tol_se=0.0, use_lora=True, lora_r=2, learning_rate=1e-3,
                                  per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=1,
                                  logging_steps=1)
    assert save == os.path.join("modelsDPO", "tiny-builtin-pal_0.300-val_test-e-soft-sigmoid")
    meta = training.load_training_metadata(save)
    assert meta["method"].startswith("iterated MAP-DPO") and meta["trainer"] == "SoftDPOTrainer"
    assert meta["sampling"]["max_new_tokens"] == 4 and meta["palette"] == [0.3]
    assert [e["step"] for e in meta["palette_rounds"]] == [1, 2] and len(meta["rounds"]) == 2  # round 2: fresh pairs
    r1 = meta["palette_rounds"][0]
    assert meta["rounds"][1]["lam"] == pytest.approx([max(0.0, 1.0 + 0.5 * (0.3 - r1["levels"][0]))])  # ascent
    assert meta["rounds"][0]["pairs"] > 0 and os.path.isfile(os.path.join(save, "palette_rounds.png"))
    values.REGISTRY.pop("test-e", None)
