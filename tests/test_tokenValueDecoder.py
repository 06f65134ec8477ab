"""Token-level value decoder: real rewards, the tilt schedule, batching, and plain top-k at λ = 0."""
import numpy as np
import pytest
import torch

from mapalign import decoding
from mapalign import token_decoder as tvd

PROMPTS = ["Tell me a joke about cats.", "How do I bake bread?", "Give me three tips for sleep."]


def letters(prompts, continuations):
    return np.array([sum(ch.isalpha() for ch in c) for c in continuations], dtype=float)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from mapalign.models import load_model_and_tokenizer
    return load_model_and_tokenizer(tiny_lm_dir, device="cpu")


def test_zero_lambda_is_plain_top_k_sampling(tiny):
    # with λ = 0 the processor only applies temperature and top-k: the same seed must give exactly
    # what transformers' own top-k sampling gives
    model, tok = tiny
    from mapalign.models import format_prompts
    conts, stats = tvd.value_aligned_decode(model, tok, PROMPTS, ["letters"], [0.0], max_decode_length=10, top_k=5,
                                            temperature=0.7, scorers={"letters": letters}, seed=3)
    enc = tok(format_prompts(tok, PROMPTS), return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(3)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, top_k=5, temperature=0.7, top_p=1.0, max_new_tokens=10,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert conts == tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert stats["scorer_calls"] == 0 and stats["texts_scored"] == 0


def test_processor_tilts_top_k_log_probs_by_lambda_r(tiny):
    # one tilt step on a hand-made logit row: the output distribution must be
    # softmax(logit/T + λᵀr) over the top-k candidates, with the rewards of prompt + partial + candidate
    _, tok = tiny
    seen = {}

    def spy(prompts, continuations):
        seen["prompts"], seen["continuations"] = list(prompts), list(continuations)
        return np.arange(len(continuations), dtype=float)  # reward = candidate rank

    Processor = tvd._tilt_processor_class()
    lam = np.array([0.5])
    proc = Processor(tok, ["P"], 2, ["v"], lam, {"v": spy}, top_k=3, interval=3, temperature=2.0,
                     stop_ids=[tok.eos_token_id])
    partial = tok.encode("ab", add_special_tokens=False)
    input_ids = torch.tensor([[7, 8] + partial[:1] + [9, 10]])  # prompt width 2, then 3 generated tokens
    scores = torch.full((1, tok.vocab_size if hasattr(tok, "vocab_size") else 512), -5.0)
    scores[0, [20, 30, 40]] = torch.tensor([4.0, 2.0, 1.0])
    out = proc(input_ids, scores)  # step 3: not a tilt step (tilts at 2, 5, 8, ...)
    np.testing.assert_allclose(out[0, [20, 30, 40]].numpy(), [2.0, 1.0, 0.5])
    assert torch.isinf(out).sum() == scores.shape[1] - 3 and proc.scorer_calls == 0
    out = proc(input_ids[:, :-1], scores)  # step 2: tilt
    assert proc.scorer_calls == 1 and seen["prompts"] == ["P"] * 3
    expected_texts = tok.batch_decode([input_ids[0, 2:4].tolist() + [c] for c in (20, 30, 40)],
                                      skip_special_tokens=True)
    assert seen["continuations"] == [t.strip() for t in expected_texts]
    p = torch.softmax(out[0], -1)[[20, 30, 40]].numpy()
    expected = np.exp(np.array([2.0, 1.0, 0.5]) + 0.5 * np.arange(3))
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-6)


def test_schedule_batching_and_real_rewards(tiny):
    model, tok = tiny
    calls = []

    def counting(prompts, continuations):
        calls.append((list(prompts), list(continuations)))
        return letters(prompts, continuations)

    conts, stats = tvd.value_aligned_decode(model, tok, PROMPTS, ["letters"], [1.0], max_decode_length=9, top_k=4,
                                            interval=3, scorers={"letters": counting}, seed=0, batch_size=3)
    # tilt steps 2, 5, 8: at most 3 scorer calls, each scoring every active prompt's 4 candidates at once
    assert 1 <= stats["scorer_calls"] == len(calls) <= 3
    for prompts, texts in calls:
        assert len(texts) % 4 == 0 and len(texts) <= 12
        assert set(prompts) <= set(PROMPTS)
        for i in range(0, len(texts), 4):  # a prompt's 4 candidates share the prompt
            assert len(set(prompts[i:i + 4])) == 1
    assert stats["texts_scored"] == sum(len(t) for _, t in calls)
    assert len(conts) == 3 and stats["new_tokens"] > 0


def test_strong_tilt_moves_the_reward(tiny):
    # a reward that counts letters: a strong positive tilt at every step must give more letters
    # than a strong negative one (same seeds, 6 prompts)
    model, tok = tiny
    prompts = PROMPTS * 2
    kw = dict(max_decode_length=12, top_k=20, interval=1, scorers={"letters": letters}, seed=0)
    up, _ = tvd.value_aligned_decode(model, tok, prompts, ["letters"], [5.0], **kw)
    down, _ = tvd.value_aligned_decode(model, tok, prompts, ["letters"], [-5.0], **kw)
    assert letters(None, [c.strip() for c in up]).mean() > letters(None, [c.strip() for c in down]).mean() + 5


def test_generate_value_aligned_signature_and_returns(tiny):
    model, tok = tiny
    text = tvd.generate_value_aligned(PROMPTS[0], 8, 5, model, tok, "letters", value_param=1, interval=2,
                                      scorers={"letters": letters}, seed=1)
    assert isinstance(text, str) and text.startswith(PROMPTS[0] + " ")
    texts = tvd.generate_value_aligned(PROMPTS, 8, 5, model, tok, "letters,spaces", value_param=[1.0, 0.5],
                                       scorers={"letters": letters, "spaces": letters}, seed=1,
                                       use_chat_template=False)
    assert len(texts) == 3 and all(t.startswith(p) for t, p in zip(texts, PROMPTS))
    with pytest.raises(decoding.DecodingError, match="one per value"):
        tvd.generate_value_aligned(PROMPTS[0], 4, 5, model, tok, "letters", value_param=[1.0, 2.0],
                                   scorers={"letters": letters})


def test_stop_at_period(tiny):
    # the tiny vocabulary has exactly one token containing "." (the period itself). A reward for
    # ending with "." makes every 4th token a period; with stop_at_period each row stops at its first
    # period, so a continuation holds one ".", at its end; without it rows run past periods.
    model, tok = tiny
    assert [t for t in tok.get_vocab() if "." in t] == ["."]

    def ends_with_period(prompts, continuations):
        return np.array([10.0 * c.endswith(".") for c in continuations])

    kw = dict(max_decode_length=38, top_k=400, interval=4, seed=2, scorers={"dot": ends_with_period})
    stopped, _ = tvd.value_aligned_decode(model, tok, PROMPTS, ["dot"], [1.0], stop_at_period=True, **kw)
    assert all(c.count(".") == 1 and c.endswith(".") for c in stopped), stopped
    free, _ = tvd.value_aligned_decode(model, tok, PROMPTS, ["dot"], [1.0], stop_at_period=False, **kw)
    assert all(c.count(".") >= 2 for c in free), free
