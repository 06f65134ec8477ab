"""Sequence-classification reward models (the original's humor, positive, gpt2-helpful, gpt2-harmless and
harmless values, and register_reward_model folders): one logit vector per text or text pair, of which
the value reads one output as a logit, a probability or a log-probability."""
import numpy as np

from mapalign.errors import InputError
from mapalign.values.batching import batches, encode, length_order, model_max_length
from mapalign.values.kinds import load_model, scorer_kind

# The question side of the "pair" input contract: the format the GPT-2 pair reward models were trained on.
PAIR_QUESTION = "\n\nHuman: {prompt} \n\nAssistant:"


@scorer_kind("classifier", torch=True)
def classifier(spec, location, device, batch_size, dtype=None, hint="", **_):
    """Sequence classifier / reward model: one logit vector per text (or text pair)."""
    import torch
    model, tokenizer, source = load_model("AutoModelForSequenceClassification", location, device, dtype,
                                          what=f"model of value {spec.name!r}", hint=hint)
    n_out = model.config.num_labels
    if spec.label_index >= n_out:
        raise InputError(f"value {spec.name!r}: label_index {spec.label_index} but model {source!r} has "
                         f"{n_out} output(s)")
    max_length = model_max_length(tokenizer, model.config)
    dev = model.device

    def run(prompts, continuations, full_texts, progress):
        if spec.input_contract == "pair":
            first = [PAIR_QUESTION.format(prompt=p) for p in prompts]
            second = list(continuations)
        elif spec.input_contract == "continuation":
            first, second = list(continuations), None
        else:
            first, second = list(full_texts), None
        order = length_order([a + (b if second else "") for a, b in zip(first, second or first)])
        out = np.empty(len(first), dtype=np.float64)
        for start in batches(order, batch_size, progress, spec.name):
            idx = order[start:start + batch_size]
            # Right padding: positions of real tokens stay 0..L-1 for causal models, and the
            # classifier pools at the last non-pad token, so a batch gives the one-at-a-time score.
            enc = encode(tokenizer, [first[i] for i in idx], [second[i] for i in idx] if second else None,
                         max_length).to(dev)
            logits = model(**enc).logits.float()
            if spec.score_type == "logit":
                vals = logits[:, spec.label_index]
            elif spec.score_type == "probability":
                vals = torch.sigmoid(logits[:, 0]) if n_out == 1 else torch.softmax(logits, -1)[:, spec.label_index]
            elif spec.score_type == "log_probability":
                vals = torch.nn.functional.logsigmoid(logits[:, 0]) if n_out == 1 else \
                    torch.log_softmax(logits, -1)[:, spec.label_index]
            else:
                raise InputError(f"value {spec.name!r}: score_type {spec.score_type!r} is not a classifier score")
            out[idx] = vals.double().cpu().numpy()
        return out
    return run, source
