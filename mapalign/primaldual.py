"""Primal-dual palette tracking for the fine-tuning trainers (MAP-F in trainPPO.py, iterated MAP-DPO in
trainDPO.py), and the λ targets they train toward.

The objective. A palette c asks for a policy π that stays as close as possible to the reference p0
while reaching every level:

    minimise KL(π‖p0)  subject to  E_π[r_i] ≥ c_i  (i = 1..k),

whose solution is p_λ ∝ p0·exp(λᵀr) with λ ≥ 0 the dual optimum (λ_i > 0 only where the constraint
binds). A trainer that reaches its own optimum for a fixed λ (RLOO with β = 1, soft-label DPO with
β = 1) lands on p_λ, so a λ solved on p0's samples is right only if (a) the samples were drawn with the
trainer's sampling config, (b) the estimator treats prompts as the trainer does (per prompt) and
(c) training reaches its optimum. Primal-dual tracking removes (c) and the sampling error in λ: every
few steps the policy's realized levels are measured on fresh samples of held-out prompts and λ is
corrected, either

  * "exact": the exact dual solve (solver.solve_palette, per-prompt estimator) on importance weights
    p0(y|x)/π(y|x) of the policy's own samples, i.e. the λ whose p_λ reaches c as estimated from the
    current policy (with π = p_λ' the weights undo λ' exactly), or
  * "ascent": projected dual ascent λ ← max(0, λ + η(c − m̂)), which also corrects a policy that
    has not reached its optimum,

until every value is within its tolerance (|m̂_i − c_i| ≤ tol_se·SE_i, or m̂_i ≥ c_i − tol_se·SE_i
where λ_i = 0).

Pure parts (levels and standard errors, dual updates, stopping) are separate from the model parts
(sampling with exact token ids, sequence log-probabilities); the λ target file format is lambda_targets.py.
"""
import contextlib
import math
import os
import warnings

import numpy as np

from mapalign import arguments
from mapalign import records
from mapalign import solver
from mapalign.errors import InputError
from mapalign.lambda_targets import load_target

TARGET_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens", "use_chat_template")
# what a trainer samples with when its λ records no sampling config (older λ files, original MAP files)
DEFAULT_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 50, "use_chat_template": None}
UPDATES = ("exact", "ascent")


class TargetMismatchError(InputError):
    """The trainer's sampling config or base model differs from the one the λ was fitted on."""


# ---------------------------------------------------------------------------------------------
# λ targets: what a λ was fitted on

def sampling_of_results(file_path):
    """The sampling config {temperature, top_k, top_p, max_new_tokens, use_chat_template} and base model
    recorded in a results file's metadata sidecar, or (None, None) when it records none."""
    meta = records.load_metadata(file_path) or {}
    sampling = meta.get("sampling")
    model = meta.get("model") or meta.get("model_name")
    if not sampling:
        return None, model
    fp = meta.get("fingerprint") or {}
    config = {"temperature": float(sampling.get("temperature", 1.0)), "top_k": int(sampling.get("top_k", 50)),
              "top_p": float(sampling.get("top_p", 1.0)), "max_new_tokens": int(sampling.get("max_new_tokens", 50)),
              "use_chat_template": sampling.get("use_chat_template", fp.get("use_chat_template"))}
    return config, model


