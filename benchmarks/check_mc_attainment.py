"""Check MAP's decoding claim: MC decoding with the solved λ realizes a feasible palette.

    python benchmarks/check_mc_attainment.py                  # ~5-10 min on one CPU thread
    python benchmarks/check_mc_attainment.py --reference_file=results/smollm2-135m-builtin.json

Steps:
1. Reference samples: M continuations per prompt from the reference model, scored on the values
   (cached in results/check_mc_attainment-reference.json and reused when the settings match), or a
   given results file (its prompts are decoded; several samples per prompt are needed for the
   per-prompt estimator that matches MC decoding).
2. Palette (unless --c_list): c = m0 + rho·(m_max − m0) per value, with m0 the reference mean and
   m_max the mean over prompts of the best sample's reward (what a per-prompt tilt could reach at
   most; the 90% quantile for files with one sample per prompt); the λ solver
   (per-prompt normalisation, as MC decoding resamples within each prompt) gives λ; an infeasible
   palette is replaced by the solver's suggested feasible palette.
3. Fresh MC-decoded samples (new seed, same prompts, same M) with that λ: per value the realized
   mean, its standard error SE (sample std / √N over prompts) and |mean − c| / SE; also |mean − c|
   over SEc = √(SE² + SE_ref²), where SE_ref is the reference samples' own noise in the level at λ.
4. The token-level decoder (tokenValueDecoder) with the same λ on the same prompts, for comparison
   (realized levels and time); it is a heuristic and is not expected to reach c.
Writes results/check_mc_attainment.json (table, λ, seeds, timings).

Why per-prompt: the solver's per-prompt estimator with M samples per prompt computes exactly the
expectation that MC decoding with the same M realizes (self-normalised weights within a prompt), so
the check measures the method, not a mismatch of estimators. The pooled estimator (the original's)
also reweights prompts, which decoding cannot do.
"""
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from mapalign import arguments  # noqa: E402
from mapalign import cli  # noqa: E402
from mapalign import decoding  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import solver  # noqa: E402
from mapalign import values as value_registry  # noqa: E402

REFERENCE_CACHE = os.path.join("results", "check_mc_attainment-reference.json")


def reference_samples(model, tokenizer, prompts, value_names, scorers, M, max_new_tokens, seed, batch_size,
                      engine=None):
    """M scored samples per prompt from the reference model, as results records (λ = 0 decoding
    returns every candidate and its rewards); drawn by `engine` (engines.py; None: batched HF)."""
    res, tokens = decoding.mc_decode(model, tokenizer, prompts, np.zeros(len(value_names)), value_names, M,
                                     scorers=scorers, batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed,
                                     return_candidates=True, progress=True, engine=engine)
    recs = []
    for i, (prompt, r) in enumerate(zip(prompts, res)):
        for j, text in enumerate(r["candidates"]):
            rec = {"prompt": prompt, "generated": prompt + " " + text.strip(), "continuation": text.strip(),
                   "id": f"{i}-{j}", "prompt_id": i, "sample_id": j}
            rec.update({v: r["candidate_rewards"][k][j] for k, v in enumerate(value_names)})
            recs.append(rec)
    return recs, tokens


def summarize(rewards, c):
    """Per value: realized mean, SE (std/√N, ddof 1) and |mean − c|/SE. rewards (k, N)."""
    mean = rewards.mean(axis=1)
    se = rewards.std(axis=1, ddof=1) / np.sqrt(rewards.shape[1])
    return mean, se, np.abs(mean - c) / se


