"""Does ALT steer? ALT-RM and palette feedback against the reference model and MAP-F (RLOO).

    .venv/bin/python benchmarks/bench_alt.py            # offline: embedded SmolLM2-135M-Instruct + LoRA, CPU

One offline value (`--value`; default perplexity: minus the mean token NLL of prompt + continuation under
SmolLM2, continuous and without ties; `--value=sentiment` is VADER, whose 0 for neutral text ties most
samples), the built-in prompts (the first n_train train, the next n_valid validate; 48 + 183 is all 231),
a few iterations of trainALT's stages for
  * ALT-RM   (Excellent./.../Horrible. by per-prompt quantile of the value), and
  * palette  (MAP × ALT: "<value>: top 20%" ... "<value>: top 100%"; with one value the palette
              string names the same bins as ALT-RM, in other words),
and after every iteration the mean value on the validation prompts when the model is conditioned
on its best feedback, on its worst feedback, and of the reference model (unconditioned), each with its
standard error, plus the k1 estimate of KL(policy(·|best, x) ‖ reference(·|x)) in nats per sequence and
the seconds the iteration took. MAP-F (trainPPO's RLOO trainer, reward λ·value, LoRA) gets the same
number of generated samples as one ALT run in total and is scored the same way (`--methods` picks what runs).
Target (issue 11): best > reference > worst by ≥ 2 SE after the last iteration, for both feedbacks.
Ends with `ratio=<(ALT-RM best − reference) / (MAP-F − reference)>` (gain at equal samples).
"""
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mapalign import alt  # noqa: E402
from mapalign import arguments  # noqa: E402
from mapalign import cli  # noqa: E402
from mapalign import models  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import training  # noqa: E402
from mapalign import train_alt as trainALT  # noqa: E402
from mapalign import train_ppo as trainPPO  # noqa: E402
from mapalign import values as value_registry  # noqa: E402
from mapalign.evaluation import standard_error  # noqa: E402
from mapalign.generation import TextGeneration  # noqa: E402


def evaluate(model_path, prompts_range, out_dir, seed, valid_samples, max_new_tokens, chat, conditioning=None,
             reference=None, *, value):
    """Sample the validation prompts (gendata, top-k 50, T = 1) and score `value` (a registry name); with
    `reference` (model name) also the mean sequence log-ratio log π(y|cond x) − log π_ref(y|x). Returns a dict."""
    start, end = prompts_range
    gen = TextGeneration(basemodel_name=model_path, save_directory=out_dir, seed=seed, max_new_tokens=max_new_tokens,
                         samples_per_prompt=valid_samples, progress=False, conditioning=conditioning, device="cpu",
                         use_chat_template=chat)
    recs = records.load_records(gen.generate_from_original_model(batch_size=32, start_index=start, end_index=end))
    prompts = [r["prompt"] for r in recs]
    texts = [records.continuation_of(r) for r in recs]
    r = np.asarray(value_registry.score(value, prompts, texts), dtype=np.float64)
    by_prompt = {}
    for rec, x in zip(recs, r):
        by_prompt.setdefault(str(rec["prompt_id"]), []).append(float(x))
    out = {"mean": float(r.mean()), "se": float(standard_error(r)), "n": len(r),
           "per_prompt": {k: float(np.mean(v)) for k, v in by_prompt.items()}}
    if reference is not None:
        model, tok = gen.load_model()
        ref, ref_tok = models.load_model_and_tokenizer(reference, device="cpu")
        ratio = alt.log_ratio_to_reference(model, tok, ref, ref_tok, conditioning, prompts, texts, chat)
        out["kl"] = {"mean": float(ratio.mean()), "se": float(standard_error(ratio))}
    return out


def paired_gap(high, low):
    """mean(high − low) / SE over prompts of the per-prompt mean differences (two evaluate() results)."""
    keys = sorted(set(high["per_prompt"]) & set(low["per_prompt"]), key=int)
    d = np.asarray([high["per_prompt"][k] - low["per_prompt"][k] for k in keys])
    return float(d.mean() / standard_error(d))


def fmt(x):
    return f"{x['mean']:+.3f} ± {x['se']:.3f}"


