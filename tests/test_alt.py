"""alt.py: quantiles, the datapool, balancing, the EOS rule, feedback wording, the loss against a
hand computation, Quark tokens, the LLM judges on a tiny model, and palette feedback."""
import math

import numpy as np
import pytest
import torch

from mapalign import alt


# ---------------------------------------------------------------------------------------------
# quantiles, EOS, datapool, balancing

def test_quantile_labels_equal_bins_remainder_spread_and_none_dropped():
    rewards = [1.0, None, 3.0, 2.0, 5.0, 4.0, 0.5, float("nan")]
    q = alt.quantile_labels(rewards, 5)
    # 6 scored rewards into 5 bins: sizes 2,1,1,1,1 (upstream put the remainder in the worst bin: 1,1,1,1,2)
    assert q == [3, None, 1, 2, 0, 0, 4, None]
    sizes = np.bincount([x for x in alt.quantile_labels(list(range(23)), 5) if x is not None])
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert alt.quantile_labels([1.0, 2.0], 5) == [2, 0]  # fewer samples than bins: spread over the range
    assert alt.quantile_labels([2.0, 2.0, 2.0], 3) == [1, 1, 1]  # ties share the bin of their middle rank
    assert alt.quantile_labels([0.5, 0.0, 0.0, 0.0, 0.0, -0.5], 3) == [0, 1, 1, 1, 1, 2]
    assert alt.quantile_labels([None, None], 5) == [None, None]


def test_eos_rule():
    assert alt.needs_eos("A short answer", 5, 64)            # stopped before the limit
    assert alt.needs_eos("It ends here.", 64, 64)            # at the limit but a full sentence
    assert alt.needs_eos("Really?  ", 64, 64)
    assert not alt.needs_eos("and then the cat went", 64, 64)  # cut by the limit: no EOS


def _fb(kind="alt_rm", values=("sentiment",)):
    return alt.Feedback(kind, values=list(values) if kind in ("quark", "alt_rm", "palette") else [])


def test_datapool_per_prompt_and_global_quantiles_flush_and_json(tmp_path):
    fb = _fb()
    samples = [{"prompt_id": p, "prompt": f"p{p}", "generation": f"g{i}", "truncated": False,
                "reward": float(10 * p + i)} for p in range(2) for i in range(5)]
    pool = alt.DataPool(fb, "per_prompt")
    assert pool.add(samples + [{"prompt_id": 0, "prompt": "p0", "generation": "x", "reward": None}]) == 1
    assert [s["quantile"] for s in pool.samples] == [4, 3, 2, 1, 0] * 2
    assert pool.samples[4]["feedback"] == "Excellent." and pool.samples[0]["feedback"] == "Horrible."
    glob = alt.DataPool(fb, "global")
    glob.add([dict(s) for s in samples])
    assert [s["quantile"] for s in glob.samples] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]  # one ranking over both prompts
    # drop_factor: 1.0 wipes, 0.0 keeps all, 0.5 keeps half of each (prompt, category) group
    for factor, kept in ((1.0, 0), (0.0, 10)):
        p = alt.DataPool(fb, drop_factor=factor)
        p.add([dict(s) for s in samples])
        p.flush(np.random.default_rng(0))
        assert len(p.samples) == kept
    p = alt.DataPool(fb, drop_factor=0.5)
    p.add([dict(s, quantile=None) for s in samples] + [dict(s, generation="dup") for s in samples])
    p.flush(np.random.default_rng(0))
    assert len(p.samples) == 10 and sorted((s["prompt_id"], s["category"]) for s in p.samples) == \
        sorted((pid, c) for pid in range(2) for c in range(5))
    pool.save(str(tmp_path / "pool.json"))
    again = alt.DataPool.load(str(tmp_path / "pool.json"), fb)
    assert again.samples == pool.samples and again.quantiles == "per_prompt"
    with pytest.raises(alt.ALTError, match="holds 'alt_rm' feedback"):
        alt.DataPool.load(str(tmp_path / "pool.json"), _fb("quark"))


def test_balanced_subset_per_quantile_prefers_complete_samples():
    samples = [{"id": i, "category": i % 5, "truncated": i >= 10} for i in range(15)]  # 3 per category
    kept = alt.balanced_subset(samples, 5, per_category=2, rng=np.random.default_rng(1))
    assert sorted(s["category"] for s in kept) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert not any(s["truncated"] for s in kept)  # each category has two complete samples
    short = [{"id": 0, "category": 0, "truncated": True}, {"id": 1, "category": 0, "truncated": False}]
    assert [s["id"] for s in alt.balanced_subset(short, 5, per_category=2)] == [1, 0]  # topped up with truncated


