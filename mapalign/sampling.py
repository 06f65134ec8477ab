"""The one Hugging Face sampling loop of the package: continuations of model-ready prompts from a causal
LM in this process, batched, seeded per block, each prompt's KV cache shared by its samples, new tokens
counted. Everything that generates from a model in this process goes through `sample`: generation
(generation.TextGeneration: gendata, ALT's and DPA's sampling stages), the hf engine (engines.HFEngine:
MC decoding), the token-level decoder (token_decoder), the policy sampler of the primal-dual trainers
(primaldual.sample_policy: MAP-DPO, PPO), ALT's local LMU judge (greedy) and the GUI. The vllm/server
engines (engines.py) are the only other samplers. This module imports nothing of the package: it sits
at the bottom of the layers.

Layout and seeding. The P prompts × n samples are laid out prompt-major (row r is sample r % n of
prompt r // n) and cut into chunks of `batch_size` rows, one `model.generate` call each. Chunk c of a
call with run seed `seed` and key `key` (by convention the absolute index of the call's first prompt)
re-seeds torch with block_seed(seed, key, c), so a call's samples depend only on (seed, key, its
prompts, batch_size): a job killed and resumed at a batch boundary, or a shard run on its own,
reproduces an uninterrupted run. The same rule gives the other seeds of a block: chunk index 1 of a key
is MC decoding's resampling seed (decoding.mc_decode), 2 the vllm/server request seed of a prompt
(engines.request_seed). With seed=None torch's RNG is not touched (callers with their own seeding).

KV-prefix sharing. With share_prefix and n > 1 samples (and no beams), each prompt of a chunk is run once
through the model without its last token, and that KV cache is copied to its samples; generate then
starts from the last prompt token. The samples are the same tokens as without sharing for the same
seed (tests/test_sampling.py on the tiny llama and gpt2 models; checked on SmolLM2-135M in float32 on
CPU); the logits are not guaranteed bit-identical in general, so a rare token may differ in other
dtypes or on other hardware. An architecture whose cache cannot be copied falls back to recomputing
the prompt per sample, with a warning.
"""
import dataclasses
import warnings

import numpy as np


def block_seed(seed, key, chunk=0):
    """Seed of one block of work, derived from the run seed, a key (the block's first prompt index) and the
    chunk index within it; independent of what ran before, so resumed runs match. An int in [0, 2^63)."""
    return int(np.random.SeedSequence([int(seed), int(key), int(chunk)]).generate_state(1, dtype=np.uint64)[0]
               % (2 ** 63))


def count_new_tokens(new_ids, stop_ids):
    """Tokens generated per row of `new_ids` (rows, steps) up to and including the first of `stop_ids`
    (all positions when none occurs). Returns a (rows,) integer tensor."""
    import torch
    is_stop = torch.isin(new_ids, torch.as_tensor(list(stop_ids), device=new_ids.device))
    return torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, new_ids.shape[1])


@dataclasses.dataclass
class Samples:
    """What `sample` returns. texts: P lists of n decoded continuations (new tokens only, special tokens
    skipped, not stripped); new_tokens: tokens generated, summed over rows, each row counted up to and
    including its first stop token; prompt_ids: P lists of the prompt's token ids (unpadded); token_ids:
    P lists of n lists of the sampled ids, up to and including the first stop token (a continuation cut
    at max_new_tokens has none)."""
    texts: list
    new_tokens: int
    prompt_ids: list
    token_ids: list


def _prefill_shared(model, input_ids, attention_mask, rows):
    """KV cache of every prompt but its last token, computed once per prompt and copied to its samples:
    `rows` holds, for each row of the generate call, the index of its prompt in input_ids. Returns the
    cache, or None when the model's cache cannot be copied this way (generate then recomputes the prompt
    for every sample)."""
    import torch
    try:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            # base_model: no LM head, whose logits over the vocabulary the prefill does not need
            out = model.base_model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                                   position_ids=position_ids[:, :-1], use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(rows)
        return cache
    except Exception as e:  # an architecture without DynamicCache support: fall back, say so
        warnings.warn(f"sampling: prompt KV-cache sharing unavailable for {type(model).__name__} ({e}); "
                      "each sample recomputes its prompt.", stacklevel=3)
        return None


