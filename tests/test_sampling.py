"""The one HF sampling loop (sampling.py): seeding, KV-prefix sharing, chunking and token counting, on the
tiny random models (llama and gpt2 layouts)."""
import pytest

from mapalign import sampling

PROMPTS = ["Tell me a joke about cats.", "How do I bake bread?", "Give me three tips for sleep."]


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from mapalign.models import load_model_and_tokenizer
    return load_model_and_tokenizer(tiny_lm_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from mapalign import tiny as tiny_models
    from mapalign.models import load_model_and_tokenizer
    return load_model_and_tokenizer(tiny_models.tiny_causal_lm(str(tmp_path_factory.mktemp("g2")), arch="gpt2"),
                                    device="cpu")


def chat_inputs(tok):
    from mapalign.models import format_prompts
    return format_prompts(tok, PROMPTS, use_chat_template=True)


def test_block_seed_is_a_pure_function_of_its_key():
    s = sampling.block_seed(3, 5, 0)
    assert s == sampling.block_seed(3, 5, 0) and 0 <= s < 2 ** 63
    assert len({s, sampling.block_seed(3, 6, 0), sampling.block_seed(3, 5, 1), sampling.block_seed(4, 5, 0)}) == 4


@pytest.mark.parametrize("which", ["tiny", "tiny_gpt2"])
@pytest.mark.parametrize("top_k", [1, 50])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_shared_prefix_matches_plain_generation(which, top_k, batch_size, request):
    # Sharing each prompt's KV cache among its samples must not change the samples: same seed, same
    # tokens, for greedy (top_k=1) and sampled decoding, on llama and gpt2 layouts, also when a chunk of
    # batch_size=4 rows holds part of a prompt's samples.
    model, tok = request.getfixturevalue(which)
    kw = dict(max_new_tokens=12, top_k=top_k, seed=7, key=2, batch_size=batch_size)
    shared = sampling.sample(model, tok, chat_inputs(tok), 3, **kw)
    plain = sampling.sample(model, tok, chat_inputs(tok), 3, share_prefix=False, **kw)
    assert shared == plain
    assert len(shared.texts) == 3 and all(len(s) == 3 for s in shared.texts)
    if top_k == 1:
        assert all(len(set(s)) == 1 for s in shared.texts)  # greedy: the 3 samples agree
    assert 0 < shared.new_tokens <= 3 * 3 * 12


def test_seeding_is_per_call_and_independent_of_the_rng_state(tiny):
    import torch
    model, tok = tiny
    kw = dict(max_new_tokens=8, seed=1, key=10, batch_size=4)
    first = sampling.sample(model, tok, chat_inputs(tok), 2, **kw)
    torch.manual_seed(12345)  # whatever ran before does not matter
    assert sampling.sample(model, tok, chat_inputs(tok), 2, **kw) == first
    assert sampling.sample(model, tok, chat_inputs(tok), 2, **dict(kw, key=11)).texts != first.texts
    # one chunk whatever its size: batch_size None and any batch_size ≥ rows give the same samples
    one = sampling.sample(model, tok, chat_inputs(tok), 2, max_new_tokens=8, seed=1, key=10)
    assert sampling.sample(model, tok, chat_inputs(tok), 2, max_new_tokens=8, seed=1, key=10, batch_size=100) == one
    # seed=None leaves torch's RNG to the caller
    torch.manual_seed(5)
    a = sampling.sample(model, tok, chat_inputs(tok), 2, max_new_tokens=8)
    torch.manual_seed(5)
    assert sampling.sample(model, tok, chat_inputs(tok), 2, max_new_tokens=8) == a


def test_token_ids_and_counts(tiny):
    model, tok = tiny
    inputs = chat_inputs(tok)
    # a frequent token as an extra stop id, so that rows end at different lengths
    out = sampling.sample(model, tok, inputs, 4, max_new_tokens=10, seed=0, batch_size=5)
    common = max(range(len(tok)), key=lambda t: sum(ids.count(t) for g in out.token_ids for ids in g))
    out = sampling.sample(model, tok, inputs, 4, max_new_tokens=10, seed=0, batch_size=5,
                          stop_ids=[tok.eos_token_id, common])
    lengths = [len(ids) for group in out.token_ids for ids in group]
    assert out.new_tokens == sum(lengths) and min(lengths) < 10
    for group, texts in zip(out.token_ids, out.texts):
        for ids, text in zip(group, texts):
            assert all(t not in (tok.eos_token_id, common) for t in ids[:-1])  # cut after the first stop
            assert len(ids) == 10 or ids[-1] in (tok.eos_token_id, common)
            assert text == tok.decode(ids, skip_special_tokens=True)  # what follows a stop is padding
    assert out.prompt_ids == [tok(x, add_special_tokens=False)["input_ids"] for x in inputs]


def test_count_new_tokens():
    import torch
    new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 2, 2, 2], [7, 9, 3, 9]])
    assert sampling.count_new_tokens(new, [2]).tolist() == [2, 4, 1, 4]
    assert sampling.count_new_tokens(new, [2, 9]).tolist() == [2, 4, 1, 2]


def test_logits_processor_sees_each_chunk(tiny):
    model, tok = tiny
    calls = []

    def processors(rows, width):
        calls.append((rows, width))
        return []

    sampling.sample(model, tok, chat_inputs(tok), 2, max_new_tokens=3, seed=0, batch_size=4,
                    logits_processor=processors)
    assert [rows for rows, _ in calls] == [[0, 0, 1, 1], [2, 2]]
    widths = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in chat_inputs(tok)]
    assert [w for _, w in calls] == [max(widths[:2]), widths[2]]


def test_further_generate_options_reach_generate(tiny):
    # min_new_tokens suppresses EOS until that many tokens exist: every row then counts all of them
    # (bench_gendata uses it for equal work per run)
    model, tok = tiny
    inputs = chat_inputs(tok)
    out = sampling.sample(model, tok, inputs, 2, max_new_tokens=12, seed=0, min_new_tokens=12)
    assert out.new_tokens == len(inputs) * 2 * 12
    assert all(len(ids) == 12 for rows in out.token_ids for ids in rows)
