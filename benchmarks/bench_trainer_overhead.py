"""Overhead of the MAP trainers over the bare TRL trainers on the same data (target: ≤ 5%).

    .venv/bin/python benchmarks/bench_trainer_overhead.py [--repeats=5] [--dpo_steps=30] [--rloo_steps=15]

Tiny random Llama (2 layers, 512-token vocabulary), CPU, one torch thread. For each trainer both
sides build and train on identical inputs with identical configs, alternating order, best of
`repeats` runs:
  * DPO: baseline = trl.DPOTrainer on a ready-made pairs dataset; candidate = trainDPO's path from
    records (λᵀr ranking, pair construction, prompt formatting) through build_preference_trainer.
  * RLOO: baseline = trl.RLOOTrainer with one Python reward returning λᵀr; candidate = trainPPO's
    build_trainer (one reward function per value with reward_weights = λ, explicit reference).
Prints seconds per side and ends with `ratio=<baseline/candidate>` over both trainers.
"""
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mapalign import cli  # noqa: E402
from mapalign import models  # noqa: E402
from mapalign import tiny  # noqa: E402
from mapalign import training  # noqa: E402
from mapalign import train_dpo as trainDPO  # noqa: E402
from mapalign import train_ppo as trainPPO  # noqa: E402

PROMPTS = ["Tell me a joke", "How do I bake bread?", "What is the best way to learn?", "Give me tips",
           "I am feeling sad today", "Explain vaccines simply", "Revenge on my neighbour?", "Sleep tips please"]


def make_records(n_prompts=32, per_prompt=4, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_prompts):
        for s in range(per_prompt):
            cont = " ".join(rng.choice(["good", "bad", "happy", "bread", "cats", "park", "sad"], size=8))
            recs.append({"prompt": PROMPTS[p % len(PROMPTS)] + f" ({p})", "continuation": cont,
                         "prompt_id": p, "sample_id": s, "a": float(rng.normal()), "b": float(rng.normal())})
    return recs


def e_fraction(prompts, continuations):
    return np.array([c.count("e") / max(1, len(c)) for c in continuations])


def char_length(prompts, continuations):
    return np.array([len(c) / 40.0 for c in continuations])


def fresh(model_dir):
    model, tokenizer = models.load_model_and_tokenizer(model_dir, device="cpu")
    model.train()
    return model, tokenizer, training.frozen_copy(model)


def dpo_baseline(model_dir, recs, out, steps):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    model, tokenizer, ref = fresh(model_dir)
    # the same pairs the candidate builds, prepared outside the timed region's MAP code path
    pairs = PAIRS_CACHE["pairs"]
    start = time.perf_counter()
    data = Dataset.from_dict({"prompt": [p["formatted"] for p in pairs], "chosen": [p["chosen"] for p in pairs],
                              "rejected": [p["rejected"] for p in pairs]})
    config = DPOConfig(**training.common_config(out, seed=0, logging_steps=1000, save_steps=10000,
                                                learning_rate=1e-3, per_device_train_batch_size=4,
                                                gradient_accumulation_steps=1, max_steps=steps, beta=1.0,
                                                max_length=1024))
    DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=data, processing_class=tokenizer).train()
    return time.perf_counter() - start


def dpo_candidate(model_dir, recs, out, steps):
    model, tokenizer, ref = fresh(model_dir)
    start = time.perf_counter()
    pairs = trainDPO.map_preference_pairs(recs, ["a", "b"], [1.0, 0.5], pairing="best_worst")
    trainer = trainDPO.build_preference_trainer(model, tokenizer, pairs, out, beta=1.0, ref_model=ref,
                                                learning_rate=1e-3, per_device_train_batch_size=4,
                                                gradient_accumulation_steps=1, max_steps=steps, logging_steps=1000,
                                                save_steps=10000, seed=0)
    trainer.train()
    return time.perf_counter() - start


