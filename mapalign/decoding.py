"""MAP-D: Monte-Carlo aligned decoding. For each prompt, draw M continuations from the reference
model, score all of them on the aligned values, and keep one drawn with probability
softmax(λᵀr) over the M (importance resampling toward p_λ ∝ p0·exp(λᵀr), SPEC-MAP §1, §3).

Fixes and changes against the original `generate_from_MC_aligned_model`:
* batched across prompts and samples: one generate call covers several prompts × M samples, and
  each prompt's KV cache is computed once and shared by its M samples (sampling.sample, `share_prefix`);
* every value scores all the samples of a batch in one scorer call (values.load_scorer);
* the softmax subtracts the maximum in float64, so no λᵀr spread overflows (the original's
  exp without max-subtraction turned into inf/NaN and crashed the sampler);
* seeded: the sampling RNG of a batch is derived from (seed, index of its first prompt), so a
  shard resumed after a kill reproduces an uninterrupted run;
* records keep prompt/generated and add continuation, ids, the chosen sample's rewards,
  `chosen_index` (which of the M samples) and `mc_ess` (effective sample size 1/Σw² of the
  resampling weights, between 1 and M: near 1 means λ lets one sample dominate);
* `best_of_n=True` keeps the argmax of λᵀr instead of resampling.

Functions here take a model and tokenizer and do no file I/O except `write_mc_shard`, which runs
the shard job behind `gendata.py ... generate_from_MC_aligned_model` (naming, checkpoints, resume).
"""
import os
import time

import numpy as np

from mapalign import arguments
from mapalign import engines
from mapalign import records
from mapalign import values as values_registry
from mapalign.resampling import DecodingError, choose_samples
from mapalign.sampling import block_seed

MC_KEYS = ("chosen_index", "mc_ess")


# ---------------------------------------------------------------------------------------------
# λ and value lists, shard names

def parse_lam_list(lam_list):
    """λ as fire and users pass it (arguments.float_list) as a float64 array (k,); DecodingError if bad."""
    try:
        return np.array(arguments.float_list(lam_list, "lam_list"), dtype=np.float64)
    except ValueError as e:
        raise DecodingError(str(e)) from None


def resolve_values(value_list, lam):
    """The value names of `value_list` ("all", "a,b", list or fire's tuple), checked against λ."""
    try:
        names = values_registry.expand_value_list(value_list)
        arguments.lambda_per_value(lam, names)
    except ValueError as e:
        raise DecodingError(str(e)) from None
    return names


def values_string(value_list):
    """The `val=` part of shard names: "all" when the user said all, else the comma-joined names ('/' and '%'
    of reward-model heads such as rm:FOLDER/attr %-quoted, so the name stays one file)."""
    if isinstance(value_list, str) and value_list.strip() == "all":
        return "all"
    return ",".join(values_registry.expand_value_list(value_list)).replace("%", "%25").replace("/", "%2F")


def shard_path(save_directory, base_name, lam, value_list, start_index, end_index):
    """`{save_directory}/temp/{base}_lam={λ .3f,...}_val={all|v1,v2}_{start}to{end}.json` (original naming)."""
    name = f"{base_name}_lam={records.lam_string(lam)}_val={values_string(value_list)}_{start_index}to{end_index}.json"
    return os.path.join(save_directory, "temp", name)


# ---------------------------------------------------------------------------------------------
# Scoring

def score_samples(value_names, scorers, prompts, continuations):
    """Rewards of n (prompt, continuation) pairs on each value: one scorer call per value.

    prompts, continuations: lists of n raw prompts and stripped continuations.
    Returns float64 (k, n). Raises DecodingError naming the value whose scorer returned a wrong
    shape or non-finite numbers.
    """
    out = np.empty((len(value_names), len(prompts)), dtype=np.float64)
    for i, name in enumerate(value_names):
        r = np.asarray(scorers[name](list(prompts), list(continuations)), dtype=np.float64).reshape(-1)
        if r.shape != (len(prompts),):
            raise DecodingError(f"scorer of value {name!r} returned {r.shape[0]} rewards for {len(prompts)} texts.")
        if not np.all(np.isfinite(r)):
            raise DecodingError(f"scorer of value {name!r} returned {int(np.sum(~np.isfinite(r)))} non-finite "
                                "rewards; fix the scorer (MC resampling needs finite rewards).")
        out[i] = r
    return out


# ---------------------------------------------------------------------------------------------
# Decoding

