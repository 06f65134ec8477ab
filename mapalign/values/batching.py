"""Batching and tokenisation shared by the model scorers (classifier, embedder, causal-LM kinds).

Texts are scored longest first, so each batch pads little, and padded on the right, so a batch scores
the same as one text at a time.
"""


def batches(order, batch_size, progress, desc):
    """Start offsets into `order`, one per batch of `batch_size`, with a tqdm bar when `progress`."""
    from tqdm.auto import tqdm
    starts = range(0, len(order), batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False)


def length_order(texts):
    """Indices sorted by text length (longest first), so each batch pads little."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


def model_max_length(tokenizer, config):
    """Longest input the model takes: the tokenizer's limit, capped by the position table."""
    limits = [getattr(config, a, None) for a in ("max_position_embeddings", "n_positions")]
    limits = [x for x in limits if isinstance(x, int) and x > 0]
    tok_limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**6 \
        else None
    candidates = limits + ([tok_limit] if tok_limit else [])
    return min(candidates) if candidates else None


def encode(tokenizer, first, second, max_length, min_tokens=1):
    """Tokenize a batch (texts or text pairs) and pad it on the right.

    Right padding keeps the real tokens at positions 0..L-1, so causal models see a padded row
    exactly as they see it alone, and sequence classifiers pool at the last non-pad token: a batch
    scores the same as one text at a time. A text that tokenizes to nothing (an empty string with
    a tokenizer that adds no special tokens, e.g. GPT-2's) is represented by one end-of-text token,
    so the model always has an input. min_tokens=2 (perplexity) likewise prefixes an end-of-text
    token to one-token texts, which otherwise leave no token to predict (the original got NaN).
    """
    enc = tokenizer(first, second, truncation=max_length is not None, max_length=max_length)
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    for row, ids in enumerate(enc["input_ids"]):
        missing = min_tokens - len(ids)
        if missing > 0:
            for key in enc.keys():
                fill = filler if key == "input_ids" else 1 if key == "attention_mask" else 0
                enc[key][row] = [fill] * missing + list(enc[key][row])
    return tokenizer.pad(enc, padding=True, padding_side="right", return_tensors="pt")