def main(model_name="smollm2-135m", values="sentiment,harmlessness", num_prompts=64, MC_nsamples=8,
         max_new_tokens=32, rho=0.5, c_list=None, reference_file=None, batch_size=128, device="cpu", dtype=None,
         threads=1, seed=0, token_decoder=True, top_k=50, interval=3, engine="hf", engine_url=None,
         out=os.path.join("results", "check_mc_attainment.json")):
    """Run the attainment check and print the table.

    Args:
        model_name: reference model (models.py name).
        values: aligned values, comma-separated (offline scorers by default).
        num_prompts: first N prompts of the builtin set (or of reference_file's prompts).
        MC_nsamples: M, samples per prompt, for the reference set and for MC decoding.
        max_new_tokens: tokens per sample.
        rho: how far the default palette sits between the reference mean (0) and the mean per-prompt best
            sample (1); with one sample per prompt, the 90% quantile (1).
        c_list: an explicit palette instead, one level per value (e.g. --c_list=0.5,0.97).
        reference_file: a results file to solve on instead of generating reference samples.
        batch_size, device, dtype, threads: generation settings (threads: torch CPU threads).
        seed: reference samples use seed, MC decoding seed + 1, the token decoder seed + 2.
        token_decoder: also run tokenValueDecoder for comparison (top_k, interval).
        engine, engine_url: what draws the reference and MC samples: hf (default), vllm, server (at engine_url)
            or auto (engines.py); the model above still scores perplexity and runs the token decoder.
        out: JSON summary path.
    """
    import torch
    from mapalign import engines
    from mapalign import token_decoder as tokenValueDecoder
    from mapalign.models import load_model_and_tokenizer
    from mapalign.prompts import load_prompts

    torch.set_num_threads(int(threads))
    value_names = arguments.str_list(values, "values")
    M, N = int(MC_nsamples), int(num_prompts)
    model, tokenizer = load_model_and_tokenizer(model_name, device=device, dtype=dtype)
    scorers = value_registry.load_scorers(value_names, device=str(model.device),
                                          basemodel_for_perplexity=(model, tokenizer))
    eng = engines.make_engine(engine, model_name, engine_url=engine_url, model=model, tokenizer=tokenizer, dtype=dtype,
                              threads=int(threads), expected_tokens=2 * N * M * int(max_new_tokens))
    engine_id = {k: v for k, v in eng.info().items() if k in ("engine", "version")}
    print(f"threads={torch.get_num_threads()} model={model_name} values={value_names} prompts={N} M={M} "
          f"max_new_tokens={max_new_tokens} rho={rho} seed={seed} engine={engine_id}")
    settings = {"model": model_name, "values": value_names, "num_prompts": N, "MC_nsamples": M,
                "max_new_tokens": int(max_new_tokens), "seed": int(seed), "dtype": dtype, "engine": engine_id}

    t0 = time.time()
    if reference_file:
        recs = records.load_records(reference_file)
        ids = sorted({records.prompt_id(r, j) for j, r in enumerate(recs)})[:N]
        keep = set(ids)
        recs = [r for j, r in enumerate(recs) if records.prompt_id(r, j) in keep]
        by_id = {records.prompt_id(r, j): r["prompt"] for j, r in enumerate(recs)}
        prompts = [by_id[i] for i in ids]
        source = reference_file
    else:
        prompts = load_prompts("builtin")[:N]
        cached = records.load_metadata(REFERENCE_CACHE).get("settings") if os.path.exists(REFERENCE_CACHE) else None
        if cached == settings:
            recs = records.load_records(REFERENCE_CACHE)
            print(f"reference samples: reusing {REFERENCE_CACHE}")
        else:
            recs, tokens = reference_samples(model, tokenizer, prompts, value_names, scorers, M, int(max_new_tokens),
                                             int(seed), int(batch_size), engine=eng)
            records.save_json_atomic(recs, REFERENCE_CACHE)
            records.save_metadata(REFERENCE_CACHE, {"settings": settings, "new_tokens": tokens,
                                                    "seconds": round(time.time() - t0, 1)})
        source = REFERENCE_CACHE
    reference_s = time.time() - t0
    R = records.reward_matrix(recs, value_names, source=source)
    groups = records.prompt_groups(recs)
    sizes = np.bincount(groups)
    per_prompt = sizes.min() > 1
    if not per_prompt:
        print("note: the reference file holds one sample per prompt: solving with the pooled estimator, which also "
              "reweights prompts; MC decoding cannot, so its realized levels may fall short of c.")

    m0 = R.mean(axis=1)
    if c_list is not None:
        c = decoding.parse_lam_list(c_list)
    elif per_prompt:  # between the reference mean and the mean over prompts of the best sample
        order, starts = np.argsort(groups, kind="stable"), np.r_[0, np.cumsum(sizes)[:-1]]
        c = m0 + float(rho) * (np.maximum.reduceat(R[:, order], starts, axis=1).mean(axis=1) - m0)
    else:  # one sample per prompt: between the mean and the 90% quantile
        c = m0 + float(rho) * (np.quantile(R, 0.9, axis=1) - m0)
    solve_groups = groups if per_prompt else None
    result = solver.solve_palette(R, c, groups=solve_groups)
    if result.status != solver.FEASIBLE:
        print(f"palette {np.round(c, 4).tolist()} is {result.status}; using the suggested palette "
              f"{np.round(result.suggested_palette, 4).tolist()}")
        c = result.suggested_palette
        result = solver.solve_palette(R, c, groups=solve_groups)
    lam = result.lam
    # standard error of the reference estimate of the level at λ: per-prompt levels' spread (per-prompt
    # estimator), or the self-normalised importance-sampling variance Σ w²(r − c)² (pooled)
    w = solver.tilt_weights(R, lam, solve_groups)
    if per_prompt:
        levels = np.stack([np.bincount(groups, weights=w * R[i]) * len(sizes) for i in range(len(value_names))])
        ref_se = levels.std(axis=1, ddof=1) / np.sqrt(len(sizes))
    else:
        ref_se = np.sqrt(((w * (R - np.asarray(c)[:, None])) ** 2).sum(axis=1))
    print(f"palette c = {np.round(c, 4).tolist()} ({result.status}, {'per-prompt' if per_prompt else 'pooled'} "
          f"estimator), λ = {np.round(lam, 4).tolist()}, reference ESS {result.ess:.2f}")

    t0 = time.time()
    res, mc_tokens = decoding.mc_decode(model, tokenizer, prompts, lam, value_names, M, scorers=scorers,
                                        batch_size=int(batch_size), max_new_tokens=int(max_new_tokens),
                                        seed=int(seed) + 1, progress=True, engine=eng)
    mc_s = time.time() - t0
    eng.close()
    mc_R = np.array([[r["rewards"][v] for r in res] for v in value_names])
    mc_mean, mc_se, mc_z = summarize(mc_R, c)
    comb_z = np.abs(mc_mean - c) / np.sqrt(mc_se ** 2 + ref_se ** 2)
    table = {"value": value_names, "reference_mean": m0.tolist(), "c": np.asarray(c).tolist(), "lambda": lam.tolist(),
             "reference_se_at_lambda": ref_se.tolist(), "mc_mean": mc_mean.tolist(), "mc_se": mc_se.tolist(),
             "mc_abs_diff_over_se": mc_z.tolist(), "mc_abs_diff_over_combined_se": comb_z.tolist()}

    if token_decoder:
        t0 = time.time()
        conts, stats = tokenValueDecoder.value_aligned_decode(model, tokenizer, prompts, value_names, lam,
                                                              int(max_new_tokens), int(top_k), int(interval),
                                                              scorers=scorers, seed=int(seed) + 2)
        token_s = time.time() - t0
        tok_R = decoding.score_samples(value_names, scorers, prompts, [x.strip() for x in conts])
        tok_mean, tok_se, tok_z = summarize(tok_R, c)
        table.update(token_mean=tok_mean.tolist(), token_se=tok_se.tolist(), token_abs_diff_over_se=tok_z.tolist())

    print()
    print(f"{'value':<16}{'ref mean':>10}{'c':>10}{'λ':>9}{'MC mean':>10}{'SE':>8}{'|d|/SE':>8}{'|d|/SEc':>9}"
          + (f"{'token mean':>12}{'SE':>8}{'|d|/SE':>8}" if token_decoder else ""))
    for i, v in enumerate(value_names):
        row = (f"{v:<16}{m0[i]:>10.4f}{c[i]:>10.4f}{lam[i]:>9.3f}{mc_mean[i]:>10.4f}{mc_se[i]:>8.4f}{mc_z[i]:>8.2f}"
               f"{comb_z[i]:>9.2f}")
        if token_decoder:
            row += f"{tok_mean[i]:>12.4f}{tok_se[i]:>8.4f}{tok_z[i]:>8.2f}"
        print(row)
    print()
    print(f"reference samples: {reference_s:.1f} s; MC decoding (M={M}): {mc_tokens} tokens in {mc_s:.1f} s "
          f"({mc_s / N:.2f} s/prompt)" + (f"; token decoder: {stats['new_tokens']} tokens in {token_s:.1f} s "
                                          f"({token_s / N:.2f} s/prompt, {stats['texts_scored']} candidate texts "
                                          "scored)" if token_decoder else ""))
    within = bool(np.all(mc_z <= 1.0))
    print(f"MC decoding within one SE of c for every value: {within} (max |d|/SE = {mc_z.max():.2f}; SEc also "
          "counts the reference samples' noise in c)")
    summary = {"settings": dict(settings, rho=rho, c_list=None if c_list is None else np.ravel(c).tolist(),
                                reference_file=reference_file, per_prompt=bool(per_prompt),
                                mc_seed=int(seed) + 1, token_seed=int(seed) + 2, top_k=top_k, interval=interval,
                                threads=torch.get_num_threads()),
               "palette_status": result.status, "table": table, "within_one_se": within,
               "seconds": {"reference": reference_s, "mc": mc_s, "token": token_s if token_decoder else None},
               "new_tokens": {"mc": mc_tokens, "token": stats["new_tokens"] if token_decoder else None}}
    records.save_json_atomic(summary, out, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.main(main)