def mc_decode(model, tokenizer, prompts, lam, value_names, MC_nsamples=16, scorers=None, batch_size=64,
              max_new_tokens=50, temperature=1.0, top_k=50, best_of_n=False, use_chat_template=None, seed=0,
              first_prompt_index=0, share_prefix=True, return_candidates=False, progress=False,
              basemodel_for_perplexity=None, engine=None):
    """MC-aligned decoding of a list of prompts (no file I/O).

    Args:
        model, tokenizer: the reference model (left padding) and its tokenizer.
        prompts: raw prompt strings; chat-formatted here when the template is used.
        lam: (k,) λ; value_names: the k aligned values (registry names or keys of `scorers`).
        MC_nsamples: M, samples drawn per prompt.
        scorers: optional dict name -> f(prompts, continuations); missing values load from the registry
            (perplexity is scored under `basemodel_for_perplexity`, default the generating model).
        batch_size: sequences per generate call; prompts per call = max(1, batch_size // M).
        best_of_n: keep the argmax of λᵀr instead of resampling.
        use_chat_template: None = when the tokenizer has one, True, False (raw prompts, as the original).
        seed, first_prompt_index: the batch starting at absolute prompt index i is seeded from (seed, i),
            so the same prompt range gives the same output whatever ran before.
        return_candidates: also return every candidate and its rewards (for the GUI and diagnostics).
        engine: what draws the M samples (engines.make_engine: hf, vllm, server); None: batched transformers
            with `model` (engines.HFEngine, share_prefix as given). The model still scores perplexity.
    Returns:
        (results, new_tokens): one dict per prompt with keys continuation (raw chosen text), chosen_index,
        mc_ess, rewards ({value: float} of the chosen sample), and with return_candidates: candidates
        (M raw texts), candidate_rewards ((k, M) list) and weights (M); plus the generated-token count.
    """
    from mapalign.models import format_prompts
    from tqdm.auto import tqdm

    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    value_names = list(value_names)
    if len(value_names) != lam.size:
        raise DecodingError(f"{lam.size} λ for {len(value_names)} values {value_names}; give one λ per value.")
    M = int(MC_nsamples)
    if M < 1:
        raise DecodingError(f"MC_nsamples must be ≥ 1; got {MC_nsamples}")
    scorers = values_registry.load_scorers(value_names, device=str(model.device), scorers=scorers,
                                           basemodel_for_perplexity=basemodel_for_perplexity or (model, tokenizer))
    chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else bool(use_chat_template)
    inputs = format_prompts(tokenizer, prompts, use_chat_template=chat)
    per_call = max(1, int(batch_size) // M)
    engine = engine or engines.HFEngine(model, tokenizer, share_prefix=share_prefix)
    sampling = engines.Sampling(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=top_k)
    results, new_tokens = [], 0
    for lo in tqdm(range(0, len(prompts), per_call), desc="MC decode", unit="batch", disable=not progress):
        hi = min(lo + per_call, len(prompts))
        # the engine seeds its sampling from (seed, first prompt index); chunk 1 of that key seeds the draw
        np_seed = block_seed(seed, first_prompt_index + lo, 1)
        samples, n_new = engine.sample(inputs[lo:hi], M, sampling, seed=seed, first_prompt_index=first_prompt_index + lo,
                                       add_special_tokens=not chat)
        new_tokens += n_new
        flat_prompts = [p for p in prompts[lo:hi] for _ in range(M)]
        flat_conts = [c.strip() for group in samples for c in group]
        R = score_samples(value_names, scorers, flat_prompts, flat_conts).reshape(len(value_names), hi - lo, M)
        chosen, weights, ess = choose_samples(R, lam, np.random.default_rng(np_seed), best_of_n=best_of_n)
        for p in range(hi - lo):
            j = int(chosen[p])
            result = {"continuation": samples[p][j], "chosen_index": j, "mc_ess": float(ess[p]),
                      "rewards": {v: float(R[i, p, j]) for i, v in enumerate(value_names)}}
            if return_candidates:
                result.update(candidates=samples[p], candidate_rewards=R[:, p, :].tolist(),
                              weights=weights[p].tolist())
            results.append(result)
    return results, new_tokens


# ---------------------------------------------------------------------------------------------
# The shard job behind gendata.TextGeneration.generate_from_MC_aligned_model

def write_mc_shard(gen, lam_list, value_list, MC_nsamples=32, start_index=0, end_index=None, best_of_n=False,
                   batch_size=64, scorers=None, share_prefix=True):
    """MC-aligned generation for prompts [start_index, end_index) of a gendata.TextGeneration `gen`,
    written to the original's shard name (see shard_path) and resumable.

    Progress is journaled (records.Checkpoint) to `{shard}.journal.jsonl` every `gen.checkpoint_every`
    prompts (on batch boundaries); the shard and its sidecar `{shard}.meta.json` (settings
    fingerprint, seeds, counts) are written atomically at the end. Re-running the same command after
    a kill continues after the last journaled batch and gives the records of an uninterrupted run. A
    journal or shard made with other settings is never mixed in: the run refuses (naming the first
    differing setting) unless gen.overwrite.
    Returns the shard path.
    """
    from tqdm.auto import tqdm

    lam = parse_lam_list(lam_list)
    names = resolve_values(value_list, lam)
    if not gen.sampling.get("do_sample", True) or gen.sampling.get("num_beams", 1) != 1:
        raise DecodingError("MC-aligned generation samples: use --do_sample=True --num_beams=1 "
                            f"(got {gen.sampling}).")
    M = int(MC_nsamples)
    if M < 1:
        raise DecodingError(f"MC_nsamples must be ≥ 1; got {MC_nsamples}")
    prompts = gen.prompts
    # the original clamps end_index to the prompt count and names the shard with the clamped value
    start, end = gen._range(start_index, end_index, len(prompts))
    path = shard_path(gen.save_directory, gen.base_name, lam, value_list, start, end)
    model, tokenizer = gen.load_model()
    chat = gen.chat_template_used()
    given = set(scorers or {})
    # perplexity is scored under the generating model itself (its identity is gen's model_identity)
    scorer_ids = [{"value": v, "custom_scorer": True} if v in given else
                  values_registry.scorer_fingerprint(v, basemodel_for_perplexity="<the generating model>",
                                                     dtype=gen.dtype) for v in names]
    fingerprint = dict(gen.fingerprint(start, end), kind="mc_aligned", lam=lam.tolist(), values=names,
                       MC_nsamples=M, best_of_n=bool(best_of_n), scorers=scorer_ids)

    with records.Checkpoint(path, fingerprint, overwrite=gen.overwrite) as ckpt:
        if ckpt.complete:
            print(f"gendata: {path} is already complete with these settings; nothing to do.")
            return path
        state = ckpt.state or {}
        done = start + len(ckpt.done)
        if ckpt.done and [r.get("prompt_id") for r in ckpt.done] != list(range(start, done)):
            raise records.RecordsError(f"journal {ckpt.journal_path!r} does not hold consecutive prompts from "
                                       f"{start}; delete it or pass --overwrite=True.")
        if ckpt.resumed:
            print(f"gendata: resuming {path} at prompt {done} of [{start}, {end}) from {ckpt.journal_path}")
            if state.get("batch_size") != int(batch_size):
                print(f"gendata: note: the interrupted run used batch_size={state.get('batch_size')}; resuming "
                      f"with {batch_size} samples differently from an uninterrupted run (still valid samples).")
        tokens_before = state.get("new_tokens", 0)

        # perplexity under the generating model itself, already in memory (the original's pipeline
        # passed no base model here, so its perplexity step always failed)
        scorers = values_registry.load_scorers(names, device=str(model.device), scorers=scorers,
                                               basemodel_for_perplexity=(model, tokenizer))
        engine = gen.engine(end - start) if gen.resolved_engine(end - start) != "hf" else None
        per_call = max(1, int(batch_size) // M)
        # journal on batch boundaries, so a resumed run re-creates the same batches and seeds
        every = max(per_call, (gen.checkpoint_every // per_call) * per_call)
        t0, tokens, last_saved, pending = time.time(), 0, done, []
        bar = tqdm(total=end - start, initial=done - start, desc=f"MC-aligned {gen.base_name}", unit="prompt",
                   disable=not gen.progress, dynamic_ncols=True)
        for lo in range(done, end, per_call):
            hi = min(lo + per_call, end)
            results, n_new = mc_decode(model, tokenizer, prompts[lo:hi], lam, names, M, scorers=scorers,
                                       batch_size=batch_size, max_new_tokens=gen.sampling["max_new_tokens"],
                                       temperature=gen.sampling["temperature"], top_k=gen.sampling["top_k"],
                                       best_of_n=best_of_n, use_chat_template=chat, seed=gen.seed,
                                       first_prompt_index=lo, share_prefix=share_prefix, engine=engine)
            tokens += n_new
            for i, res in zip(range(lo, hi), results):
                rec = gen.make_record(prompts[i], res["continuation"], i, 0, chat)
                rec.update(res["rewards"])
                rec.update(chosen_index=res["chosen_index"], mc_ess=res["mc_ess"])
                pending.append(rec)
            bar.update(hi - lo)
            bar.set_postfix(tok_s=f"{tokens / max(time.time() - t0, 1e-9):.1f}")
            if hi - last_saved >= every and hi < end:
                ckpt.append(pending, state={"batch_size": int(batch_size), "new_tokens": tokens_before + tokens})
                pending, last_saved = [], hi
        bar.close()
        engine_info = dict(engine.info() if engine else {}, **fingerprint["engine"])
        gen.close_engine()
        recs = ckpt.records + pending
        elapsed = time.time() - t0
        meta = {"kind": "mc_aligned_generation", "complete": True, "file": os.path.basename(path),
                "model": gen.basemodel_name, "seed": gen.seed, "batch_size": int(batch_size), "engine": engine_info,
                "counts": {"prompts": end - start, "records": len(recs), "new_tokens": tokens_before + tokens},
                "timing": {"seconds_last_run": round(elapsed, 3),
                           "tokens_per_second_last_run": round(tokens / max(elapsed, 1e-9), 2)},
                "seeding": "per batch: gendata.block_seed(seed, first prompt index, 0) for sampling, (..., 1) for "
                           "resampling", "record_keys": {"chosen_index": "which of the M samples was kept",
                                                         "mc_ess": "effective sample size 1/Σw² of the weights"}}
        ckpt.finalize(recs, metadata=meta)
    print(f"gendata: wrote {len(recs)} MC-aligned records to {path}")
    return path
