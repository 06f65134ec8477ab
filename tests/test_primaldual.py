"""Known optima of the fine-tuning trainers on a one-step policy (one token from a 12-token vocabulary,
a reward vector per token), where p_λ ∝ p0·exp(λᵀr) is exactly computable; the primal-dual λ loop
(primaldual.py); λ targets and the mismatch check."""
import json

import numpy as np
import pytest
import torch

from mapalign import lambda_targets
from mapalign import models
from mapalign import primaldual
from mapalign import solver
from mapalign import training
from mapalign import train_dpo as trainDPO
from mapalign import train_ppo as trainPPO
from mapalign import tiny
from mapalign.errors import InputError

LAM = np.array([1.0, 0.6])


def table():
    """Rewards (2 values) of each decoded token text; special tokens decode to ""."""
    rng = np.random.default_rng(3)
    texts = ["", "q"] + tiny.ONE_STEP_WORDS
    return {t: rng.uniform(-1.5, 1.5, size=2) for t in texts}


TABLE = table()


def scorer(i):
    return lambda prompts, conts: np.array([TABLE[c.strip()][i] for c in conts])


SCORERS = {"v1": scorer(0), "v2": scorer(1)}


@pytest.fixture(scope="module")
def one_step_dir(tmp_path_factory):
    return tiny.one_step_lm(str(tmp_path_factory.mktemp("one_step")))


def load(path):
    model, tokenizer = models.load_model_and_tokenizer(path, device="cpu")
    model.train()
    return model, tokenizer


def token_probs(model, tokenizer):
    """Exact log π(y|"q") over the whole vocabulary."""
    ids = tokenizer("q", add_special_tokens=False)["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1).numpy()


def token_rewards(tokenizer):
    """(2, V) reward of every token id (its decoded text)."""
    texts = [tokenizer.decode([i], skip_special_tokens=True).strip() for i in range(len(tokenizer))]
    return np.stack([TABLE[t] for t in texts], axis=1)


def optimum_gap(logp, logp0, R, lam, beta=1.0):
    """RMS under p_λ of β·log π/π0 − λᵀr − const (const: its p_λ-mean), in nats: 0 exactly at π = p_λ.
    Weighted by p_λ because tokens the target almost never samples carry almost no gradient."""
    dev = beta * (logp - logp0) - lam @ R
    p_lam = np.exp(logp0 + lam @ R / beta)
    p_lam /= p_lam.sum()
    return float(np.sqrt(p_lam @ (dev - p_lam @ dev) ** 2))


def test_map_f_rloo_reaches_p_lambda(one_step_dir, tmp_path):
    model, tokenizer = load(one_step_dir)
    ref = training.frozen_copy(model)
    logp0 = token_probs(ref, tokenizer)
    R = token_rewards(tokenizer)
    assert optimum_gap(logp0, logp0, R, LAM) > 0.7  # p0 itself is far from p_λ
    trainer = trainPPO.build_trainer(model, tokenizer, ["q"] * 64, ["v1", "v2"], LAM.tolist(), SCORERS,
                                     str(tmp_path), beta=1.0, ref_model=ref, learning_rate=1e-2, batch_size=64,
                                     mini_batch_size=64, num_generations=16, max_new_tokens=1,
                                     use_chat_template=False, max_steps=80, logging_steps=10, save_steps=10 ** 6,
                                     seed=0)
    trainer.train()
    gap = optimum_gap(token_probs(model, tokenizer), logp0, R, LAM)
    assert gap < 0.05


def one_token_records(tokenizer):
    """One record per vocabulary token after the prompt "q", with its exact ids and rewards."""
    prompt_ids = tokenizer("q", add_special_tokens=False)["input_ids"]
    recs = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i], skip_special_tokens=True).strip()
        recs.append({"prompt": "q", "continuation": text, "prompt_id": 0, "sample_id": i, "prompt_ids": prompt_ids,
                     "continuation_ids": [i], "v1": float(TABLE[text][0]), "v2": float(TABLE[text][1])})
    return recs