def sample(model, tokenizer, inputs, num_samples=1, *, max_new_tokens=50, temperature=1.0, top_k=50, top_p=None,
           do_sample=True, num_beams=1, seed=None, key=0, batch_size=None, share_prefix=True,
           add_special_tokens=False, stop_ids=None, logits_processor=None, **generate_options):
    """Sample `num_samples` continuations of each input text.

    Args:
        model, tokenizer: a causal LM and its tokenizer (left padding).
        inputs: P model-ready strings (chat-formatted already when the template is used).
        num_samples: n, continuations per input.
        max_new_tokens, temperature, top_k, do_sample, num_beams: as `model.generate` (top_k 0: none).
        top_p: nucleus mass; None leaves it to the model's generation config (gendata's historical
            behaviour), a number sets it (1: off).
        seed, key: torch is re-seeded with block_seed(seed, key, c) before chunk c (see the module doc);
            seed=None leaves torch's RNG as it is.
        batch_size: rows (prompt × sample pairs) per generate call; None: all P·n rows in one call.
        share_prefix: compute each prompt's KV cache once per chunk and copy it to its samples (used when
            n > 1 and num_beams == 1).
        add_special_tokens: True for raw prompts (BOS, as the original), False for chat-formatted text.
        stop_ids: token ids that end a continuation (default the tokenizer's EOS).
        logits_processor: optional callable (prompt index of each row of the chunk, padded prompt width)
            -> list of transformers LogitsProcessor for that chunk's generate call.
        generate_options: further `model.generate` options, passed as given (e.g. min_new_tokens,
            repetition_penalty).
    Returns:
        Samples(texts, new_tokens, prompt_ids, token_ids) (see Samples).
    """
    import torch
    inputs, n = list(inputs), int(num_samples)
    stop = list(stop_ids) if stop_ids is not None else [tokenizer.eos_token_id]
    settings = dict(do_sample=bool(do_sample), temperature=float(temperature), top_k=int(top_k or 0),
                    num_beams=int(num_beams), max_new_tokens=int(max_new_tokens), pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop if stop_ids is not None else tokenizer.eos_token_id)
    if top_p is not None:
        settings["top_p"] = float(top_p)
    settings.update(generate_options)
    total = len(inputs) * n
    step = max(1, total if batch_size is None else int(batch_size))
    texts, token_ids, prompt_ids, new_tokens = [], [], [None] * len(inputs), 0
    for chunk, lo in enumerate(range(0, total, step)):
        hi = min(lo + step, total)
        first, last = lo // n, (hi - 1) // n  # the prompts whose samples this chunk holds
        enc = tokenizer(inputs[first:last + 1], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        rows = torch.arange(lo, hi, device=ids.device) // n - first  # each row's prompt within the chunk
        if seed is not None:  # before the prefill: a model left in training mode draws dropout there
            torch.manual_seed(block_seed(seed, key, chunk))
        kwargs = {}
        if share_prefix and n > 1 and int(num_beams) == 1 and ids.shape[1] > 1:
            cache = _prefill_shared(model, ids, mask, rows)
            if cache is not None:
                kwargs["past_key_values"] = cache
        if logits_processor is not None:
            kwargs["logits_processor"] = logits_processor((rows + first).tolist(), ids.shape[1])
        with torch.no_grad():
            out = model.generate(input_ids=ids[rows], attention_mask=mask[rows], **settings, **kwargs)
        new = out[:, ids.shape[1]:]
        lengths = count_new_tokens(new, stop)
        new_tokens += int(lengths.sum())
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        token_ids += [new[j, :int(lengths[j])].tolist() for j in range(new.shape[0])]
        for p in range(first, last + 1):
            prompt_ids[p] = ids[p - first][mask[p - first].bool()].tolist()
    group = lambda flat: [flat[i * n:(i + 1) * n] for i in range(len(inputs))]  # noqa: E731
    return Samples(group(texts), new_tokens, prompt_ids, group(token_ids))


def sequence_logprobs(model, prompt_ids, continuation_ids, temperature=1.0, batch_size=16):
    """log π(y|x) of each continuation: Σ_t log softmax(logits / temperature)[y_t] over its token ids after
    its prompt's (n,) float64, in nats; 0 for an empty continuation. The density of what `sample` draws at
    that temperature (exact for top_k = 0, top_p = 1: truncation is not part of it). prompt_ids,
    continuation_ids: n lists of token ids. Right-padded batches of `batch_size`, so each sequence keeps
    positions 0..len-1; the model runs in eval mode and gets its mode back."""
    import torch
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for lo in range(0, len(prompt_ids), batch_size):
            prompts = prompt_ids[lo:lo + batch_size]
            seqs = [list(x) + list(y) for x, y in zip(prompts, continuation_ids[lo:lo + batch_size])]
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, :len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1] / float(temperature), dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            for i, s in enumerate(seqs):
                out.append(float(token_logp[i, len(prompts[i]) - 1:len(s) - 1].sum()))
    model.train(was_training)
    return np.asarray(out, dtype=np.float64)