def resolve_sampling(target, requested, model_name, allow_mismatch=False):
    """The sampling config and base model a trainer uses for a λ target, and the warnings to record.

    Args:
        target: a λ target (load_target) or None (λ given by hand, nothing recorded).
        requested: {key: value or None}; None = take it from the target (or the documented default).
        model_name: the trainer's base model, or None = the target's.
        allow_mismatch: when True a differing value is used and a warning recorded instead of an error.
    Returns:
        (sampling dict, model_name, warnings list).
    Raises TargetMismatchError naming both sides of every difference (unless allow_mismatch).
    """
    notes = []
    recorded = (target or {}).get("sampling")
    if recorded is None:
        what = "λ given without a λ file" if target is None else "this λ file records no sampling config"
        notes.append(f"{what}: training samples with the documented default "
                     f"(temperature 1, top_k 0, top_p 1, max_new_tokens 50 unless given); make sure the λ was "
                     "fitted on samples drawn that way")
        recorded = {}
    sampling, diffs = {}, []
    for key in TARGET_KEYS:
        mine = requested.get(key)
        theirs = recorded.get(key, DEFAULT_SAMPLING[key])
        if mine is None:
            sampling[key] = theirs
        else:
            sampling[key] = mine
            if key in recorded and not _same(mine, recorded[key]):
                diffs.append(f"{key}: trainer {mine!r} vs λ fitted with {recorded[key]!r}")
    base = (target or {}).get("base_model")
    if model_name is None:
        if not base:
            raise InputError("no --model_name given and the λ file records no base model")
        model_name = base
    elif base and str(base) != str(model_name):
        diffs.append(f"base model: trainer {model_name!r} vs λ fitted on samples of {base!r}")
    if diffs:
        message = ("the λ target does not match this training run (" + "; ".join(diffs) + "). The trainer would "
                   "aim at a different p_λ than the one λ was solved for. Re-solve λ on samples drawn with the "
                   "trainer's config, drop the differing flags, or pass --allow_mismatch=True")
        if not allow_mismatch:
            raise TargetMismatchError(message)
        notes.append("allow_mismatch: " + message)
    if target is not None and target.get("estimator") == "pooled":
        notes.append("λ was solved with the pooled estimator, which also reweights prompts; a fine-tuned policy "
                     "cannot change its prompts. Re-solve with alignValues.py --estimator=per_prompt (the "
                     "fine-tuning default) for the matched target")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return sampling, model_name, notes


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# ---------------------------------------------------------------------------------------------
# Realized levels and dual updates (pure)

def levels_and_se(rewards, groups):
    """Realized levels (k,) and their standard errors (k,) from (k, n) rewards of policy samples.

    Prompts are the independent units: the level is the mean over prompts of each prompt's mean
    reward, its SE the std of those prompt means / √G (samples of one prompt are correlated)."""
    R = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    groups = np.asarray(groups)
    keys = np.unique(groups)
    means = np.stack([R[:, groups == g].mean(axis=1) for g in keys], axis=1)  # (k, G)
    G = means.shape[1]
    se = means.std(axis=1, ddof=1) / math.sqrt(G) if G > 1 else np.full(R.shape[0], np.nan)
    return means.mean(axis=1), se


def variance_components(rewards, groups):
    """Between- and within-prompt variance of each value's rewards (one-way random effects).

    rewards (k, n), groups (n,) prompt ids with ≥ 2 samples each. Returns (between (k,), within (k,)):
    within is the mean over prompts of the sample variance (ddof 1); between is the variance of the prompt
    means (ddof 1) less within / m, with m the harmonic mean of the samples per prompt, floored at 0.
    A level on G prompts × m samples then has SE √((between + within / m) / G) (dual_level_se)."""
    R = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    groups = np.asarray(groups)
    keys = np.unique(groups)
    sizes = np.array([np.sum(groups == g) for g in keys])
    if len(keys) < 2 or sizes.min() < 2:
        raise InputError(f"variance components need ≥ 2 prompts with ≥ 2 samples each; got {len(keys)} prompts "
                         f"with {sizes.min() if len(sizes) else 0}–{sizes.max() if len(sizes) else 0} samples")
    means = np.stack([R[:, groups == g].mean(axis=1) for g in keys], axis=1)
    within = np.stack([R[:, groups == g].var(axis=1, ddof=1) for g in keys], axis=1).mean(axis=1)
    m = len(sizes) / np.sum(1.0 / sizes)
    between = np.maximum(means.var(axis=1, ddof=1) - within / m, 0.0)
    return between, within


def dual_level_se(between, within, prompts, samples_per_prompt):
    """SE (k,) of a realized level measured on `prompts` prompts × `samples_per_prompt` samples."""
    return np.sqrt((np.asarray(between) + np.asarray(within) / samples_per_prompt) / prompts)


