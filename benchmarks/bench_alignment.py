"""Attainment experiment: do the fine-tuning trainers reach the palette c that MAP-D reaches?

    .venv/bin/python benchmarks/bench_alignment.py                 # offline demo, 3 seeds
    .venv/bin/python benchmarks/bench_alignment.py --seeds=0       # one seed

The documented pipeline, per seed, on the embedded SmolLM2-135M-Instruct with LoRA and two offline values:
  1. gendata.py samples M continuations per prompt from p0 (full distribution: temperature 1, top_k 0)
     into a results file with its metadata sidecar; every value is scored into it;
  2. the palette c raises the first value halfway from p0's mean toward p0's mean best-of-M level and
     keeps the others at p0's mean; alignValues.py solves λ (per-prompt estimator) and writes the λ
     target (results/alignValues.jsonl) that the trainers read (sampling config and base model checked);
  3. methods, on disjoint prompt sets (train / dual / eval) drawn by a seeded permutation of the prompts:
       p0             the reference model;
       MAP-D          importance resampling with softmax(λᵀr) over p0's eval samples;
       MAP-F fixed    trainPPO's RLOO trainer (β = 1) toward the fixed λ;
       MAP-F primal-dual   the same with trainPPO.PaletteCallback (exact dual update on the dual prompts);
       MAP-DPO soft   trainDPO's SoftDPOTrainer on the results file's pairs (β = 1);
       iterated MAP-DPO    trainDPO.train_map_dpo --palette (pairs regenerated from the policy);
  4. each trained model is sampled on the eval prompts (exact ids) and scored; KL(π‖p0) is the mean of
     log π(y|x) − log p0(y|x) over those samples (MAP-D: the per-prompt KL of its resampling weights).
Prints per value the realized level, |level − c|/SE (SE over prompts) and, per method, KL and seconds;
writes results/bench_alignment.json. Ends with `ratio=<KL of MAP-F primal-dual / KL of MAP-D>`, the largest
over the seeds (the target: ≤ 1.5 with MAP-F primal-dual within 2 SE of c, or above c where λ = 0, on every
value and seed); without MAP-F primal-dual in --methods, it is for the first trained method run.
"""
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mapalign import arguments  # noqa: E402
from mapalign import cli  # noqa: E402
from mapalign import decoding  # noqa: E402
from mapalign import lambda_targets  # noqa: E402
from mapalign import models  # noqa: E402
from mapalign import primaldual  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import resampling  # noqa: E402
from mapalign import training  # noqa: E402
from mapalign import train_dpo as trainDPO  # noqa: E402
from mapalign import train_ppo as trainPPO  # noqa: E402
from mapalign import values as value_registry  # noqa: E402
from mapalign.align import AlignValues  # noqa: E402
from mapalign.generation import TextGeneration  # noqa: E402

METHODS = ("p0", "MAP-D", "MAP-F fixed", "MAP-F primal-dual", "MAP-DPO soft", "iterated MAP-DPO")


def choose_palette(R, groups, raise_index, frac):
    """c: the raised value frac of the way from p0's mean to the mean per-prompt best; others at p0's mean."""
    means = R.mean(axis=1)
    c = means.copy()
    best = np.mean([R[raise_index, groups == g].max() for g in np.unique(groups)])
    c[raise_index] = means[raise_index] + frac * (best - means[raise_index])
    return c


def evaluate_policy(model, tokenizer, prompts, per_prompt, sampling, score, seed, ref_model=None):
    """(levels, SE, KL, KL SE) of a policy on the eval prompts (primaldual's sampler and log-probs)."""
    recs = primaldual.sample_policy(model, tokenizer, prompts, per_prompt, sampling, seed, first_id=10 ** 5)
    R = score([r["prompt"] for r in recs], [r["continuation"] for r in recs])
    levels, se = primaldual.levels_and_se(R, records.prompt_groups(recs))
    logp = primaldual.record_logprobs(model, recs, sampling["temperature"])
    with primaldual.reference_of(model, ref_model) as ref:
        logp0 = primaldual.record_logprobs(ref, recs, sampling["temperature"])
    d = logp - logp0
    return levels, se, float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def map_d(R, groups, lam):
    """MAP-D on p0's eval samples: per-prompt softmax(λᵀr) weights; (levels, SE over prompts, KL)."""
    per_prompt, kls = [], []
    for g in np.unique(groups):
        Rg = R[:, groups == g]
        w = resampling.resample_weights(lam @ Rg)
        per_prompt.append(Rg @ w)
        kls.append(float(np.sum(w * np.log(np.maximum(w * len(w), 1e-300)))))
    P = np.stack(per_prompt, axis=1)
    return P.mean(axis=1), P.std(axis=1, ddof=1) / np.sqrt(P.shape[1]), float(np.mean(kls))


