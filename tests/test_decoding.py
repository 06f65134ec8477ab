"""MC-aligned decoding (decoding.py): stable resampling, batching, shard naming and resume."""
import json
import os

import numpy as np
import pytest

from mapalign import decoding
from mapalign import records
from mapalign import resampling


# --------------------------------------------------------------------------------------------
# resampling maths (resampling.py)

def test_resample_weights_known_values():
    w = resampling.resample_weights([[0.0, np.log(3.0)], [5.0, 5.0]])
    np.testing.assert_allclose(w, [[0.25, 0.75], [0.5, 0.5]], atol=1e-15)


@pytest.mark.parametrize("spread", [1.0, 88.8, 745.0, 1e4, 1e6])
def test_resample_weights_no_overflow_for_large_spreads(spread):
    # the original exp(λᵀr)/Σexp(λᵀr) is inf/inf = NaN beyond ~709 (float64) or ~88.7 (float32)
    scores = np.array([[0.0, spread / 2, spread], [-spread, 0.0, -spread]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is benign
        w = resampling.resample_weights(scores)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    expected_top = 1.0 / (1.0 + np.exp(-spread / 2) + np.exp(-spread))
    np.testing.assert_allclose(w[0, 2], expected_top, rtol=1e-12)
    np.testing.assert_allclose(w[1, 1], 1.0 / (1.0 + 2 * np.exp(-spread)), rtol=1e-12)


def test_resample_weights_reject_non_finite_scores():
    with pytest.raises(resampling.DecodingError, match="NaN or infinite"):
        resampling.resample_weights([[0.0, np.nan]])


def test_effective_sample_size():
    np.testing.assert_allclose(resampling.effective_sample_size(np.full((2, 8), 1 / 8)), [8.0, 8.0])
    assert resampling.effective_sample_size([0.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert resampling.effective_sample_size([0.5, 0.5, 0.0, 0.0]) == pytest.approx(2.0)


def test_choose_samples_frequencies_match_softmax():
    # 20000 identical prompts with M = 4 samples on k = 2 values: empirical choice frequencies must
    # match softmax(λᵀr) within 5 binomial standard errors.
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, -1.0, 0.5]])
    lam = np.array([0.7, 1.3])
    P = 20000
    rewards = np.repeat(base[:, None, :], P, axis=1)
    chosen, weights, ess = resampling.choose_samples(rewards, lam, rng)
    expected = resampling.resample_weights(lam @ base)
    freq = np.bincount(chosen, minlength=4) / P
    se = np.sqrt(expected * (1 - expected) / P)
    assert np.all(np.abs(freq - expected) < 5 * se), (freq, expected)
    np.testing.assert_allclose(weights[0], expected)
    assert ess[0] == pytest.approx(1 / np.sum(expected ** 2))


def test_choose_samples_huge_spread_and_best_of_n():
    rewards = np.array([[[0.0, 1e4, 5.0], [1e3, -1e4, 0.0]]])  # k=1, P=2, M=3
    for seed in range(20):
        chosen, weights, ess = resampling.choose_samples(rewards, [1.0], np.random.default_rng(seed))
        assert chosen.tolist() == [1, 0]
    np.testing.assert_allclose(weights, [[0, 1, 0], [1, 0, 0]], atol=1e-300)
    np.testing.assert_allclose(ess, [1.0, 1.0])
    best, _, _ = resampling.choose_samples(rewards, [1.0], np.random.default_rng(1), best_of_n=True)
    assert best.tolist() == [1, 0]
    # negative λ tilts toward low rewards
    low, _, _ = resampling.choose_samples(rewards, [-1.0], np.random.default_rng(1), best_of_n=True)
    assert low.tolist() == [0, 1]


def test_choose_samples_zero_lambda_is_uniform():
    rewards = np.random.default_rng(2).normal(size=(2, 3000, 5))
    chosen, weights, ess = resampling.choose_samples(rewards, [0.0, 0.0], np.random.default_rng(3))
    np.testing.assert_allclose(weights, 0.2)
    np.testing.assert_allclose(ess, 5.0)
    freq = np.bincount(chosen, minlength=5) / 3000
    assert np.all(np.abs(freq - 0.2) < 5 * np.sqrt(0.16 / 3000))


# --------------------------------------------------------------------------------------------
# λ / value parsing and shard naming

def test_parse_lam_list_forms():
    np.testing.assert_allclose(decoding.parse_lam_list("0.5,1.25"), [0.5, 1.25])
    np.testing.assert_allclose(decoding.parse_lam_list((1, 2.5)), [1.0, 2.5])  # fire's tuple
    np.testing.assert_allclose(decoding.parse_lam_list(-0.5), [-0.5])
    with pytest.raises(decoding.DecodingError, match="finite"):
        decoding.parse_lam_list("1,nan")
    with pytest.raises(decoding.DecodingError, match="numbers"):
        decoding.parse_lam_list("a,b")


def test_resolve_values_checks_lengths():
    assert decoding.resolve_values("humor,gpt2-helpful", np.ones(2)) == ["humor", "gpt2-helpful"]
    assert len(decoding.resolve_values("all", np.ones(6))) == 6
    with pytest.raises(decoding.DecodingError, match="one λ per value"):
        decoding.resolve_values("humor", np.ones(2))


def test_shard_path_follows_original_naming():
    path = decoding.shard_path("results", "opt1.3b-Anthropic-harmless", [1.5478, 1.148], "gpt2-helpful,gpt2-harmless",
                               0, 50)
    assert path == os.path.join("results", "temp", "opt1.3b-Anthropic-harmless_lam=1.548,1.148_"
                                "val=gpt2-helpful,gpt2-harmless_0to50.json")
    path = decoding.shard_path("r", "m-d", [1] * 6, "all", 10, 20)
    assert os.path.basename(path) == "m-d_lam=1.000,1.000,1.000,1.000,1.000,1.000_val=all_10to20.json"
    path = decoding.shard_path("r", "m-d", [2], ("humor",), 0, 5)  # fire's tuple form
    assert os.path.basename(path) == "m-d_lam=2.000_val=humor_0to5.json"


# --------------------------------------------------------------------------------------------
# sampling and decoding with a tiny model and custom scorers

def letters(prompts, continuations):
    """Reward: number of letters in the continuation (deterministic, varies between samples)."""
    return np.array([sum(ch.isalpha() for ch in c) for c in continuations], dtype=float)


def spaces(prompts, continuations):
    return np.array([c.count(" ") for c in continuations], dtype=float)


SCORERS = {"letters": letters, "spaces": spaces}
PROMPTS = ["Tell me a joke about cats.", "How do I bake bread?", "Give me three tips for sleep."]


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from mapalign.models import load_model_and_tokenizer
    return load_model_and_tokenizer(tiny_lm_dir, device="cpu")


def test_mc_decode_batching_does_not_change_results(tiny):
    model, tok = tiny
    kw = dict(lam=[0.3, 0.2], value_names=["letters", "spaces"], MC_nsamples=4, scorers=SCORERS, max_new_tokens=10,
              seed=5)
    one_call, t1 = decoding.mc_decode(model, tok, PROMPTS, batch_size=12, **kw)
    # a call is seeded from (seed, absolute index of its first prompt): with one prompt per call
    # (batch_size 4 = M), decoding the list equals decoding each prompt alone at its index
    per_prompt = [decoding.mc_decode(model, tok, [p], batch_size=4, first_prompt_index=i, **kw)[0][0]
                  for i, p in enumerate(PROMPTS)]
    batched = decoding.mc_decode(model, tok, PROMPTS, batch_size=4, **kw)[0]
    assert batched == per_prompt
    assert len(one_call) == 3 and t1 > 0
    for res in one_call + batched:
        assert set(res) == {"continuation", "chosen_index", "mc_ess", "rewards"}
        assert 0 <= res["chosen_index"] < 4 and 1.0 <= res["mc_ess"] <= 4.0 + 1e-9
        r = res["rewards"]
        assert r["letters"] == letters(None, [res["continuation"].strip()])[0]


def test_mc_decode_large_lambda_picks_the_best_sample(tiny):
    model, tok = tiny
    res, _ = decoding.mc_decode(model, tok, PROMPTS, [1e4], ["letters"], MC_nsamples=6, scorers=SCORERS,
                                max_new_tokens=10, return_candidates=True, seed=1)
    for r in res:
        cand = np.array(r["candidate_rewards"][0])
        assert r["rewards"]["letters"] == cand.max()
        assert cand[r["chosen_index"]] == cand.max()
        assert np.isfinite(r["weights"]).all() and sum(r["weights"]) == pytest.approx(1.0)
        # ties at the maximum share the weight; ESS counts them
        assert r["mc_ess"] == pytest.approx(float(np.sum(cand == cand.max())))
    zero, _ = decoding.mc_decode(model, tok, PROMPTS, [0.0], ["letters"], MC_nsamples=6, scorers=SCORERS,
                                 max_new_tokens=10, seed=1)
    assert all(r["mc_ess"] == pytest.approx(6.0) for r in zero)


def test_mc_decode_rejects_bad_scorer(tiny):
    model, tok = tiny
    with pytest.raises(decoding.DecodingError, match="'bad'.*non-finite"):
        decoding.mc_decode(model, tok, PROMPTS[:1], [1.0], ["bad"], MC_nsamples=2, max_new_tokens=4,
                           scorers={"bad": lambda p, c: np.full(len(c), np.nan)})
    with pytest.raises(decoding.DecodingError, match="one λ per value"):
        decoding.mc_decode(model, tok, PROMPTS[:1], [1.0, 2.0], ["letters"], scorers=SCORERS)


# --------------------------------------------------------------------------------------------
# the shard job: naming, record keys, resume after a kill

def make_gen(tiny_lm_dir, tmp_path, **kw):
    from mapalign.generation import TextGeneration
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompt_file = tmp_path / "qs.json"
    prompt_file.write_text(json.dumps(PROMPTS * 3))
    return TextGeneration(basemodel_name=tiny_lm_dir, data_name=str(prompt_file), save_directory=str(tmp_path / "out"),
                          max_new_tokens=8, progress=False, **kw)


def test_write_mc_shard_records_and_naming(tiny_lm_dir, tmp_path):
    gen = make_gen(tiny_lm_dir, tmp_path)
    path = decoding.write_mc_shard(gen, "0.5,0.25", "letters,spaces", MC_nsamples=3, start_index=2, end_index=7,
                                   batch_size=6, scorers=SCORERS)
    base = gen.base_name
    assert path == os.path.join(str(tmp_path / "out"), "temp", f"{base}_lam=0.500,0.250_val=letters,spaces_2to7.json")
    recs = records.load_records(path)
    assert [r["prompt_id"] for r in recs] == [2, 3, 4, 5, 6]
    for r in recs:
        assert {"prompt", "generated", "continuation", "id", "prompt_id", "sample_id", "letters", "spaces",
                "chosen_index", "mc_ess"} <= set(r)
        assert r["id"] == f"{r['prompt_id']}-0" and r["prompt"] == (PROMPTS * 3)[r["prompt_id"]]
        assert r["generated"].startswith(r["prompt"])
        assert r["letters"] == letters(None, [r["continuation"]])[0]
    meta = records.load_metadata(path)
    assert meta["complete"] and meta["fingerprint"]["lam"] == [0.5, 0.25] and meta["seed"] == 0
    # end_index past the prompt count is clamped, as the original
    path2 = decoding.write_mc_shard(gen, 1.0, "letters", MC_nsamples=2, start_index=8, end_index=100,
                                    scorers=SCORERS)
    assert path2.endswith("_lam=1.000_val=letters_8to9.json")


def test_write_mc_shard_resumes_after_kill(tiny_lm_dir, tmp_path):
    kw = dict(lam_list=[0.4, 0.1], value_list="letters,spaces", MC_nsamples=3, start_index=0, end_index=9,
              batch_size=6)
    whole = records.load_records(decoding.write_mc_shard(make_gen(tiny_lm_dir, tmp_path / "a", checkpoint_every=2),
                                                         scorers=SCORERS, **kw))

    calls = {"n": 0}

    def dying(prompts, continuations):  # killed during the 3rd batch (prompts 4-5)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return letters(prompts, continuations)

    gen = make_gen(tiny_lm_dir, tmp_path / "b", checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        decoding.write_mc_shard(gen, scorers=dict(SCORERS, letters=dying), **kw)
    path = decoding.shard_path(gen.save_directory, gen.base_name, [0.4, 0.1], "letters,spaces", 0, 9)
    assert not os.path.exists(path)  # only the journal exists until the end
    with open(records.journal_path(path), encoding="utf-8") as f:
        assert sum(len(json.loads(line)["records"]) for line in f.read().splitlines()[1:]) == 4
    resumed = records.load_records(decoding.write_mc_shard(make_gen(tiny_lm_dir, tmp_path / "b", checkpoint_every=2),
                                                           scorers=SCORERS, **kw))
    assert resumed == whole
    assert records.load_metadata(path)["complete"]


def test_write_mc_shard_refuses_other_settings(tiny_lm_dir, tmp_path):
    gen = make_gen(tiny_lm_dir, tmp_path)
    path = decoding.write_mc_shard(gen, 1.0, "letters", MC_nsamples=2, end_index=3, scorers=SCORERS)
    before = open(path).read()
    with pytest.raises(records.CheckpointMismatch, match="made with MC_nsamples=2; this run has MC_nsamples=3"):
        decoding.write_mc_shard(gen, 1.0, "letters", MC_nsamples=3, end_index=3, scorers=SCORERS)
    assert open(path).read() == before
    with pytest.raises(decoding.DecodingError, match="num_beams=1"):
        decoding.write_mc_shard(make_gen(tiny_lm_dir, tmp_path / "c", num_beams=2), 1.0, "letters", scorers=SCORERS)


def test_gendata_method_scores_through_the_value_registry(tiny_lm_dir, tmp_path):
    # gendata's generate_from_MC_aligned_model with a value registered as a plugin (no scorers passed)
    from mapalign import values
    values.register_value("letters_test", fn=letters, overwrite=True)
    try:
        gen = make_gen(tiny_lm_dir, tmp_path)
        path = gen.generate_from_MC_aligned_model("2.0", "letters_test", MC_nsamples=4, start_index=0, end_index=3,
                                                  best_of_n=True, batch_size=8)
        assert os.path.basename(path) == f"{gen.base_name}_lam=2.000_val=letters_test_0to3.json"
        recs = records.load_records(path)
        assert [r["letters_test"] for r in recs] == [letters(None, [r["continuation"]])[0] for r in recs]
        assert records.load_metadata(path)["fingerprint"]["best_of_n"] is True
        # the same command again finds the shard complete and leaves it alone
        before = open(path).read()
        assert gen.generate_from_MC_aligned_model("2.0", "letters_test", MC_nsamples=4, end_index=3, best_of_n=True,
                                                  batch_size=8) == path
        assert open(path).read() == before
    finally:
        values.REGISTRY.pop("letters_test", None)