def exact_dual_update(rewards, log_ratio, c, groups, lam_init=None, tol=1e-6):
    """λ for palette c solved exactly on policy samples reweighted to p0.

    rewards (k, n) of samples y_j ~ π(·|x_j); log_ratio (n,) = log p0(y_j|x_j) − log π(y_j|x_j); groups (n,)
    prompt ids. The tilt exp(λᵀr_j + log_ratio_j) is p_λ/π up to a per-prompt constant, so the per-prompt
    solve of solver.solve_palette on it is the exact dual solve for p_λ ∝ p0·exp(λᵀr). The log-ratio
    enters as an extra reward row whose λ is held at 1 (optimize_indices), with a level that never binds.
    Returns the solver's PaletteResult for the k values (lam, realized, status, suggested_palette, ...).
    """
    R = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    k = R.shape[0]
    b = np.asarray(log_ratio, dtype=np.float64)
    b = b - b.max()
    full = np.vstack([R, b[None, :]])
    lam0 = np.zeros(k) if lam_init is None else np.asarray(lam_init, dtype=np.float64)
    c_full = np.append(np.asarray(c, dtype=np.float64), b.min() - 1.0)
    result = solver.solve_palette(full, c_full, groups=groups, lam_init=np.append(lam0, 1.0),
                                  optimize_indices=list(range(k)), tol=tol)
    for name in ("lam", "c", "realized", "slack", "certificate"):
        value = getattr(result, name)
        if value is not None:
            setattr(result, name, np.asarray(value)[:k])
    if result.suggested_palette is not None:
        result.suggested_palette = np.asarray(result.suggested_palette)[:k]
    return result


def ascent_update(lam, c, levels, step):
    """Projected dual ascent: max(0, λ + step·(c − m̂))."""
    return np.maximum(0.0, np.asarray(lam, dtype=np.float64)
                      + float(step) * (np.asarray(c, dtype=np.float64) - np.asarray(levels, dtype=np.float64)))


def within_tolerance(levels, se, c, lam, tol_se=2.0, tol_abs=0.0):
    """(all ok, per-value ok): |m̂ − c| ≤ tol where λ_i > 0, m̂ ≥ c − tol where λ_i = 0;
    tol = tol_se·SE + tol_abs."""
    levels, se, c, lam = (np.asarray(x, dtype=np.float64) for x in (levels, se, c, lam))
    tol = tol_se * np.nan_to_num(se, nan=0.0) + tol_abs
    ok = np.where(lam > 0, np.abs(levels - c) <= tol, levels >= c - tol)
    return bool(ok.all()), ok.tolist()


# ---------------------------------------------------------------------------------------------
# The policy's samples, with exact token ids and log-probabilities