def run_seed(seed, cfg, work):
    """One seed of the experiment; returns {method: {levels, se, kl, kl_se, seconds}} and the palette."""
    t_seed = time.time()
    values = value_registry.expand_value_list(cfg["value_list"])
    raise_index = values.index(cfg["raise_value"])
    n_train, n_dual, n_eval = cfg["n_train_prompts"], cfg["n_dual_prompts"], cfg["n_eval_prompts"]
    scorers = value_registry.load_scorers(values, basemodel_for_perplexity=cfg["model_name"])

    def score(prompts, conts):
        return decoding.score_samples(values, scorers, list(prompts), list(conts))

    # the seed draws the train / dual / eval split: load_prompts keeps the builtin set in file order for
    # every seed, so without this all seeds would be judged on the same eval prompts
    from mapalign.prompts import load_prompts
    source = load_prompts(cfg["data_name"], seed=seed)
    if n_train + n_dual + n_eval > len(source):
        raise SystemExit(f"error: --n_train_prompts + --n_dual_prompts + --n_eval_prompts = "
                         f"{n_train + n_dual + n_eval} but {cfg['data_name']!r} has {len(source)} prompts")
    order = np.random.default_rng(seed).permutation(len(source))
    split = {"train": order[:n_train].tolist(), "dual": order[n_train:n_train + n_dual].tolist(),
             "eval": order[n_train + n_dual:n_train + n_dual + n_eval].tolist()}
    prompt_file = os.path.join(work, "prompts.json")
    records.save_json_atomic([{"prompt": source[i]} for i in split["train"] + split["dual"]], prompt_file)

    # 1. gendata: p0 samples of the train + dual prompts, scored into the results file
    t0 = time.time()
    gen = TextGeneration(basemodel_name=cfg["model_name"], data_name=prompt_file, save_directory=work,
                         seed=seed, num_prompts=n_train + n_dual, top_k=0, max_new_tokens=cfg["max_new_tokens"],
                         samples_per_prompt=cfg["samples_per_prompt"], overwrite=True, progress=False)
    path = gen.generate_from_original_model(batch_size=32)
    recs = records.load_records(path)
    R = score([r["prompt"] for r in recs], [r["continuation"] for r in recs])
    for i, v in enumerate(values):
        for r, x in zip(recs, R[i]):
            r[v] = float(x)
    records.save_json_atomic(recs, path)
    groups = records.prompt_groups(recs)
    # 2. palette and λ (alignValues, per-prompt estimator, on the whole file) -> the λ target the trainers read
    c = choose_palette(R, groups, raise_index, cfg["palette_frac"])
    aligner = AlignValues(values, path, c.tolist(), estimator="per_prompt")
    lam, ok = aligner.optimize_lambda()
    if not ok:
        raise RuntimeError(f"palette {c} not solved: {aligner.result.status}")
    lam_file = os.path.join("results", "alignValues.jsonl")
    target = lambda_targets.load_target(lam_file)
    sampling, model_name, notes = primaldual.resolve_sampling(target, {}, cfg["model_name"])
    print(f"[seed {seed}] palette c = {np.round(c, 3).tolist()}  λ = {np.round(lam, 3).tolist()}  sampling {sampling}"
          f"  [{time.time() - t0:.0f} s]", flush=True)
    prompts = gen.prompts
    train_prompts, dual_prompts, eval_prompts = ([source[i] for i in split[k]] for k in ("train", "dual", "eval"))
    assert [p if isinstance(p, str) else p["prompt"] for p in prompts] == train_prompts + dual_prompts
    out = {}

    # p0 and MAP-D on the eval prompts
    t0 = time.time()
    p0, tokenizer = models.load_model_and_tokenizer(model_name, device="cpu")
    lv, se, kl, kl_se = evaluate_policy(p0, tokenizer, eval_prompts, cfg["eval_samples_per_prompt"], sampling, score,
                                        seed + 1, ref_model=p0)
    out["p0"] = dict(levels=lv, se=se, kl=0.0, kl_se=0.0, seconds=time.time() - t0)
    eval_recs = primaldual.sample_policy(p0, tokenizer, eval_prompts, cfg["eval_samples_per_prompt"], sampling,
                                         seed + 2, first_id=10 ** 5)
    Re = score([r["prompt"] for r in eval_recs], [r["continuation"] for r in eval_recs])
    lv, se, kl = map_d(Re, records.prompt_groups(eval_recs), np.asarray(lam))
    out["MAP-D"] = dict(levels=lv, se=se, kl=kl, kl_se=0.0, seconds=time.time() - t0)
    del p0
    lora = training.lora_config(cfg["lora_r"], 2 * cfg["lora_r"], 0.0)
    tmp = os.path.join(work, "models")

    def mapf(palette):
        t0 = time.time()
        model, tok = models.load_model_and_tokenizer(model_name, device="cpu")
        model.train()
        callback = None
        if palette:
            tracker = primaldual.PaletteTracker(values, c, score, dual_prompts, cfg["dual_samples_per_prompt"],
                                                sampling, update=cfg["dual_update"], step=cfg["dual_step"],
                                                tol_se=cfg["palette_tol_se"], seed=seed + 5, first_id=n_train)
            callback = trainPPO.PaletteCallback(tracker, cfg["palette_every"], tok, lam=lam)
        trainer = trainPPO.build_trainer(
            model, tok, train_prompts, values, lam, scorers, os.path.join(tmp, "mapf"), beta=1.0, peft_config=lora,
            learning_rate=cfg["ppo_learning_rate"], batch_size=cfg["ppo_batch_size"],
            lr_scheduler_type=trainPPO.lr_schedule(cfg["ppo_lr_scheduler_type"], palette),
            mini_batch_size=cfg["ppo_batch_size"], num_generations=4, max_new_tokens=sampling["max_new_tokens"],
            temperature=sampling["temperature"], top_k=sampling["top_k"], top_p=sampling["top_p"],
            use_chat_template=sampling["use_chat_template"], max_steps=cfg["ppo_steps"], logging_steps=4,
            save_steps=10 ** 6, seed=seed, callbacks=None if callback is None else [callback])
        if callback is not None:
            callback.trainer = trainer
        trainer.train()
        result = evaluate_policy(trainer.model, tok, eval_prompts, cfg["trained_samples_per_prompt"], sampling, score,
                                 seed + 3)
        extra = {} if callback is None else {"rounds": callback.tracker.history, "lam_final": callback.lam.tolist()}
        return dict(zip(("levels", "se", "kl", "kl_se"), result), seconds=time.time() - t0, **extra)

    if "MAP-F fixed" in cfg["methods"]:
        out["MAP-F fixed"] = mapf(False)
        print(f"[seed {seed}] MAP-F fixed done  [{time.time() - t_seed:.0f} s]", flush=True)
    if "MAP-F primal-dual" in cfg["methods"]:
        out["MAP-F primal-dual"] = mapf(True)
        print(f"[seed {seed}] MAP-F primal-dual done  [{time.time() - t_seed:.0f} s]", flush=True)

    # MAP-DPO soft on the results file's training prompts
    if "MAP-DPO soft" in cfg["methods"]:
        t0 = time.time()
        model, tok = models.load_model_and_tokenizer(model_name, device="cpu")
        model.train()
        pairs = trainDPO.map_preference_pairs([r for r in recs if r["prompt_id"] < n_train], values, lam,
                                              max_pairs_per_prompt=cfg["dpo_max_pairs_per_prompt"], seed=seed)
        trainer = trainDPO.build_preference_trainer(
            model, tok, pairs, os.path.join(tmp, "mapdpo"), beta=1.0, peft_config=lora,
            use_chat_template=sampling["use_chat_template"], learning_rate=cfg["dpo_learning_rate"],
            num_train_epochs=cfg["dpo_epochs"], per_device_train_batch_size=cfg["dpo_batch_size"],
            gradient_accumulation_steps=1, logging_steps=4, save_steps=10 ** 6, seed=seed,
            max_new_tokens=sampling["max_new_tokens"])
        trainer.train()
        result = evaluate_policy(trainer.model, tok, eval_prompts, cfg["trained_samples_per_prompt"], sampling, score,
                                 seed + 3)
        out["MAP-DPO soft"] = dict(zip(("levels", "se", "kl", "kl_se"), result), seconds=time.time() - t0,
                                   pairs=len(pairs))
        del trainer, model
        print(f"[seed {seed}] MAP-DPO soft done  [{time.time() - t_seed:.0f} s]", flush=True)

    if "iterated MAP-DPO" in cfg["methods"]:
        # iterated MAP-DPO: the CLI function, dual prompts = the file's last n_dual prompts
        t0 = time.time()
        save = trainDPO.train_map_dpo(
            path, lambda_file=lam_file, palette=",".join(f"{x:.6f}" for x in c), palette_rounds=cfg["dpo_rounds"],
            palette_prompts=n_dual, palette_samples=cfg["dual_samples_per_prompt"], dual_update=cfg["dual_update"],
            dual_step=cfg["dual_step"], palette_tol_se=cfg["palette_tol_se"],
            max_pairs_per_prompt=cfg["dpo_max_pairs_per_prompt"], beta=1.0, use_lora=True,
            lora_r=cfg["lora_r"], lora_alpha=2 * cfg["lora_r"], lora_dropout=0.0,
            learning_rate=cfg["dpo_learning_rate"],
            num_train_epochs=1, per_device_train_batch_size=cfg["dpo_batch_size"], gradient_accumulation_steps=1,
            logging_steps=4, save_steps=10 ** 6, seed=seed, save_path=os.path.join(tmp, "iterdpo"), overwrite=True)
        model, tok = models.load_model_and_tokenizer(save, device="cpu")
        ref, _ = models.load_model_and_tokenizer(model_name, device="cpu")
        result = evaluate_policy(model, tok, eval_prompts, cfg["trained_samples_per_prompt"], sampling, score, seed + 3,
                                 ref_model=ref)
        meta = training.load_training_metadata(save)
        out["iterated MAP-DPO"] = dict(zip(("levels", "se", "kl", "kl_se"), result), seconds=time.time() - t0,
                                       rounds=meta.get("palette_rounds"))
        del model, ref
        print(f"[seed {seed}] iterated MAP-DPO done  [{time.time() - t_seed:.0f} s]", flush=True)
    return out, c, np.asarray(lam), values, notes, split