def main(model_name=models.DEFAULT_MODEL, value="perplexity", n_train=48, n_valid=183, samples_per_prompt=10,
         iterations=2, max_new_tokens=20, valid_samples=2, learning_rate=1e-3, num_train_epochs=3, batch_size=8,
         kl_coef=0.0, chat=False, drop_factor=0.0, per_quantile=2, mapf_lam=1.0, mapf_beta=0.1,
         mapf_learning_rate=5e-4, mapf_batch=8, methods="alt_rm,palette,map_f", quantiles="per_prompt",
         seed=0, workdir="results/.bench_alt", out_file="results/bench_alt.json", keep=False):
    """Run the benchmark (module docstring) and print the table.

    Args:
        model_name: reference and initial policy.
        value: the one offline value that ALT's feedback and MAP-F's reward use (a registry name).
        n_train, n_valid: training and validation prompts (built-in set).
        samples_per_prompt: generations per training prompt per iteration (K = 5 quantiles, 2 kept each).
        iterations: ALT iterations per feedback kind.
        max_new_tokens: generation budget everywhere; valid_samples: samples per validation prompt.
        learning_rate, num_train_epochs, batch_size: ALT's LoRA training per iteration.
        kl_coef: ALT's β (0 = the noKL variant the upstream TL;DR/HH orchestrators ran; no reference forward).
        drop_factor: ALT's datapool flush (1.0: train on the new samples only, as upstream; 0.0, the default
            here: replay all, so the worst bins keep the reference's samples instead of "the worst of the
            best-conditioned samples", which made the worst feedback drift up in the runs without replay).
        per_quantile: samples kept per quantile per prompt (2 upstream; ≥ samples_per_prompt keeps them all, so
            the training set is distributed as the sampler's own samples even where tied rewards share a bin).
        chat: apply the chat template (False: raw prompts, as upstream ALT; about half the tokens per example).
        mapf_lam, mapf_beta, mapf_learning_rate, mapf_batch: MAP-F (RLOO, reward λ·value, KL β, LoRA).
        methods: what to run, a comma list of alt_rm, palette (ALT feedback kinds) and map_f.
        quantiles: ALT's quantile assignment, per_prompt (upstream's default) or global.
        workdir: scratch folder (removed at the end unless keep); out_file: JSON results.
    """
    config = dict(locals())
    methods = arguments.str_list(methods, "methods")
    unknown = sorted(set(methods) - {"alt_rm", "palette", "map_f"})
    if unknown:
        raise SystemExit(f"error: --methods: unknown {unknown}; valid: alt_rm, palette, map_f")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    t0 = time.time()
    workdir = os.path.join(ROOT, workdir) if not os.path.isabs(workdir) else workdir
    valid = (n_train, n_train + n_valid)
    print(f"torch threads {torch.get_num_threads()}; {model_name}; {n_train} train / {n_valid} valid prompts; "
          f"{samples_per_prompt} samples/prompt; {max_new_tokens} new tokens; {iterations} iterations; β={kl_coef}")
    ref = evaluate(model_name, valid, os.path.join(workdir, "reference"), seed + 1000, valid_samples, max_new_tokens,
                   chat, value=value)
    print(f"reference: {value} {fmt(ref)} (n={ref['n']})  [{time.time() - t0:.0f} s]")
    rows, results = [], {"reference": ref, "config": config}
    for kind in [m for m in methods if m != "map_f"]:
        a = trainALT.ALT(output_dir=os.path.join(workdir, kind), feedback=kind, value_list=value,
                         model_name=model_name, num_train_prompts=n_train, num_valid_prompts=n_valid,
                         samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens, seed=seed,
                         kl_coef=kl_coef, drop_factor=drop_factor, quantiles=quantiles, per_quantile=per_quantile,
                         learning_rate=learning_rate, num_train_epochs=num_train_epochs,
                         per_device_train_batch_size=batch_size, batch_size=32, device="cpu", progress=False,
                         use_chat_template=chat)
        results[kind] = []
        for k in range(1, int(iterations) + 1):
            t = time.time()
            a.sample(k)
            a.feedback(k)
            a.train(k, save_steps=10 ** 6)
            seconds = time.time() - t
            model = a.policy(k)
            best = evaluate(model, valid, os.path.join(a.iter_dir(k), "eval-best"), seed + 1000, valid_samples,
                            max_new_tokens, chat, a.fb.conditioning_template(a.fb.best_feedback()),
                            reference=model_name, value=value)
            worst = evaluate(model, valid, os.path.join(a.iter_dir(k), "eval-worst"), seed + 1000, valid_samples,
                             max_new_tokens, chat, a.fb.conditioning_template(a.fb.worst_feedback()), value=value)
            row = {"method": kind, "iteration": k, "best": best, "worst": worst, "kl": best["kl"],
                   "train_seconds": round(seconds, 1)}
            results[kind].append(row)
            rows.append(row)
            print(f"{kind} iter {k}: best {fmt(best)}  worst {fmt(worst)}  reference {fmt(ref)}  "
                  f"KL {fmt(best['kl'])}  {seconds:.0f} s/iteration  [{time.time() - t0:.0f} s]")

    # MAP-F at the same number of generated samples as one ALT run
    mapf = None
    if "map_f" in methods:
        total = int(iterations) * n_train * samples_per_prompt
        steps = max(1, total // mapf_batch)
        t = time.time()
        policy, tok = models.load_model_and_tokenizer(model_name, device="cpu")
        policy.train()
        prompts = TextGeneration(basemodel_name=model_name).prompts[:n_train]
        scorers = value_registry.load_scorers([value])
        trainer = trainPPO.build_trainer(policy, tok, prompts, [value], [mapf_lam], scorers,
                                         os.path.join(workdir, "mapf"), beta=mapf_beta,
                                         peft_config=training.lora_config(16, 32, 0.0),
                                         learning_rate=mapf_learning_rate,
                                         batch_size=mapf_batch, mini_batch_size=mapf_batch, num_generations=4,
                                         max_new_tokens=max_new_tokens, top_k=50, max_steps=steps, logging_steps=1,
                                         save_steps=10 ** 6, seed=seed, use_chat_template=chat)
        trainer.train()
        merged = trainer.model.merge_and_unload()
        mapf_dir = os.path.join(workdir, "mapf", "model")
        merged.save_pretrained(mapf_dir)
        tok.save_pretrained(mapf_dir)
        mapf_seconds = time.time() - t
        mapf = evaluate(mapf_dir, valid, os.path.join(workdir, "mapf", "eval"), seed + 1000, valid_samples,
                        max_new_tokens, chat, reference=model_name, value=value)
        results["map_f"] = {"eval": mapf, "generated_samples": steps * mapf_batch, "steps": steps,
                            "seconds": round(mapf_seconds, 1)}
        print(f"MAP-F (RLOO, {steps} steps × {mapf_batch} = {steps * mapf_batch} samples): {fmt(mapf)}  "
              f"KL {fmt(mapf['kl'])}  {mapf_seconds:.0f} s  [{time.time() - t0:.0f} s]")

    print()
    print("| method | iteration | best feedback | worst feedback | reference | KL to ref (nats/seq) | s/iteration |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['iteration']} | {fmt(r['best'])} | {fmt(r['worst'])} | {fmt(ref)} | "
              f"{fmt(r['kl'])} | {r['train_seconds']:.0f} |")
    if mapf is not None:
        print(f"| MAP-F (RLOO) | {steps} steps | {fmt(mapf)} (unconditioned) | – | {fmt(ref)} | {fmt(mapf['kl'])} | "
              f"{mapf_seconds:.0f} (total) |")
    print()
    verdicts = {}
    for kind in [k for k in ("alt_rm", "palette") if k in results]:
        last = results[kind][-1]
        b, w = last["best"], last["worst"]
        gap_hi = (b["mean"] - ref["mean"]) / np.hypot(b["se"], ref["se"])
        gap_lo = (ref["mean"] - w["mean"]) / np.hypot(w["se"], ref["se"])
        paired_hi, paired_lo = paired_gap(b, ref), paired_gap(ref, w)
        verdicts[kind] = {"best_minus_ref_in_se": gap_hi, "ref_minus_worst_in_se": gap_lo,
                          "target_met": bool(gap_hi >= 2 and gap_lo >= 2),
                          "paired_best_minus_ref_in_se": paired_hi, "paired_ref_minus_worst_in_se": paired_lo,
                          "target_met_paired": bool(paired_hi >= 2 and paired_lo >= 2)}
        print(f"{kind}: best − reference = {gap_hi:.2f} SE, reference − worst = {gap_lo:.2f} SE "
              f"(unpaired SE of the difference); target ≥ 2 SE each: "
              f"{'met' if verdicts[kind]['target_met'] else 'NOT met'}")
        print(f"{kind}: paired by prompt (the three conditions share prompts and sampling seeds): "
              f"{paired_hi:.2f} SE and {paired_lo:.2f} SE; "
              f"{'met' if verdicts[kind]['target_met_paired'] else 'NOT met'}")
    results["verdicts"] = verdicts
    results["seconds"] = round(time.time() - t0, 1)
    out = os.path.join(ROOT, out_file) if not os.path.isabs(out_file) else out_file
    records.save_json_atomic(results, out, indent=2)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.time() - t0:.0f} s (CPU shared with other jobs: timings are not clean); results in {out_file}")
    if "alt_rm" in results and mapf is not None:
        gain_alt = results["alt_rm"][-1]["best"]["mean"] - ref["mean"]
        gain_mapf = mapf["mean"] - ref["mean"]
        print(f"ratio={gain_alt / gain_mapf if gain_mapf != 0 else float('nan'):.3f}")


if __name__ == "__main__":
    cli.main(main)
