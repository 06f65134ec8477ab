"""Attainment experiment: do MAP-F (RLOO) and MAP-DPO reach the palette c that MAP-D reaches?

    .venv/bin/python benchmarks/bench_alignment.py            # offline demo, ~10-15 min on 1 CPU thread

On the offline demo (embedded SmolLM2-135M-Instruct, LoRA, offline values), for one feasible palette:
  1. sample M continuations per training prompt from p0 and score every value;
  2. choose c: raise the first value halfway from p0's mean toward p0's mean best-of-M level, keep the
     others at p0's mean ("maintain"); solve λ with solver.solve_palette (per-prompt normalisation);
  3. MAP-D: importance resampling with weights softmax(λᵀr) over M_eval fresh samples per held-out
     prompt (decoding.resample_weights), realized level = expected reward under those weights;
  4. MAP-F: trainPPO's RLOO trainer (β = 1, target p_λ) for a fixed budget; MAP-DPO: trainDPO's DPO on
     Bradley-Terry pairs from step 1 (β = 1, sigmoid loss, target p_λ) for a fixed budget;
  5. sample from each trained model on the held-out prompts and score.
Prints the realized levels before (p0) and after, next to c and MAP-D's (the comparison of the paper's
Table 1, whose PPO missed palettes), with λ and the seeds; writes results/bench_alignment.json.
All sampling is from the full distribution (temperature 1, no top-k), the distribution p_λ is defined on.
Ends with `ratio=<shortfall of p0 / shortfall of MAP-F>`, the shortfall being Σ_i max(0, c_i − level_i)
over the aligned values (> 1: MAP-F moved toward c; MAP-D's and MAP-DPO's ratios are printed above it).
"""
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fire  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import decoding  # noqa: E402
from evaluation import standard_error  # noqa: E402
import models  # noqa: E402
import prompts as prompt_sources  # noqa: E402
import records  # noqa: E402
import solver  # noqa: E402
import training  # noqa: E402
import trainDPO  # noqa: E402
import trainPPO  # noqa: E402
import values as value_registry  # noqa: E402