def meets(levels, se, c, lam, tol_se=2.0):
    """Every value within tol_se SE of c, or above c where λ = 0 (the benchmark's target)."""
    return primaldual.within_tolerance(levels, se, c, lam, tol_se)[0]


def main(seeds="0,1,2", model_name=models.DEFAULT_MODEL, value_list="sentiment,coherence-minilm",
         raise_value="sentiment", palette_frac=0.5, data_name="builtin", n_train_prompts=24, n_dual_prompts=8,
         n_eval_prompts=16, samples_per_prompt=4, eval_samples_per_prompt=8, trained_samples_per_prompt=4,
         dual_samples_per_prompt=4, max_new_tokens=16, ppo_steps=16, ppo_batch_size=8, ppo_learning_rate=5e-4,
         ppo_lr_scheduler_type=None, palette_every=4, dual_update="exact", dual_step=2.0, palette_tol_se=2.0,
         dpo_epochs=1, dpo_rounds=2,
         dpo_max_pairs_per_prompt=3,
         dpo_batch_size=4, dpo_learning_rate=3e-4, lora_r=16, methods=",".join(METHODS),
         out_file="results/bench_alignment.json"):
    """Run the attainment experiment (module docstring) for each seed and print the table.

    Args:
        seeds: comma-separated seeds (each seeds gendata, training and the train / dual / eval split: a
            permutation of the source's prompts, recorded by index in the results as prompt_split).
        model_name, value_list, raise_value, palette_frac, data_name: the problem (defaults: offline).
        n_train_prompts, n_dual_prompts, n_eval_prompts: disjoint prompt sets (training; the primal-dual
            loop's held-out prompts; evaluation).
        samples_per_prompt: M of gendata (λ, palette, DPO pairs); eval_/trained_/dual_samples_per_prompt:
            samples per prompt for p0/MAP-D, trained models, and each primal-dual round.
        max_new_tokens: continuation length everywhere.
        ppo_steps, ppo_batch_size, ppo_learning_rate, palette_every, dual_update, dual_step, palette_tol_se:
            MAP-F budget and the primal-dual settings (λ update every palette_every steps; both primal-dual
            loops stop once the held-out levels are within palette_tol_se SE of c; the target is always
            judged at 2 SE on the eval prompts).
        ppo_lr_scheduler_type: MAP-F's learning-rate schedule (default as trainPPO.py: constant for
            primal-dual, linear for fixed λ).
        dpo_epochs, dpo_rounds, dpo_max_pairs_per_prompt, dpo_batch_size, dpo_learning_rate: MAP-DPO budgets
            (dpo_rounds: rounds of iterated MAP-DPO, one epoch each).
        lora_r: LoRA rank; out_file: JSON results (relative to the repository).
        methods: the methods to run, a comma list from METHODS (p0, MAP-D, MAP-F fixed, MAP-F primal-dual,
            MAP-DPO soft, iterated MAP-DPO); p0 and MAP-D always run (every level and KL is judged against
            them). The target lines need MAP-F primal-dual; `ratio=` is for MAP-F primal-dual when it ran, else
            for the first trained method run, in the table's order.
    """
    cfg = dict(locals())
    cfg["methods"] = arguments.str_list(methods, "methods")
    unknown = sorted(set(cfg["methods"]) - set(METHODS))
    if unknown:
        raise SystemExit(f"error: --methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    seed_list = [int(s) for s in arguments.float_list(seeds, "seeds")]
    t_start = time.time()
    runs = []
    here = os.getcwd()
    for seed in seed_list:
        work = tempfile.mkdtemp(prefix="bench_alignment_")
        os.chdir(work)  # alignValues writes results/alignValues.{txt,jsonl} here, not into the repository
        try:
            out, c, lam, values, notes, split = run_seed(seed, cfg, work)
        finally:
            os.chdir(here)
            shutil.rmtree(work, ignore_errors=True)
        runs.append({"seed": seed, "c": c.tolist(), "lam": lam.tolist(), "target_notes": notes, "prompt_split": split,
                     "methods": {m: {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                                     for k, v in r.items()} for m, r in out.items()}})
        print_seed(runs[-1], values)
        summary = {"values": values, "config": cfg, "runs": runs, "seconds": round(time.time() - t_start, 1)}
        path = out_file if os.path.isabs(out_file) else os.path.join(ROOT, out_file)
        records.save_json_atomic(summary, path)  # after every seed: a killed run keeps the finished seeds
    trained = [m for m in METHODS if m in cfg["methods"] and m not in ("p0", "MAP-D")]
    if "MAP-F primal-dual" in trained:
        pd = [r["methods"]["MAP-F primal-dual"] for r in runs]
        target_met = all(meets(x["levels"], x["se"], r["c"], r["lam"]) for x, r in zip(pd, runs))
        print(f"\nMAP-F primal-dual within 2 SE of c (or above where λ = 0) on every value and seed: {target_met}")
    print(f"total {time.time() - t_start:.0f} s; results in {out_file}")
    if trained:
        judged = "MAP-F primal-dual" if "MAP-F primal-dual" in trained else trained[0]
        kl_ratio = [r["methods"][judged]["kl"] / max(r["methods"]["MAP-D"]["kl"], 1e-9) for r in runs]
        target = " (target ≤ 1.5)" if judged == "MAP-F primal-dual" else ""
        print(f"KL({judged}) / KL(MAP-D) per seed: {', '.join(f'{x:.2f}' for x in kl_ratio)}{target}")
        print(f"ratio={max(kl_ratio):.3f}")


def print_seed(run, values):
    c, lam = np.asarray(run["c"]), np.asarray(run["lam"])
    print(f"\nseed {run['seed']}: c = {np.round(c, 3).tolist()}, λ = {np.round(lam, 3).tolist()}")
    head = "".join(f"{v + ' level':>24}{'|Δ|/SE':>8}" for v in values)
    print(f"{'method':<20}{head}{'KL':>8}{'s':>7}")
    for name in [m for m in METHODS if m in run["methods"]]:
        r = run["methods"][name]
        cells = "".join(f"{r['levels'][i]:>17.3f}±{r['se'][i]:<6.3f}"
                        f"{abs(r['levels'][i] - c[i]) / max(r['se'][i], 1e-9):>8.2f}" for i in range(len(values)))
        print(f"{name:<20}{cells}{r['kl']:>8.3f}{r['seconds']:>7.0f}")


if __name__ == "__main__":
    cli.main(main)
