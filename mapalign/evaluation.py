"""Evaluation helpers: quantile transforms, realized quantiles, win rates and navigation efficiency.

Pure functions on arrays and record lists, shared by the plot scripts (plot/) and any CLI that
reports how an aligned model compares with its base model. Units: rewards are in each value's own
units; quantiles and win rates are shares in [0, 1].

Fixes against the original plot_cal_winrate (SPEC-MAP §10, §14):
* ties count ½, not as losses;
* records are paired by prompt id, never silently by list position (see `paired_prompt_samples`);
* within a prompt every model sample is compared with every base sample (a U-statistic), so two
  identical models score ½ in expectation whatever their sample counts (averaging each prompt's
  samples first, as this module once did, does not: the mean of 8 skewed samples beats one sample
  more than half the time);
* the standard error is that of the per-prompt scores, which equals the original √(p(1−p)/n) for
  one sample per prompt and no ties.
"""
import numpy as np

from mapalign import records
from mapalign.errors import InputError
from mapalign import solver


class EvaluationError(InputError):
    """Inputs that cannot be compared; the message names them and the fix."""


def quantile_of(reference, levels):
    """Quantile of `levels` within the `reference` sample: the share of reference values strictly
    below each level (left searchsorted / n), as the original quantile_transform_single_c.

    reference: (n,) rewards of one value. levels: scalar or array, same units.
    Returns a float (scalar input) or an array of the shape of `levels`, in [0, 1].
    """
    reference = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    if reference.size == 0:
        raise EvaluationError("quantile_of: the reference sample is empty.")
    q = np.searchsorted(reference, np.asarray(levels, dtype=np.float64), side="left") / reference.size
    return float(q) if np.ndim(q) == 0 else q


def quantile_transform(reference_rewards, levels):
    """Row-wise quantile transform of several values at once.

    reference_rewards: (k, n) rewards, one row per value. levels: (k,) or (m, k), the last axis
    in the same value order. Returns an array of the shape of `levels`.
    """
    reference_rewards = np.atleast_2d(np.asarray(reference_rewards, dtype=np.float64))
    levels = np.asarray(levels, dtype=np.float64)
    k = reference_rewards.shape[0]
    if levels.shape[-1:] != (k,):
        raise EvaluationError(f"quantile_transform: levels have shape {levels.shape}, but the reference "
                              f"has {k} values; the last axis must hold one level per value.")
    out = np.empty_like(levels)
    for i in range(k):
        out[..., i] = quantile_of(reference_rewards[i], levels[..., i])
    return out


def realized_quantiles(rewards_align, lam, rewards_eval, groups=None):
    """Realized levels of the evaluated values under λ (solver.realized_levels: rewards of
    `rewards_eval` averaged with the tilt weights softmax(λᵀ r_align)), as quantiles of the
    untilted `rewards_eval` rows.

    rewards_align: (k, n); lam: (k,); rewards_eval: (m, n); groups: optional (n,) prompt groups
    for the per-prompt estimator. Returns (m,) quantiles in [0, 1].
    """
    levels = solver.realized_levels(rewards_align, lam, rewards_eval, groups=groups)
    return quantile_transform(rewards_eval, levels)