def sample(model, tokenizer, prompts, first_id, per_prompt, max_new_tokens, seed, batch_size=32):
    """Records {prompt, continuation, prompt_id, sample_id} of `per_prompt` samples per prompt from the
    model's full distribution (temperature 1, no top-k), seeded per batch."""
    model.eval()
    inputs = models.format_prompts(tokenizer, prompts)
    per_call = max(1, batch_size // per_prompt)
    out = []
    for lo in range(0, len(prompts), per_call):
        texts, _ = decoding.sample_continuations(model, tokenizer, inputs[lo:lo + per_call], per_prompt,
                                                 max_new_tokens=max_new_tokens, temperature=1.0, top_k=0,
                                                 seed=seed * 100003 + lo)
        for p, group in enumerate(texts):
            for s, text in enumerate(group):
                out.append({"prompt": prompts[lo + p], "continuation": text.strip(), "prompt_id": first_id + lo + p,
                            "sample_id": s})
    return out


def score(recs, value_names, scorers):
    """Add one float per value to every record; returns the (k, n) reward matrix."""
    R = decoding.score_samples(value_names, scorers, [r["prompt"] for r in recs], [r["continuation"] for r in recs])
    for i, v in enumerate(value_names):
        for r, x in zip(recs, R[i]):
            r[v] = float(x)
    return R


def choose_palette(R, groups, raise_index, frac):
    """c: the raised value halfway (frac) from p0's mean to the mean per-prompt best; others at p0's mean."""
    means = R.mean(axis=1)
    c = means.copy()
    best = np.mean([R[raise_index, groups == g].max() for g in np.unique(groups)])
    c[raise_index] = means[raise_index] + frac * (best - means[raise_index])
    return c


def shortfall(levels, c):
    return float(np.sum(np.maximum(0.0, np.asarray(c) - np.asarray(levels))))


def attainment_ratio(before, after, c):
    """shortfall(p0) / shortfall(method) as text; "inf" when the method meets every c."""
    short = shortfall(after, c)
    return "inf" if short < 1e-9 else f"{shortfall(before, c) / short:.3f}"


def progress(before, after, target, tol=1e-3):
    """How a value fared against its palette level: a ≥ constraint (met / kept / violated / moved toward c)."""
    if after >= target - tol:
        return "meets c" if before < target - tol else "kept ≥ c"
    if before >= target - tol:
        return "VIOLATED (was ≥ c)"
    return "moved toward c" if after > before else "moved AWAY from c"


def fresh_policy(model_name):
    model, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu")
    model.train()
    return model, tokenizer


def main(model_name=models.DEFAULT_MODEL, value_list="sentiment,coherence-minilm", raise_value="sentiment",
         palette_frac=0.5, data_name="builtin", n_train_prompts=32, n_eval_prompts=16, samples_per_prompt=4,
         eval_samples_per_prompt=8, trained_samples_per_prompt=4, max_new_tokens=24, ppo_steps=20,
         ppo_batch_size=8, ppo_learning_rate=5e-4, dpo_epochs=2, dpo_max_pairs_per_prompt=2, dpo_batch_size=4,
         dpo_learning_rate=3e-4, lora_r=16, seed=0, out_file="results/bench_alignment.json"):
    """Run the attainment experiment (module docstring) and print the table.

    Args:
        model_name: p0 (default the embedded SmolLM2-135M-Instruct).
        value_list: aligned values (offline ones by default); raise_value: the one whose c is raised.
        palette_frac: c of raise_value = mean + frac·(mean best-of-M − mean) of p0's training samples.
        data_name: prompt source; the first n_train_prompts train, the next n_eval_prompts evaluate.
        samples_per_prompt: M for λ, the palette and MAP-DPO pairs; eval_samples_per_prompt: M for p0 and
            MAP-D on the held-out prompts; trained_samples_per_prompt: samples per prompt of each trained model.
        max_new_tokens: continuation length everywhere.
        ppo_steps, ppo_batch_size, ppo_learning_rate: MAP-F budget (RLOO, 4 samples per prompt, LoRA).
        dpo_epochs, dpo_max_pairs_per_prompt, dpo_batch_size, dpo_learning_rate: MAP-DPO budget (LoRA).
        lora_r: LoRA rank of both trainers; seed: every seed derives from it; out_file: JSON results.
    """
    config = dict(locals())
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    t_start = time.time()
    value_names = value_registry.expand_value_list(value_list)
    raise_index = value_names.index(raise_value)
    all_prompts = prompt_sources.load_prompts(data_name, seed=seed)
    train_prompts = all_prompts[:n_train_prompts]
    eval_prompts = all_prompts[n_train_prompts:n_train_prompts + n_eval_prompts]
    print(f"torch threads: {torch.get_num_threads()}  model: {model_name}  values: {value_names}  seed: {seed}")
    print(f"prompts: {len(train_prompts)} train, {len(eval_prompts)} held-out ({data_name}); "
          f"{max_new_tokens} new tokens, full-distribution sampling")
    scorers = {v: value_registry.load_scorer(v, basemodel_for_perplexity=model_name) for v in value_names}

    # 1-2. p0 samples, palette, λ
    p0, tokenizer = fresh_policy(model_name)
    train_recs = sample(p0, tokenizer, train_prompts, 0, samples_per_prompt, max_new_tokens, seed)
    R_train = score(train_recs, value_names, scorers)
    groups = records.prompt_groups(train_recs)
    c = choose_palette(R_train, groups, raise_index, palette_frac)
    result = solver.solve_palette(R_train, c, groups=groups)
    if result.status != "feasible":
        print(f"palette {np.round(c, 3).tolist()} is {result.status}; using the suggested palette")
        c = np.asarray(result.suggested_palette, dtype=np.float64)
        result = solver.solve_palette(R_train, c, groups=groups)
    lam = np.asarray(result.lam, dtype=np.float64)
    print(f"palette c = {np.round(c, 3).tolist()}  λ = {np.round(lam, 3).tolist()}  ({result.status}, "
          f"in-sample KL {result.kl:.3f}, ESS {result.ess:.1f})  [{time.time() - t_start:.0f} s]")

    # 3. p0 and MAP-D on held-out prompts
    eval_recs = sample(p0, tokenizer, eval_prompts, len(train_prompts), eval_samples_per_prompt, max_new_tokens,
                       seed + 1)
    R_eval = score(eval_recs, value_names, scorers)
    before = R_eval.mean(axis=1)
    cube = R_eval.reshape(len(value_names), len(eval_prompts), eval_samples_per_prompt)
    weights = decoding.resample_weights(np.einsum("k,kpm->pm", lam, cube))
    map_d = np.einsum("kpm,pm->k", cube, weights) / len(eval_prompts)
    print(f"p0 and MAP-D scored on {len(eval_recs)} held-out samples  [{time.time() - t_start:.0f} s]")
    del p0

    def regenerate_and_score(trainer, sample_seed):
        """Merge the trained LoRA, sample the held-out prompts and score them: (k, n) rewards."""
        merged = trainer.model.merge_and_unload()
        recs = sample(merged, tokenizer, eval_prompts, len(train_prompts), trained_samples_per_prompt,
                      max_new_tokens, sample_seed)
        return score(recs, value_names, scorers)

    # 4a. MAP-F (RLOO, β = 1)
    model, tokenizer = fresh_policy(model_name)
    lora = training.lora_config(lora_r, 2 * lora_r, 0.0)
    tmp = os.path.join(ROOT, "results", ".bench_alignment_tmp")
    trainer = trainPPO.build_trainer(model, tokenizer, train_prompts, value_names, lam.tolist(), scorers,
                                     os.path.join(tmp, "mapf"), beta=1.0, peft_config=lora,
                                     learning_rate=ppo_learning_rate, batch_size=ppo_batch_size,
                                     mini_batch_size=ppo_batch_size, num_generations=4,
                                     max_new_tokens=max_new_tokens, max_steps=ppo_steps, logging_steps=4,
                                     save_steps=10 ** 6, seed=seed)
    trainer.train()
    mapf_log = [{k: h[k] for k in h if k in ("step", "reward", "kl") or k.startswith("rewards/")}
                for h in trainer.state.log_history if "reward" in h]
    R_mapf = regenerate_and_score(trainer, seed + 2)
    map_f = R_mapf.mean(axis=1)
    print(f"MAP-F: {ppo_steps} RLOO steps × {ppo_batch_size} samples  [{time.time() - t_start:.0f} s]")
    del trainer, model

    # 4b. MAP-DPO (Bradley-Terry pairs, β = 1)
    model, tokenizer = fresh_policy(model_name)
    pairs = trainDPO.map_preference_pairs(train_recs, value_names, lam.tolist(), pairing="bradley_terry",
                                          max_pairs_per_prompt=dpo_max_pairs_per_prompt, seed=seed)
    trainer = trainDPO.build_preference_trainer(model, tokenizer, pairs, os.path.join(tmp, "mapdpo"), beta=1.0,
                                                peft_config=lora, learning_rate=dpo_learning_rate,
                                                num_train_epochs=dpo_epochs, per_device_train_batch_size=dpo_batch_size,
                                                gradient_accumulation_steps=1, logging_steps=4, save_steps=10 ** 6,
                                                seed=seed)
    trainer.train()
    dpo_log = [{k: h[k] for k in h if k in ("step", "loss", "rewards/accuracies", "rewards/margins")}
               for h in trainer.state.log_history if "loss" in h]
    R_dpo = regenerate_and_score(trainer, seed + 3)
    map_dpo = R_dpo.mean(axis=1)
    print(f"MAP-DPO: {len(pairs)} pairs × {dpo_epochs} epochs  [{time.time() - t_start:.0f} s]")
    del trainer, model

    # 5. the table
    rows = {"p0 (before)": before, "MAP-D": map_d, "MAP-F (RLOO)": map_f, "MAP-DPO": map_dpo}
    width = max(len(v) for v in value_names) + 2
    print()
    print(f"{'value':<{width}}{'λ':>8}{'c':>9}" + "".join(f"{name:>15}" for name in rows))
    for i, v in enumerate(value_names):
        print(f"{v:<{width}}{lam[i]:>8.3f}{c[i]:>9.3f}" + "".join(f"{levels[i]:>15.3f}" for levels in rows.values()))
    se = {name: np.array([standard_error(row) for row in R]) for name, R in
          (("p0 (before)", R_eval), ("MAP-F (RLOO)", R_mapf), ("MAP-DPO", R_dpo))}
    print("standard errors (sample std/√n): " + "; ".join(
        f"{name} " + ", ".join(f"{x:.3f}" for x in v) for name, v in se.items()))
    print()
    for name, levels in rows.items():
        if name == "p0 (before)":
            continue
        print(f"{name}: shortfall {shortfall(levels, c):.3f} (p0 {shortfall(before, c):.3f}); "
              + ", ".join(f"{v} {progress(before[i], levels[i], c[i])}" for i, v in enumerate(value_names)))
    summary = {"model": model_name, "values": value_names, "seed": seed, "lam": lam.tolist(), "c": c.tolist(),
               "solver_status": result.status, "levels": {k: v.tolist() for k, v in rows.items()},
               "shortfall": {k: shortfall(v, c) for k, v in rows.items()},
               "standard_errors": {k: v.tolist() for k, v in se.items()},
               "config": config,
               "map_f_log": mapf_log, "map_dpo_log": dpo_log, "seconds": round(time.time() - t_start, 1)}
    records.save_json_atomic(summary, os.path.join(ROOT, out_file) if not os.path.isabs(out_file) else out_file)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.time() - t_start:.0f} s; results in {out_file}")
    print(f"ratio_MAP-D={attainment_ratio(before, map_d, c)}")
    print(f"ratio_MAP-DPO={attainment_ratio(before, map_dpo, c)}")
    print(f"ratio={attainment_ratio(before, map_f, c)}")


if __name__ == "__main__":
    fire.Fire(main)