def rloo_baseline(model_dir, out, steps):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer
    model, tokenizer, ref = fresh(model_dir)
    start = time.perf_counter()
    formatted = models.format_prompts(tokenizer, PROMPTS)

    def map_reward(prompts, completions, **kwargs):
        return (3.0 * e_fraction(prompts, completions) + 0.5 * char_length(prompts, completions)).tolist()

    config = RLOOConfig(**training.common_config(out, seed=0, logging_steps=1000, save_steps=10000,
                                                 learning_rate=1e-3, per_device_train_batch_size=8,
                                                 gradient_accumulation_steps=1, max_steps=steps, beta=1.0,
                                                 num_generations=4, max_completion_length=8, top_k=0))
    from trl.trainer import rloo_trainer
    with training.explicit_reference(rloo_trainer, model, ref):  # the bare trainer needs it too (no hub here)
        trainer = RLOOTrainer(model=model, reward_funcs=map_reward, args=config, processing_class=tokenizer,
                              train_dataset=Dataset.from_dict({"prompt": formatted}))
    trainer.train()
    return time.perf_counter() - start


def rloo_candidate(model_dir, out, steps):
    model, tokenizer, ref = fresh(model_dir)
    start = time.perf_counter()
    scorers = {"efrac": e_fraction, "chars": char_length}
    trainer = trainPPO.build_trainer(model, tokenizer, PROMPTS, ["efrac", "chars"], [3.0, 0.5], scorers, out,
                                     beta=1.0, ref_model=ref, learning_rate=1e-3, batch_size=8, mini_batch_size=8,
                                     num_generations=4, max_new_tokens=8, max_steps=steps, logging_steps=1000,
                                     save_steps=10000, seed=0)
    trainer.train()
    return time.perf_counter() - start


PAIRS_CACHE = {}


def main(repeats=5, dpo_steps=30, rloo_steps=15):
    """Run both comparisons `repeats` times (alternating order) and print the best times and ratios."""
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    os.environ["TQDM_DISABLE"] = "1"
    print(f"torch threads: {torch.get_num_threads()}  (CPU, tiny Llama, best of {repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny.tiny_causal_lm(os.path.join(tmp, "tiny"))
        recs = make_records()
        _, tokenizer = models.load_model_and_tokenizer(model_dir, device="cpu")
        pairs = trainDPO.map_preference_pairs(recs, ["a", "b"], [1.0, 0.5], pairing="best_worst")
        for p, f in zip(pairs, models.format_prompts(tokenizer, [p["prompt"] for p in pairs])):
            p["formatted"] = f
        PAIRS_CACHE["pairs"] = pairs
        times = {k: [] for k in ("dpo_base", "dpo_cand", "rloo_base", "rloo_cand")}
        for r in range(int(repeats)):
            order = [("dpo_base", lambda: dpo_baseline(model_dir, recs, os.path.join(tmp, "b"), dpo_steps)),
                     ("dpo_cand", lambda: dpo_candidate(model_dir, recs, os.path.join(tmp, "c"), dpo_steps)),
                     ("rloo_base", lambda: rloo_baseline(model_dir, os.path.join(tmp, "rb"), rloo_steps)),
                     ("rloo_cand", lambda: rloo_candidate(model_dir, os.path.join(tmp, "rc"), rloo_steps))]
            if r % 2:
                order = [order[1], order[0], order[3], order[2]]
            for name, run in order:
                times[name].append(run())
        best = {k: min(v) for k, v in times.items()}
        print({k: [round(x, 3) for x in v] for k, v in times.items()})
    print(f"DPO  {dpo_steps} steps: bare TRL {best['dpo_base']:.3f} s, trainDPO {best['dpo_cand']:.3f} s, "
          f"ratio {best['dpo_base'] / best['dpo_cand']:.3f}")
    print(f"RLOO {rloo_steps} steps: bare TRL {best['rloo_base']:.3f} s, trainPPO {best['rloo_cand']:.3f} s, "
          f"ratio {best['rloo_base'] / best['rloo_cand']:.3f}")
    baseline, candidate = best["dpo_base"] + best["rloo_base"], best["dpo_cand"] + best["rloo_cand"]
    print(f"total: baseline {baseline:.3f} s, candidate {candidate:.3f} s (target: candidate ≤ 1.05 × baseline)")
    print(f"ratio={baseline / candidate:.3f}")


if __name__ == "__main__":
    cli.main(main)
