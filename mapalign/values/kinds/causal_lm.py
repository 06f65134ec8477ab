"""Causal-LM negative log-likelihood: the perplexity value, minus the mean token NLL (nats/token) of each
full text under a base causal LM (the generating model, a named model, or the embedded SmolLM2)."""
import numpy as np

from mapalign.values.batching import batches, encode, length_order, model_max_length
from mapalign.values.kinds import MODELS, scorer_kind


@scorer_kind("causal_lm_nll", torch=True)
def causal_lm_nll(spec, location, device, batch_size, basemodel=None, dtype=None, **_):
    """Perplexity value: minus mean token NLL of each full text under a base causal LM."""
    import torch
    from mapalign import models
    if isinstance(basemodel, (tuple, list)):
        model, tokenizer = basemodel
        source = getattr(model.config, "_name_or_path", "in-memory model")
    else:
        # An explicit base model wins over an override of the value's model.
        name = basemodel or location or models.DEFAULT_MODEL
        device = device or models.default_device()
        key = ("causal_lm", name, device, str(dtype))
        if key not in MODELS:
            model, tokenizer = models.load_model_and_tokenizer(name, device=device, dtype=dtype)
            MODELS[key] = (model, tokenizer, name)
        model, tokenizer, source = MODELS[key]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_length = model_max_length(tokenizer, model.config)

    def run(prompts, continuations, full_texts, progress):
        order = length_order(full_texts)
        out = np.empty(len(full_texts), dtype=np.float64)
        for start in batches(order, batch_size, progress, spec.name):
            idx = order[start:start + batch_size]
            enc = encode(tokenizer, [full_texts[i] for i in idx], None, max_length, min_tokens=2).to(model.device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
            targets = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].to(logits.dtype)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            mean_nll = (nll * mask).sum(1) / mask.sum(1)
            out[idx] = (-mean_nll).double().cpu().numpy()
        return out
    return run, source