def test_map_dpo_soft_labels_reach_p_lambda(one_step_dir, tmp_path):
    model, tokenizer = load(one_step_dir)
    ref = training.frozen_copy(model)
    logp0 = token_probs(ref, tokenizer)
    R = token_rewards(tokenizer)
    pairs = trainDPO.map_preference_pairs(one_token_records(tokenizer), ["v1", "v2"], LAM.tolist())
    assert len(pairs) == 12 * 11 // 2  # every pair of distinct tokens, even those decoding to the same text
    assert all(p["soft_label"] == pytest.approx(1 / (1 + np.exp(-p["gap"]))) for p in pairs)
    trainer = trainDPO.build_preference_trainer(model, tokenizer, pairs, str(tmp_path), beta=1.0, ref_model=ref,
                                                use_chat_template=False, learning_rate=3e-2, num_train_epochs=100,
                                                per_device_train_batch_size=66, gradient_accumulation_steps=1,
                                                logging_steps=10, save_steps=10 ** 6, seed=0)
    assert type(trainer).__name__ == "SoftDPOTrainer"
    row = trainer.train_dataset[0]
    assert row["prompt_ids"] == [3] and len(row["chosen_ids"]) == 1  # the sampled ids, no EOS appended
    trainer.train()
    gap = optimum_gap(token_probs(model, tokenizer), logp0, R, LAM)
    assert gap < 0.05


def exact_levels(logp, R):
    return R @ np.exp(logp)


def run_map_f(path, lam, tmp, steps, tracker=None, every=20):
    model, tokenizer = load(path)
    ref = training.frozen_copy(model)
    callback = None if tracker is None else trainPPO.PaletteCallback(tracker, every, tokenizer, lam=lam)
    trainer = trainPPO.build_trainer(model, tokenizer, ["q"] * 64, ["v1", "v2"], list(lam), SCORERS, str(tmp),
                                     beta=1.0, ref_model=ref, learning_rate=1e-2, batch_size=64, mini_batch_size=64,
                                     num_generations=16, max_new_tokens=1, use_chat_template=False, max_steps=steps,
                                     logging_steps=10, save_steps=10 ** 6, seed=0,
                                     callbacks=None if callback is None else [callback])
    if callback is not None:
        callback.trainer = trainer
    trainer.train()
    return model, tokenizer, ref, callback


def test_primal_dual_reaches_the_palette_where_a_mismatched_lambda_does_not(one_step_dir, tmp_path):
    model, tokenizer = load(one_step_dir)
    logp0 = token_probs(model, tokenizer)
    R = token_rewards(tokenizer)
    # the palette: the levels of p_λ for λ = (1, 0.6), so it is feasible with a known λ*
    logp_target = logp0 + LAM @ R
    logp_target -= np.log(np.exp(logp_target).sum())
    c = exact_levels(logp_target, R)
    # λ fitted on a mismatched sample: 4000 tokens drawn at temperature 0.5 instead of from p0 itself
    rng = np.random.default_rng(0)
    hot = np.exp(logp0 / 0.5) / np.exp(logp0 / 0.5).sum()
    draws = rng.choice(len(hot), size=4000, p=hot)
    mismatched = solver.solve_palette(R[:, draws], c)
    assert mismatched.success
    lam_bad = mismatched.lam
    fixed, tok, _, _ = run_map_f(one_step_dir, lam_bad, tmp_path / "fixed", 80)
    fixed_levels = exact_levels(token_probs(fixed, tok), R)
    assert np.all(fixed_levels - c < -0.07)  # the fixed λ falls short of the palette on every value

    tracker = primaldual.PaletteTracker(
        ["v1", "v2"], c, lambda p, t: np.stack([SCORERS["v1"](p, t), SCORERS["v2"](p, t)]), ["q"] * 16, 32,
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 1, "use_chat_template": False},
        update="exact", tol_se=2.0, seed=1)
    tracked, tok, _, callback = run_map_f(one_step_dir, lam_bad, tmp_path / "pd", 120, tracker=tracker, every=30)
    levels = exact_levels(token_probs(tracked, tok), R)
    history = tracker.history
    assert history[0]["step"] == 0 and len(history) >= 2
    assert all(len(e["lam"]) == 2 and len(e["levels"]) == 2 and e["kl"] == e["kl"] for e in history)
    assert np.max(np.abs(levels - c)) < 0.08, (levels, c, [e["lam"] for e in history])
    assert np.allclose(callback.lam, LAM, atol=0.3)