def sample_policy(model, tokenizer, prompts, per_prompt, sampling, seed, first_id=0, batch_size=32):
    """Records {prompt, continuation, prompt_id, sample_id, prompt_ids, continuation_ids} of `per_prompt`
    samples per raw prompt, drawn with `sampling` (sampling.sample; exact sampled ids). Torch is seeded with
    seed·100003 + the index of each call's first prompt."""
    import torch

    from mapalign import models
    from mapalign import sampling as hf_sampling
    was_training = model.training
    model.eval()
    inputs = models.format_prompts(tokenizer, prompts, use_chat_template=sampling.get("use_chat_template"))
    chat = inputs != list(prompts)
    per_call = max(1, int(batch_size) // int(per_prompt))
    out = []
    for lo in range(0, len(prompts), per_call):
        torch.manual_seed(int(seed) * 100003 + lo)
        drawn = hf_sampling.sample(model, tokenizer, inputs[lo:lo + per_call], int(per_prompt),
                                   max_new_tokens=sampling["max_new_tokens"], temperature=sampling["temperature"],
                                   top_k=sampling["top_k"], top_p=sampling["top_p"], add_special_tokens=not chat)
        texts, p_ids, c_ids = drawn.texts, drawn.prompt_ids, drawn.token_ids
        for p, group in enumerate(texts):
            for s, text in enumerate(group):
                out.append({"prompt": prompts[lo + p], "continuation": text.strip(), "prompt_id": first_id + lo + p,
                            "sample_id": s, "prompt_ids": p_ids[p], "continuation_ids": c_ids[p][s]})
    model.train(was_training)
    return out


def record_logprobs(model, recs, temperature=1.0, batch_size=16):
    """log π(y|x) (n,) of each record's continuation_ids after its prompt_ids, at the sampling temperature
    (sampling.sequence_logprobs)."""
    from mapalign import sampling
    return sampling.sequence_logprobs(model, [r["prompt_ids"] for r in recs], [r["continuation_ids"] for r in recs],
                                      temperature, batch_size)


@contextlib.contextmanager
def reference_of(model, ref_model=None):
    """The reference p0 of a policy: `ref_model` when given, else the PEFT model with its adapter disabled."""
    if ref_model is not None:
        yield ref_model
        return
    from peft import PeftModel
    if not isinstance(model, PeftModel):
        raise ValueError("a reference model is needed for full fine-tuning (ref_model)")
    with model.disable_adapter():
        yield model


# ---------------------------------------------------------------------------------------------
# The loop

class PaletteTracker:
    """Measures a policy's realized levels on held-out prompts and corrects λ toward the palette.

    Args:
        values: value names; c: the palette (k,); scorer: fn(prompts, continuations) -> (k, n) rewards.
        prompts: held-out raw prompts; per_prompt: samples per prompt per round; sampling: the trainer's.
        update: "exact" or "ascent"; step: ascent step size η (λ units per reward unit; also the fallback
            of "exact" when the palette is out of reach of one round's samples, status "infeasible").
        tol_se, tol_abs: stopping tolerance (within_tolerance); seed: sampling seed base.
        step_name: what the caller's `step` counts, for the printed line ("step" for optimizer steps,
            "DPO round" for iterated MAP-DPO).
    Each call of `round(model, ref_model, lam)` appends a dict {round, step, lam, levels, se, kl, kl_se,
    within, new_lam, status} to `self.history` and returns (new λ, within tolerance).
    """

    def __init__(self, values, c, scorer, prompts, per_prompt, sampling, update="exact", step=1.0, tol_se=2.0,
                 tol_abs=0.0, seed=0, first_id=0, step_name="step"):
        if update not in UPDATES:
            raise InputError(f"--dual_update must be one of {UPDATES}; got {update!r}")
        self.values, self.c = list(values), np.asarray(c, dtype=np.float64)
        self.scorer, self.prompts, self.per_prompt = scorer, list(prompts), int(per_prompt)
        self.sampling, self.update, self.step = dict(sampling), update, float(step)
        self.tol_se, self.tol_abs, self.seed, self.first_id = float(tol_se), float(tol_abs), int(seed), int(first_id)
        self.step_name = str(step_name)
        if self.per_prompt < 2 and update == "exact":
            raise InputError("the exact dual update needs ≥ 2 held-out samples per prompt (--palette_samples)")
        self.history = []

    def measure(self, model, ref_model=None):
        """(records, rewards (k, n), groups, log p0 − log π (n,)) of fresh policy samples."""
        recs = sample_policy(model, self._tokenizer, self.prompts, self.per_prompt, self.sampling,
                             self.seed + 7919 * len(self.history), first_id=self.first_id)
        R = np.atleast_2d(np.asarray(self.scorer([r["prompt"] for r in recs], [r["continuation"] for r in recs]),
                                     dtype=np.float64))
        logp = record_logprobs(model, recs, self.sampling["temperature"])
        with reference_of(model, ref_model) as ref:
            logp0 = record_logprobs(ref, recs, self.sampling["temperature"])
        return recs, R, records.prompt_groups(recs), logp0 - logp

    def round(self, model, tokenizer, lam, ref_model=None, step=None):
        self._tokenizer = tokenizer
        lam = np.asarray(lam, dtype=np.float64)
        recs, R, groups, log_ratio = self.measure(model, ref_model)
        levels, se = levels_and_se(R, groups)
        kl_terms = -log_ratio
        kl, kl_se = float(kl_terms.mean()), float(kl_terms.std(ddof=1) / math.sqrt(len(kl_terms)))
        ok, per_value = within_tolerance(levels, se, self.c, lam, self.tol_se, self.tol_abs)
        entry = {"round": len(self.history), "step": step, "lam": lam.tolist(), "levels": levels.tolist(),
                 "se": se.tolist(), "kl": kl, "kl_se": kl_se, "within": per_value}
        if ok:
            new = lam
            entry["status"] = "within tolerance"
        elif self.update == "exact":
            result = exact_dual_update(R, log_ratio, self.c, groups, lam_init=lam)
            entry["status"] = result.status
            if result.status == solver.INFEASIBLE:
                # c lies outside what these few samples can reach: record the proof, and take a dual ascent
                # step instead (the caller refuses the palette when this happens on p0's own samples)
                entry["suggested_palette"] = None if result.suggested_palette is None else \
                    np.asarray(result.suggested_palette).tolist()
                new = ascent_update(lam, self.c, levels, self.step)
            else:
                new = np.maximum(result.lam, 0.0)
        else:
            new = ascent_update(lam, self.c, levels, self.step)
            entry["status"] = "ascent"
        entry["new_lam"] = np.asarray(new).tolist()
        self.history.append(entry)
        return np.asarray(new), ok

    def summary_line(self, entry=None):
        e = entry or self.history[-1]
        parts = [f"{v} {m:.3f}±{s:.3f} (c {c:.3f}, λ {l:.3f})" for v, m, s, c, l in
                 zip(self.values, e["levels"], e["se"], self.c, e["lam"])]
        # checks count from 0 and need not line up with the caller's steps (MAP-DPO's first check may come
        # after DPO round 1), so the line names both
        return (f"[palette check {e['round']} after {self.step_name} {e['step']}] " + "; ".join(parts)
                + f"; KL {e['kl']:.3f}; {e['status']}")


def check_feasible(values, c, rewards, groups):
    """Refuse a palette the exact solver proves infeasible on p0's samples, printing the suggested palette."""
    result = solver.solve_palette(np.atleast_2d(rewards), np.asarray(c, dtype=np.float64), groups=groups)
    if result.status == solver.INFEASIBLE:
        suggested = ",".join(f"{x:.4f}" for x in result.suggested_palette) \
            if result.suggested_palette is not None else "none found"
        raise InputError(f"--palette={','.join(f'{x:g}' for x in c)} is infeasible for {values} (proved by an LP "
                         f"certificate on the reference model's samples); suggested palette: --palette={suggested}")
    return result


def plot_history(history, values, c, path):
    """Plot λ, realized levels (±SE, with c) and KL per round to `path` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rounds = [e["round"] for e in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for i, v in enumerate(values):
        axes[0].plot(rounds, [e["lam"][i] for e in history], marker="o", label=v)
        line = axes[1].errorbar(rounds, [e["levels"][i] for e in history], yerr=[e["se"][i] for e in history],
                                marker="o", capsize=3, label=v)
        axes[1].axhline(c[i], ls="--", color=line[0].get_color())
    axes[2].errorbar(rounds, [e["kl"] for e in history], yerr=[e["kl_se"] for e in history], marker="o", capsize=3)
    for ax, title in zip(axes, ("λ", "realized level (dashed: c)", "KL(π‖p0), nats")):
        ax.set_title(title)
        ax.set_xlabel("round")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_target(lam_list=None, value_list=None, lambda_file=None, palette=None):
    """(values, λ or None, target or None, palette array or None) from a trainer's λ flags.

    λ comes from --lambda_file (a λ target written by alignValues.py, with what it was fitted on) or
    --lam_list (by hand: nothing recorded); --palette alone starts from the exact solve on the reference
    model's held-out samples. --value_list defaults to the λ file's values."""
    from mapalign.values import expand_value_list
    target = None
    if lambda_file is not None:
        if lam_list is not None:
            raise InputError("give --lambda_file or --lam_list, not both")
        target = load_target(lambda_file)
        values = list(target["values"])
        if value_list is not None and expand_value_list(value_list) != values:
            raise TargetMismatchError(f"--value_list={expand_value_list(value_list)} but --lambda_file={lambda_file!r} "
                                      f"was solved for {values}")
        lam = np.asarray(target["lam"], dtype=np.float64)
    elif lam_list is not None:
        values = expand_value_list("all" if value_list is None else value_list)
        lam = np.asarray(arguments.lambda_per_value(lam_list, values), dtype=np.float64)
    else:
        if palette is None:
            raise InputError("give --lam_list, --lambda_file or --palette (the target levels)")
        values, lam = expand_value_list("all" if value_list is None else value_list), None
    c = None
    if palette is not None:
        c = np.asarray(arguments.float_list(palette, "palette"), dtype=np.float64)
        if c.size != len(values):
            raise InputError(f"--palette has {c.size} levels but the values are {values}; give one level per value")
    return values, lam, target, c