def test_balanced_subset_per_prompt_quota_passing_and_leftovers():
    # 4 categories, 8 per prompt: quota 2 each. Category 0 has 1 sample (passes 1 on), category 1 has 5,
    # category 2 none (passes 2 on), category 3 has 1; free-text answers (category None) fill the rest.
    samples = ([{"id": "a0", "category": 0}] + [{"id": f"b{i}", "category": 1, "truncated": i < 2} for i in range(5)]
               + [{"id": "d0", "category": 3}] + [{"id": f"x{i}", "category": None} for i in range(3)])
    kept = alt.balanced_subset(samples, 4, per_prompt=8, rng=np.random.default_rng(0))
    ids = [s["id"] for s in kept]
    assert len(ids) == 8
    assert ids[0] == "a0" and ids[-4] == "d0"
    assert sorted(ids[1:4]) == ["b2", "b3", "b4"]  # quota 2 + 1 passed on; complete ones first
    assert ids[-3:] == ["b0", "b1", "x0"]  # leftovers in pool order
    with pytest.raises(alt.ALTError):
        alt.balanced_subset(samples, 4)


# ---------------------------------------------------------------------------------------------
# feedback wording, palette

def test_feedback_kinds_conditioning_and_bad_input():
    rm = _fb()
    assert rm.condition("Excellent.", " Hi there ") == "Excellent. input: Hi there"
    assert rm.conditioning_template(rm.best_feedback()) == "Excellent. input: {prompt}"
    assert _fb("quark").condition(_fb("quark").best_feedback(), "Hi") == "_QUANTILE_TOKEN_0_Hi"
    lmc = _fb("alt_lmc")
    assert lmc.condition(lmc.best_feedback(), "Human: x Assistant:") == "Harmless and very helpful.\n\nHuman: x Assistant:"
    assert lmc.lmc_index("harmless and HELPFUL.") == 1 and lmc.lmc_index("Quite nice") is None
    assert _fb("alt_lmu").category_of({"score": 3}) == 0
    with pytest.raises(alt.ALTError, match="'Great' is not an LMC category"):
        lmc.check_feedback("Great")
    with pytest.raises(alt.ALTError, match="not an ALT-RM phrase"):
        rm.check_feedback("Superb.")
    with pytest.raises(alt.ALTError, match=r"\{prompt\}"):
        alt.Feedback("alt_rm", values=["sentiment"], template="{feedback} only")
    with pytest.raises(alt.ALTError, match="value_list"):
        alt.Feedback("palette")
    with pytest.raises(alt.ALTError, match="feedback must be one of"):
        alt.Feedback("steerlm")


def test_palette_round_trip():
    fb = alt.Feedback("palette", values=["sentiment", "humor"])
    pool = alt.DataPool(fb)
    pool.add([{"prompt_id": 0, "prompt": "p", "generation": str(i), "reward": float(i),
               "value_rewards": {"sentiment": float(i), "humor": float(-i)}} for i in range(5)])
    best = max(pool.samples, key=lambda s: s["value_rewards"]["sentiment"])
    assert best["bins"] == {"sentiment": 0, "humor": 4}
    assert best["feedback"] == "sentiment: top 20% (excellent); humor: top 100% (horrible)"
    assert fb.parse_palette(best["feedback"]) == best["bins"]
    # a MAP palette as quantile levels renders the same string as the training bins it asks for
    assert fb.render_palette([0.8, 0.1]) == best["feedback"]
    assert fb.render_palette({"sentiment": 0.5, "humor": 0.6}) == "sentiment: top 60% (mediocre); humor: top 40% (good)"
    assert fb.best_feedback() == fb.render_palette([1.0, 1.0]) == \
        "sentiment: top 20% (excellent); humor: top 20% (excellent)"
    # the word is optional on input, but must name the same bin as the percentage
    assert fb.parse_palette("sentiment: top 60%; humor: top 40%") == {"sentiment": 2, "humor": 1}
    with pytest.raises(alt.ALTError, match=r"\(bad\) does not name top 20%.*\(excellent\)"):
        fb.parse_palette("sentiment: top 20% (bad); humor: top 20%")
    # numbers only (palette_words=False), and whenever the phrases are not one per bin
    plain = alt.Feedback("palette", values=["sentiment", "humor"], palette_words=False)
    assert plain.render_palette([0.8, 0.5]) == "sentiment: top 20%; humor: top 60%"
    assert alt.Feedback("palette", values=["sentiment"], num_quantiles=4).render_palette([0.8]) == "sentiment: top 25%"
    with pytest.raises(alt.ALTError, match="renders no words"):
        plain.parse_palette("sentiment: top 20% (excellent); humor: top 60%")
    for bins in ({"sentiment": 1, "humor": 3}, {"sentiment": 4, "humor": 0}):
        assert fb.parse_palette(fb.render_bins(bins)) == bins
    with pytest.raises(alt.ALTError, match="one quantile level per value"):
        fb.render_palette([0.5])
    with pytest.raises(alt.ALTError, match=r"\(0, 1\]"):
        fb.render_palette([0.0, 0.5])
    with pytest.raises(alt.ALTError, match="not 'value: top N%"):
        fb.check_feedback("sentiment: great")