def test_exact_dual_update_undoes_the_policy_tilt():
    # samples of π = p_λ' (here: weights exp(λ'ᵀr) over a uniform p0); the update must return λ* of c
    rng = np.random.default_rng(1)
    R = rng.normal(size=(2, 4000))
    lam_true, lam_policy = np.array([0.8, 0.3]), np.array([0.2, 1.0])
    c = solver.realized_levels(R, lam_true)
    w = solver.tilt_weights(R, lam_policy)
    idx = rng.choice(R.shape[1], size=R.shape[1], p=w)  # draws from π
    log_ratio = -(lam_policy @ R[:, idx])  # log p0 − log π up to a constant
    result = primaldual.exact_dual_update(R[:, idx], log_ratio, c, np.zeros(R.shape[1], int))
    assert result.success and np.allclose(result.lam, lam_true, atol=0.1)


def test_levels_se_and_tolerance():
    R = np.array([[1.0, 3.0, 2.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    levels, se = primaldual.levels_and_se(R, np.array([0, 0, 1, 1]))
    assert np.allclose(levels, [2.5, 0.5])  # prompt means (2, 3) and (0, 1)
    assert np.allclose(se, [np.std([2, 3], ddof=1) / np.sqrt(2), np.std([0, 1], ddof=1) / np.sqrt(2)])
    ok, per = primaldual.within_tolerance([2.5, 0.5], se, [2.4, 5.0], [1.0, 0.0], tol_se=2.0)
    assert not ok and per == [True, False]
    assert primaldual.within_tolerance([2.5, 9.0], se, [2.4, 5.0], [1.0, 0.0])[0]  # λ = 0: ≥ c suffices
    assert np.allclose(primaldual.ascent_update([0.5, 0.1], [1.0, 0.0], [0.0, 1.0], 0.5), [1.0, 0.0])


def test_summary_line_names_the_check_and_the_callers_step():
    tracker = primaldual.PaletteTracker(["a", "b"], [0.2, 0.3], None, ["x"], 2, {}, update="ascent",
                                        step_name="DPO round")
    tracker.history.append({"round": 0, "step": 1, "lam": [2.0, 0.5], "levels": [0.1, 0.35], "se": [0.04, 0.03],
                            "kl": 0.25, "status": "ascent"})
    assert tracker.summary_line() == ("[palette check 0 after DPO round 1] a 0.100±0.040 (c 0.200, λ 2.000); "
                                      "b 0.350±0.030 (c 0.300, λ 0.500); KL 0.250; ascent")


def test_variance_components_recover_known_between_and_within_variance():
    rng = np.random.default_rng(0)
    G, m = 4000, 5
    prompt_effect = rng.normal(0.0, np.sqrt([[0.02], [0.3]]), size=(2, G))  # between variances 0.02 and 0.3
    R = np.repeat(prompt_effect, m, axis=1) + rng.normal(0.0, np.sqrt([[0.08], [0.05]]), size=(2, G * m))
    between, within = primaldual.variance_components(R, np.repeat(np.arange(G), m))
    assert np.allclose(between, [0.02, 0.3], rtol=0.08) and np.allclose(within, [0.08, 0.05], rtol=0.03)
    # the SE formula matches levels_and_se's empirical SE on the same layout
    se = primaldual.dual_level_se(between, within, G, m)
    assert np.allclose(se, primaldual.levels_and_se(R, np.repeat(np.arange(G), m))[1], rtol=0.05)
    with pytest.raises(InputError, match="≥ 2 samples each"):
        primaldual.variance_components(R[:, :G], np.arange(G))


def test_resolve_sampling_refuses_a_mismatch_naming_both_sides():
    target = lambda_targets.make_target(["a"], [1.0], estimator="per_prompt", base_model="m0", sampling={
        "temperature": 1.0, "top_k": 50, "top_p": 1.0, "max_new_tokens": 24, "use_chat_template": True})
    sampling, model, notes = primaldual.resolve_sampling(target, {"top_k": None}, None)
    assert sampling["top_k"] == 50 and sampling["max_new_tokens"] == 24 and model == "m0" and notes == []
    with pytest.raises(primaldual.TargetMismatchError, match="top_k: trainer 0 vs λ fitted with 50.*base model: "
                                                             "trainer 'm1' vs λ fitted on samples of 'm0'"):
        primaldual.resolve_sampling(target, {"top_k": 0}, "m1")
    with pytest.warns(UserWarning, match="allow_mismatch"):
        sampling, _, notes = primaldual.resolve_sampling(target, {"top_k": 0}, "m0", allow_mismatch=True)
    assert sampling["top_k"] == 0 and "top_k" in notes[0]
    with pytest.warns(UserWarning, match="records no sampling config"):  # an old λ file: default + warning
        sampling, _, notes = primaldual.resolve_sampling({"values": ["a"], "lam": [1.0]}, {}, "m0")
    assert sampling == primaldual.DEFAULT_SAMPLING
    with pytest.warns(UserWarning, match="pooled estimator"):
        primaldual.resolve_sampling(dict(target, estimator="pooled"), {}, "m0")


def test_trainPPO_palette_run_records_rounds_and_refuses_mismatch(tiny_lm_dir, tmp_path, monkeypatch):
    from mapalign import values
    values.register_value("test-len", fn=lambda p, c: np.array([len(x) / 20.0 for x in c]), overwrite=True)
    monkeypatch.chdir(tmp_path)
    prompts_file = tmp_path / "qs.json"
    prompts_file.write_text(json.dumps(["Tell me a joke", "How do I bake bread?", "Give me tips", "Be kind",
                                        "What is best?", "Why?"]))
    lam_file = tmp_path / "lam.json"
    lam_file.write_text(json.dumps(lambda_targets.make_target(["test-len"], [0.5], estimator="per_prompt",
                                                              base_model=tiny_lm_dir, sampling={
        "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 4, "use_chat_template": None})))
    with pytest.raises(primaldual.TargetMismatchError, match="max_new_tokens: trainer 6 vs λ fitted with 4"):
        trainPPO.main(lambda_file=str(lam_file), data_name=str(prompts_file), max_new_tokens=6)
    save = trainPPO.main(lambda_file=str(lam_file), data_name=str(prompts_file), palette="0.1",
                         palette_prompts=2, palette_samples=2, palette_every=1, batch_size=4, mini_batch_size=4,
                         num_generations=2, max_steps=2, use_lora=True, lora_r=2, learning_rate=1e-3,
                         save_path=str(tmp_path / "m"))
    meta = training.load_training_metadata(save)
    assert meta["palette"] == [0.1] and meta["objective"].startswith("min KL")
    assert meta["lr_scheduler_type"] == "constant"  # the default under primal-dual tracking
    assert meta["sampling"]["max_new_tokens"] == 4 and meta["lambda_target"]["lam"] == [0.5]
    assert meta["palette_rounds"][0]["step"] == 0 and all("kl" in e for e in meta["palette_rounds"])
    assert (tmp_path / "m" / "palette_rounds.png").is_file()
    values.REGISTRY.pop("test-len", None)


def test_infeasible_palette_is_refused_with_the_suggested_palette(tiny_lm_dir, tmp_path, monkeypatch):
    from mapalign import values
    values.register_value("test-len", fn=lambda p, c: np.array([min(len(x), 40) / 20.0 for x in c]),
                          overwrite=True)
    monkeypatch.chdir(tmp_path)
    prompts_file = tmp_path / "qs.json"
    prompts_file.write_text(json.dumps(["Tell me a joke", "How do I bake bread?", "Give me tips", "Be kind"]))
    with pytest.raises(ValueError, match=r"infeasible.*suggested palette: --palette=\d"):
        trainPPO.main(value_list="test-len", model_name=tiny_lm_dir, data_name=str(prompts_file), palette="5.0",
                      palette_prompts=2, palette_samples=2, batch_size=4, mini_batch_size=4, num_generations=2,
                      max_steps=1, max_new_tokens=4, use_lora=True, lora_r=2, save_path=str(tmp_path / "m"))
    values.REGISTRY.pop("test-len", None)