def standard_error(x):
    """Standard error of the mean: population std (ddof 0) / √n, as the original `avg_std` row."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise EvaluationError("standard_error: empty sample.")
    return float(np.std(x) / np.sqrt(x.size))


def _has_prompt_ids(recs):
    flags = ["prompt_id" in r for r in recs]
    if any(flags) and not all(flags):
        return None  # mixed: the caller reports it
    return all(flags)


def paired_prompt_samples(model_records, base_records, metrics, model_source="model file",
                         base_source="base file"):
    """Pair two results files prompt by prompt and return their per-prompt rewards.

    Pairing rule:
    * both files carry `prompt_id` on every record: pair by prompt id. Both must cover the same
      prompt ids, and a prompt id must have the same prompt text in both files.
    * otherwise (files from the original project carry no ids): pair by position, allowed only
      when both files have the same length and the same prompt at every position.
    A prompt may have several samples in either file (e.g. MC samples), in different numbers.

    Returns (model (k, n_model), base (k, n_base), model_prompt (n_model,), base_prompt (n_base,),
    prompt_keys (G,)): the rewards in the order of `metrics` and each record's prompt as an index
    into prompt_keys. Raises EvaluationError naming the mismatch (nothing is paired silently).
    """
    metrics = list(metrics)
    model_ids, base_ids = _has_prompt_ids(model_records), _has_prompt_ids(base_records)
    for ids, source in ((model_ids, model_source), (base_ids, base_source)):
        if ids is None:
            raise EvaluationError(f"{source}: some records have `prompt_id` and some do not; the file is "
                                  "corrupted or merged from different sources. Regenerate it.")
    model = records.reward_matrix(model_records, metrics, source=model_source)
    base = records.reward_matrix(base_records, metrics, source=base_source)

    if model_ids and base_ids:
        model_texts, base_texts = {}, {}
        for recs, texts in ((model_records, model_texts), (base_records, base_texts)):
            for r in recs:
                texts.setdefault(r["prompt_id"], r.get("prompt"))
        only_model = sorted(set(model_texts) - set(base_texts))
        only_base = sorted(set(base_texts) - set(model_texts))
        if only_model or only_base:
            raise EvaluationError(
                f"{model_source} and {base_source} cover different prompts: {len(only_model)} prompt ids only in "
                f"the first (e.g. {only_model[:5]}), {len(only_base)} only in the second (e.g. {only_base[:5]}). "
                "Generate both on the same prompt set (same data_name, start and end).")
        for pid, text in model_texts.items():
            other = base_texts[pid]
            if text is not None and other is not None and text != other:
                raise EvaluationError(
                    f"prompt_id {pid} has different prompts in {model_source} ({text[:60]!r}) and {base_source} "
                    f"({other[:60]!r}): the files come from different prompt sources and cannot be paired.")
        keys, model_prompt = np.unique(np.asarray([r["prompt_id"] for r in model_records]), return_inverse=True)
        base_prompt = np.searchsorted(keys, np.asarray([r["prompt_id"] for r in base_records]))
        return model, base, model_prompt, base_prompt, keys

    if len(model_records) != len(base_records):
        raise EvaluationError(
            f"cannot pair {model_source} ({len(model_records)} records) with {base_source} "
            f"({len(base_records)} records): without `prompt_id` on both, records are paired by position, "
            "which needs the same length and prompt order. Regenerate them with this toolkit (it stores prompt ids).")
    for j, (a, b) in enumerate(zip(model_records, base_records)):
        if a.get("prompt") != b.get("prompt"):
            raise EvaluationError(
                f"record {j} has different prompts in {model_source} ({str(a.get('prompt'))[:60]!r}) and "
                f"{base_source} ({str(b.get('prompt'))[:60]!r}): position pairing needs the same prompts in the "
                "same order. Regenerate them with this toolkit (it stores prompt ids).")
    positions = np.arange(len(model_records))
    return model, base, positions, positions, positions


def win_rate(model_scores, base_scores):
    """Win rate of paired scores: a strictly higher model score is a win (1), an equal score a tie
    (½), a lower one a loss (0).

    Returns (rate, se) where se = population std of the per-pair scores / √n.
    """
    model_scores = np.asarray(model_scores, dtype=np.float64)
    base_scores = np.asarray(base_scores, dtype=np.float64)
    if model_scores.shape != base_scores.shape or model_scores.ndim != 1 or model_scores.size == 0:
        raise EvaluationError(f"win_rate needs two non-empty 1-D arrays of equal length; got shapes "
                              f"{model_scores.shape} and {base_scores.shape}.")
    scores = (model_scores > base_scores) + 0.5 * (model_scores == base_scores)
    return float(scores.mean()), standard_error(scores)


def prompt_win_scores(model_scores, base_scores, model_prompt, base_prompt, num_prompts):
    """Per-prompt win scores over all within-prompt sample pairs (a two-sample U-statistic):
    score_g = mean over model samples a and base samples b of prompt g of [a > b] + ½[a = b].

    model_scores (n_model,), base_scores (n_base,); model_prompt, base_prompt: each sample's prompt
    index in [0, num_prompts). Every prompt needs a sample in both. Returns (num_prompts,) in [0, 1].
    """
    model_scores, base_scores = np.asarray(model_scores, np.float64), np.asarray(base_scores, np.float64)
    model_order, base_order = np.argsort(model_prompt, kind="stable"), np.argsort(base_prompt, kind="stable")
    model_cuts = np.searchsorted(np.asarray(model_prompt)[model_order], np.arange(num_prompts + 1))
    base_cuts = np.searchsorted(np.asarray(base_prompt)[base_order], np.arange(num_prompts + 1))
    scores = np.empty(num_prompts)
    for g in range(num_prompts):
        a = model_scores[model_order[model_cuts[g]:model_cuts[g + 1]]]
        b = np.sort(base_scores[base_order[base_cuts[g]:base_cuts[g + 1]]])
        if a.size == 0 or b.size == 0:
            raise EvaluationError(f"prompt {g} has no sample in one of the files; cannot compare it.")
        below, not_above = np.searchsorted(b, a, side="left"), np.searchsorted(b, a, side="right")
        scores[g] = (below.sum() + 0.5 * (not_above - below).sum()) / (a.size * b.size)
    return scores


def win_rates(model_records, base_records, metrics, model_source="model file", base_source="base file"):
    """Win rate and its standard error for each metric, model vs base, paired per prompt.

    Each prompt scores the share of its (model sample, base sample) pairs the model wins, ties ½
    (prompt_win_scores); prompts weigh equally, so a prompt with 16 samples counts as much as one
    with a single sample. The SE is that of the per-prompt scores (standard_error).
    Returns {metric: rate, f"{metric}_SE": se, ..., "n_prompts": G}.
    """
    model, base, model_prompt, base_prompt, keys = paired_prompt_samples(
        model_records, base_records, metrics, model_source, base_source)
    out = {}
    for i, metric in enumerate(metrics):
        scores = prompt_win_scores(model[i], base[i], model_prompt, base_prompt, len(keys))
        out[metric], out[f"{metric}_SE"] = float(scores.mean()), standard_error(scores)
    out["n_prompts"] = int(len(keys))
    return out


def navigation_efficiency(points, reference, tolerance=0.0):
    """Share of runs that improve every value: the rows of `points` (r, k) that are
    ≥ reference − tolerance in every column.

    reference: scalar or (k,) (e.g. 0.5 for win rates, or the base model's mean levels).
    The original used tolerance 0.03 for win rates and 0.06 for mean rewards.
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if points.size == 0:
        raise EvaluationError("navigation_efficiency: no runs given.")
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), points.shape[-1:])
    return float(np.mean(np.all(points >= reference - tolerance, axis=1)))