# ---------------------------------------------------------------------------------------------
# the loss

def _hand_terms(logits, target, ref_logits):
    """float64 loops over the vocabulary: NLL, KL(ref || policy), entropy of one position."""
    lp = [x - math.log(sum(math.exp(y) for y in logits)) for x in logits]
    rp = [x - math.log(sum(math.exp(y) for y in ref_logits)) for x in ref_logits]
    nll = -lp[target]
    kl = sum(math.exp(r) * (r - p) for r, p in zip(rp, lp))
    ent = -sum(math.exp(p) * p for p in lp)
    return nll, kl, ent


def test_loss_terms_match_a_hand_computation_on_a_tiny_model(tiny_lm_dir):
    from mapalign import models
    model, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    reference = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")[0]
    with torch.no_grad():  # make the policy differ from the reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([tok("Tell me a joke about cats")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
        ref_logits = reference(input_ids=ids).logits[0, :-1].double()
    targets = ids[0, 1:]
    nll, kl, ent = alt.alt_token_terms(logits, targets, ref_logits)
    for t in range(len(targets)):
        h = _hand_terms(logits[t].tolist(), int(targets[t]), ref_logits[t].tolist())
        assert (float(nll[t]), float(kl[t]), float(ent[t])) == pytest.approx(h, rel=1e-4, abs=1e-6)
    # direction: KL(ref || policy), not KL(policy || ref)
    reverse = _hand_terms(ref_logits[0].tolist(), 0, logits[0].tolist())[1]
    assert abs(float(kl[0]) - reverse) > 1e-4
    _, kl0, _ = alt.alt_token_terms(logits, targets, None)
    assert float(kl0.abs().sum()) == 0.0

    # the loss function the trainer uses: Σ nll + β·kl − α·entropy (entropy rewarded) over completion tokens
    factory = alt.alt_loss_factory(tiny_lm_dir, beta=0.05, alpha=0.06)
    loss_fn = factory(model, tok)
    labels = ids.clone()
    labels[0, :3] = -100
    total, n, metrics = loss_fn(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    m = (labels[0, 1:] != -100)
    expect = float((nll[m] + 0.05 * kl[m] - 0.06 * ent[m]).sum())
    assert int(n) == int(m.sum()) and float(total.detach()) == pytest.approx(expect, rel=1e-4)
    assert metrics["kl_ref"] > 0 and metrics["entropy_alt"] > 0


# ---------------------------------------------------------------------------------------------
# Quark

def test_quark_tokens_embedding_init_reference_input_and_slicing(tiny_lm_dir):
    from mapalign import models
    model, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu", padding_side="right")
    old_rows = model.get_input_embeddings().weight.detach().clone()
    model, tok, old = alt.add_quark_tokens(model, tok, 5, seed=0)
    assert old == old_rows.shape[0] and len(tok) == old + 5
    assert tok.convert_tokens_to_ids("_QUANTILE_TOKEN_4_") == old + 4
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == old + 5 and torch.equal(emb[:old], old_rows)
    new = emb[old:]
    z = (new - old_rows.mean(0)) / old_rows.std(0)
    assert z.abs().max() < 6 and 0.5 < float(z.std()) < 1.5  # drawn from N(mean, std) per dimension
    assert alt.add_quark_tokens(model, tok, 5)[2] == old  # idempotent
    ids = tok("_QUANTILE_TOKEN_0_Tell me a joke", return_tensors="pt")["input_ids"]
    assert int(ids[0, 0]) == old and tok.decode(ids[0, 1:]) == "Tell me a joke"
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    stripped = alt.strip_new_tokens(batch, old, tok.pad_token_id)
    assert stripped["input_ids"].tolist() == [ids[0, 1:].tolist()]
    assert (stripped["labels"] != -100).sum() == (labels != -100).sum()
    # KL over the old vocabulary: the policy's logits sliced to it and renormalised
    logits = torch.randn(3, old + 5, dtype=torch.float64)
    ref = torch.randn(3, old, dtype=torch.float64)
    _, kl, _ = alt.alt_token_terms(logits, torch.tensor([0, 1, 2]), ref, kl_vocab=old)
    h = _hand_terms(logits[1, :old].tolist(), 1, ref[1].tolist())[1]
    assert float(kl[1]) == pytest.approx(h, rel=1e-6)
    factory = alt.alt_loss_factory(tiny_lm_dir, beta=0.05, alpha=0.06, quark_vocab=old)
    total, n, metrics = factory(model, tok)(model, batch)
    assert int(n) == int((labels[0, 1:] != -100).sum()) and math.isfinite(float(total))


# ---------------------------------------------------------------------------------------------
# judges

def test_lmc_pick_is_the_highest_loglikelihood_category(tiny_lm_dir):
    judge = alt.LocalJudge(tiny_lm_dir, device="cpu")
    ll = judge.category_logliks("How do I bake bread?", "Use flour, water and yeast.", alt.LMC_CATEGORIES)
    # by hand for one category
    tok, model = judge.tokenizer, judge.model
    ctx = tok(alt.lmc_prompt("How do I bake bread?", "Use flour, water and yeast."), add_special_tokens=False)["input_ids"]
    cat = tok(" " + alt.LMC_CATEGORIES[2], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cat])).logits[0].double(), -1)
    hand = sum(float(logp[len(ctx) + i - 1, c]) for i, c in enumerate(cat))
    assert ll[2] == pytest.approx(hand, rel=1e-4)
    assert judge.lmc("How do I bake bread?", "Use flour, water and yeast.") == alt.LMC_CATEGORIES[int(np.argmax(ll))]


