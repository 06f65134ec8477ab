"""Benchmark: batched pair reward model (values.py, gpt2-helpful contract) vs the original's
one-sample-at-a-time loop, in the same run on the same model.

The model is GPT-2-small-shaped (12 layers, hidden 768, 124M parameters) with random weights,
built offline from a config (the real Ray2333 reward models are GPT-2-large and not downloadable
here), with the SmolLM2 tokenizer (49k BPE). The texts are the reference file's prompts and
continuations when ../shared/reference/map is present, otherwise built-in sentences of similar
length. Baseline and candidate alternate for `rounds` rounds; the fastest round of each counts
(the machines are shared). Prints samples/s of each, the largest score difference, the thread
count, and ends with `ratio=<one-at-a-time time / batched time>` (the speed-up).

Usage: python benchmarks/bench_rewards.py [--n=64] [--batch_size=16] [--rounds=2] [--threads=1]
"""
import json
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mapalign import cli  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "shared", "reference", "map", "llama2_chat-Anthropic-harmless.json")
SENTENCES = [
    "I understand that you are frustrated, and it is important to stay calm.",
    "Here are a few ideas that might help you with this situation.",
    "You could talk to your neighbour directly and explain how you feel.",
    "It is never a good idea to harm another person or their property.",
    "Many people find that a regular routine makes it easier to sleep at night.",
    "If you are in danger, please contact the local authorities right away.",
    "Baking bread at home takes patience, but the result is worth it.",
    "There are several reasons why this question does not have a simple answer.",
]


def load_texts(n, seed=0):
    """n (prompt, continuation) pairs: the reference file's first n records, else synthetic ones."""
    if os.path.isfile(REFERENCE):
        from mapalign import records
        recs = json.load(open(REFERENCE, encoding="utf-8"))[:n]
        return [r["prompt"] for r in recs], [records.continuation_of(r) for r in recs], "reference file"
    rng = random.Random(seed)
    prompts = [rng.choice(SENTENCES).replace(".", "?") for _ in range(n)]
    conts = [" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(2, 4))) for _ in range(n)]
    return prompts, conts, "built-in sentences"


def build_model(folder):
    """GPT-2-small-shaped sequence classifier (1 output) with random weights + SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification
    from mapalign import models
    tokenizer = AutoTokenizer.from_pretrained(models.ensure_smollm2())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        num_labels=1, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def one_at_a_time(model, tokenizer, prompts, continuations):
    """The original loop: one (question, answer) pair per forward pass, raw scalar logit."""
    import torch
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, continuations):
            enc = tokenizer("\n\nHuman: " + p + " \n\nAssistant:", c, return_tensors="pt", truncation=True)
            out.append(model(**enc).logits[0, 0].item())
    return out


def main(n=64, batch_size=16, rounds=2, threads=1):
    """Run the benchmark; see the module docstring. n: texts; batch_size: batched scorer's batch."""
    import numpy as np
    import torch
    torch.set_num_threads(int(threads))
    from mapalign import values
    prompts, continuations, source = load_texts(int(n))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(os.path.join(tmp, "gpt2-small-rm"))
        scorer = values.load_scorer("gpt2-helpful", model_path=folder, batch_size=int(batch_size), device="cpu")
        model, tokenizer, _ = values._MODELS[("AutoModelForSequenceClassification", folder, "cpu", "None")]
        lengths = [len(tokenizer("\n\nHuman: " + p + " \n\nAssistant:", c)["input_ids"])
                   for p, c in zip(prompts, continuations)]
        print(f"threads={torch.get_num_threads()} texts={len(prompts)} ({source}) tokens/text "
              f"mean={np.mean(lengths):.0f} max={max(lengths)} model=GPT-2-small shape "
              f"({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, fp32) batch_size={batch_size}")
        scorer(prompts[:4], continuations[:4])  # warm-up
        one_at_a_time(model, tokenizer, prompts[:4], continuations[:4])
        base_times, cand_times = [], []
        for r in range(int(rounds)):
            t = time.perf_counter()
            base = one_at_a_time(model, tokenizer, prompts, continuations)
            base_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            cand = scorer(prompts, continuations)
            cand_times.append(time.perf_counter() - t)
            print(f"round {r}: one-at-a-time {base_times[-1]:.2f}s, batched {cand_times[-1]:.2f}s")
        diff = float(np.max(np.abs(np.asarray(base) - cand)))
    base_t, cand_t = min(base_times), min(cand_times)
    print(f"one-at-a-time (original): {len(prompts) / base_t:.2f} samples/s")
    print(f"batched (values.py):      {len(prompts) / cand_t:.2f} samples/s")
    print(f"max |batched - one-at-a-time| = {diff:.2e}")
    print(f"ratio={base_t / cand_t:.2f}")


if __name__ == "__main__":
    cli.main(main)