def test_lmu_parsing_and_failures_become_none(tiny_lm_dir):
    good = "Analysis: Clear and correct.\nFeedback: Accurate and coherent, but misses the second part.\nScore: 2"
    assert alt.parse_lmu(good) == {"analysis": "Clear and correct.", "score": 2,
                                   "feedback": "Accurate and coherent, but misses the second part."}
    assert alt.parse_lmu("**Analysis:** ok\n**Feedback:** fine\n**Score:** 3/3")["score"] == 3
    for bad in ("", None, "Analysis: x\nFeedback: y", "Analysis: x\nFeedback: y\nScore: 7",
                "Analysis: x\nFeedback: y\nScore: high"):
        assert alt.parse_lmu(bad) is None
    judge = alt.LocalJudge(tiny_lm_dir, device="cpu", max_new_tokens=12)
    text = judge.lmu_text("How do I bake bread?", "Use flour.")
    assert isinstance(text, str)
    assert judge.lmu("How do I bake bread?", "Use flour.") == alt.parse_lmu(text)  # a random model: None


def test_vllm_serve_as_a_real_judge_endpoint(tmp_path):
    """`vllm serve` (from .venv-vllm, `make vllm`; engines.ManagedServer of the vLLM engine) running
    SmolLM2 on 127.0.0.1 answers the LMC and LMU judge prompts through openai_compat."""
    from conftest import require
    from mapalign import engines
    require(engines.vllm_venv_ready(), "vLLM is not installed: run `make vllm` (builds .venv-vllm)")
    from mapalign import openai_compat
    server = engines.ManagedServer("smollm2-135m", served_model="smollm2", log_path=str(tmp_path / "vllm.log"))
    try:
        server.wait_ready(timeout=600)
        client = openai_compat.Client(server.url, model="smollm2", cache_dir=str(tmp_path / "cache"), backoff=0.5)
        judge = alt.ChatJudge(client)
        answer = judge.lmc("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake it.")
        assert isinstance(answer, str) and answer  # a category, or free text kept as leftover filler
        text = judge.lmu_text("How do I bake bread?", "Mix flour, water and yeast, then bake.")
        assert isinstance(text, str) and text.strip()
        assert judge.lmu("How do I bake bread?", "Mix flour, water and yeast, then bake.") == alt.parse_lmu(text)
        requests = client.stats["requests"]
        judge.lmc("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake it.")
        assert client.stats["requests"] == requests and client.stats["cache_hits"] >= 1  # temperature 0: cached
    finally:
        server.stop()
