"""DPA (directional preference alignment) and palette conditioning: the pure pieces.

A user preference over k objectives is a unit vector v (DPA, arXiv 2402.18571). It reaches the model
through its system prompt as integer weights w = round(100·v), in one template used for training and
evaluation (TEMPLATE, recorded in every run's metadata):

    You are a helpful, respectful and honest assistant. Your response should maximize weighted rating =
    helpfulness*97 + verbosity*-26.

Rounding: each weight is 100·v_i rounded half away from zero (so θ and −θ give mirrored weights); the
reward used to select a response is (w/100)ᵀr with exactly the integers written in the prompt, never the
unrounded v (parse_system_prompt(render_system_prompt(w)) == w; tested).

Directions: two objectives, v = (cos θ, sin θ) with θ (degrees) uniform in [−45°, 45°], i.e. the first
objective dominant (w_1 ≥ 71); k > 2 objectives, v = cos α·e_main + sin α·u with α uniform in [0°, cap]
and u uniform on the unit sphere orthogonal to e_main (uniform in angle, like the two-objective case,
not uniform in area).

Palettes (MAP × DPA): target levels c rendered into the system prompt (PALETTE_TEMPLATE, 4 significant
digits; the levels used for λ are the ones parsed back from the prompt).

Everything here is numpy and strings, no models, no files.
"""
import math
import re

import numpy as np

from mapalign import resampling
from mapalign.errors import InputError

PREAMBLE = "You are a helpful, respectful and honest assistant."
TEMPLATE = PREAMBLE + " Your response should maximize weighted rating = {terms}."
PALETTE_TEMPLATE = PREAMBLE + " Your response should reach these expected levels: {terms}."
MAX_TRAIN_ANGLE = 45.0


class DPAError(InputError):
    """Bad DPA input (direction, weights, palette, template); the message names the input."""


# ---------------------------------------------------------------------------------------------
# Directions and integer weights

def direction_from_angle(theta_deg):
    """v = (cos θ, sin θ) for θ in degrees; θ must lie in [−90°, 90°] (the first objective's weight ≥ 0)."""
    try:
        theta = float(theta_deg)
    except (TypeError, ValueError):
        raise DPAError(f"direction θ={theta_deg!r} is not a number of degrees") from None
    if not math.isfinite(theta) or abs(theta) > 90.0:
        raise DPAError(f"direction θ={theta_deg!r}° is outside [−90°, 90°]; DPA directions keep the first "
                       "objective's weight ≥ 0 (training uses [−45°, 45°])")
    r = math.radians(theta)
    return np.array([math.cos(r), math.sin(r)])


def round_half_away(x):
    """Round to the nearest integer, halves away from zero (sign-symmetric, unlike numpy's half-to-even)."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def integer_weights(v):
    """The integers written into the system prompt: round(100·v), halves away from zero.
    Raises DPAError when v is not finite or every weight rounds to zero."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise DPAError(f"direction {v.tolist()} must hold at least two finite numbers")
    w = round_half_away(100.0 * v)
    if not np.any(w):
        raise DPAError(f"weights {w.tolist()} are all zero (direction {v.tolist()}): give a non-zero direction")
    return [int(x) for x in w]


def check_weights(weights, k=None):
    """Explicit integer weights from the user: a list of ints, not all zero, k of them when k is given."""
    w = [float(x) for x in weights]
    if k is not None and len(w) != k:
        raise DPAError(f"weights {list(weights)} have {len(w)} entries for {k} objectives")
    if not all(math.isfinite(x) and x == int(x) for x in w):
        raise DPAError(f"weights {list(weights)} must be integers (the system prompt carries integers)")
    if not any(w):
        raise DPAError(f"weights {list(weights)} are all zero: at least one objective needs a non-zero weight")
    return [int(x) for x in w]


def selection_vector(weights):
    """The v used to score responses: the written integer weights / 100 (exactly what the prompt says)."""
    return np.asarray(check_weights(weights), dtype=np.float64) / 100.0


def sample_directions(n, k, rng, max_angle=MAX_TRAIN_ANGLE, main=0):
    """n training directions (n, k) unit vectors, and their angle from the main objective in degrees.

    k = 2: θ ~ Uniform[−max_angle, max_angle], v = (cos θ, sin θ) (main must be 0); the returned angle
    is the signed θ. k > 2: α ~ Uniform[0, max_angle] from e_main, toward a uniform unit direction
    orthogonal to e_main; the returned angle is α.
    """
    n, k = int(n), int(k)
    if k < 2:
        raise DPAError(f"DPA needs at least two objectives; got {k}")
    if not 0.0 < float(max_angle) <= 90.0:
        raise DPAError(f"max_angle={max_angle} must lie in (0°, 90°]")
    if k == 2:
        if main != 0:
            raise DPAError("with two objectives the main objective is the first (θ is the angle toward the second)")
        theta = rng.uniform(-max_angle, max_angle, size=n)
        r = np.radians(theta)
        return np.stack([np.cos(r), np.sin(r)], axis=1), theta
    if not 0 <= int(main) < k:
        raise DPAError(f"main objective index {main} is not in 0..{k - 1}")
    alpha = rng.uniform(0.0, max_angle, size=n)
    u = rng.standard_normal((n, k))
    u[:, main] = 0.0
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    e = np.zeros(k)
    e[main] = 1.0
    a = np.radians(alpha)[:, None]
    return np.cos(a) * e + np.sin(a) * u, alpha


def direction_grid(step=15.0, max_angle=MAX_TRAIN_ANGLE):
    """Evaluation angles −max_angle … max_angle in `step`-degree steps (both ends included)."""
    step = float(step)
    if step <= 0 or not math.isfinite(step):
        raise DPAError(f"grid step {step} must be a positive number of degrees")
    count = int(round(2 * max_angle / step))
    if abs(count * step - 2 * max_angle) > 1e-9:
        raise DPAError(f"grid step {step}° does not divide [−{max_angle}°, {max_angle}°] evenly (use 5 or 15)")
    return [float(-max_angle + i * step) for i in range(count + 1)]


# ---------------------------------------------------------------------------------------------
# System prompts

def _check_names(names):
    names = [str(n).strip() for n in names]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z][\w\- ]*", n)]
    if bad:
        raise DPAError(f"objective names {bad} cannot go into the system prompt: use letters, digits, -, _")
    return names


def render_system_prompt(weights, names):
    """DPA's system prompt for integer `weights` on objectives `names` (TEMPLATE)."""
    names = _check_names(names)
    weights = check_weights(weights, k=len(names))
    return TEMPLATE.format(terms=" + ".join(f"{n}*{w}" for n, w in zip(names, weights)))


def parse_system_prompt(text):
    """(names, integer weights) read back from a system prompt made by render_system_prompt."""
    head, tail = TEMPLATE.split("{terms}")
    if not (text.startswith(head) and text.endswith(tail)):
        raise DPAError(f"not a DPA system prompt: {text[:80]!r}")
    terms = text[len(head):len(text) - len(tail)].split(" + ")
    names, weights = [], []
    for term in terms:
        m = re.fullmatch(r"(.+)\*(-?\d+)", term)
        if not m:
            raise DPAError(f"cannot parse the weighted-rating term {term!r}")
        names.append(m[1])
        weights.append(int(m[2]))
    return names, weights


def format_level(x):
    """A target level as written into a palette prompt (4 significant digits)."""
    return f"{float(x):.4g}"


def render_palette_prompt(levels, names):
    """The palette-conditioned system prompt: target expected levels, one per objective."""
    names = _check_names(names)
    levels = [float(x) for x in levels]
    if len(levels) != len(names):
        raise DPAError(f"palette {levels} has {len(levels)} levels but there are {len(names)} objectives {names}")
    if not all(math.isfinite(x) for x in levels):
        raise DPAError(f"palette {levels} must hold finite numbers")
    return PALETTE_TEMPLATE.format(terms=", ".join(f"{n} = {format_level(c)}" for n, c in zip(names, levels)))


def parse_palette_prompt(text):
    """(names, levels) read back from render_palette_prompt's text."""
    head, tail = PALETTE_TEMPLATE.split("{terms}")
    if not (text.startswith(head) and text.endswith(tail)):
        raise DPAError(f"not a palette system prompt: {text[:80]!r}")
    names, levels = [], []
    for term in text[len(head):len(text) - len(tail)].split(", "):
        name, _, level = term.partition(" = ")
        names.append(name)
        levels.append(float(level))
    return names, levels


def written_levels(levels):
    """The levels exactly as a palette prompt states them (what λ must be solved for)."""
    return [float(format_level(c)) for c in levels]


# ---------------------------------------------------------------------------------------------
# Selection among K samples

def select(rewards, vectors, rng, mode="argmax"):
    """Pick one of K samples per prompt.

    rewards: (P, K, k) rewards; vectors: (P, k) per-prompt v (argmax; the selection reward vᵀr) or λ
    (resample: draw j with probability softmax(λᵀr)_j, importance resampling toward p ∝ p·exp(λᵀr)).
    Returns (chosen (P,) int, scores (P, K)). Uses resampling.choose_samples for the draw.
    """
    R = np.asarray(rewards, dtype=np.float64)
    V = np.asarray(vectors, dtype=np.float64)
    if R.ndim != 3 or V.shape != (R.shape[0], R.shape[2]):
        raise DPAError(f"rewards (P, K, k) = {R.shape} and vectors (P, k) = {V.shape} do not match")
    if mode not in ("argmax", "resample"):
        raise DPAError(f"selection mode must be argmax or resample; got {mode!r}")
    scores = np.einsum("pkd,pd->pk", R, V)
    chosen = np.empty(R.shape[0], dtype=np.int64)
    for p in range(R.shape[0]):  # one λ per prompt: choose_samples takes one λ for a block
        c, _, _ = resampling.choose_samples(R[p].T[:, None, :], V[p], rng, best_of_n=(mode == "argmax"))
        chosen[p] = c[0]
    return chosen, scores


# ---------------------------------------------------------------------------------------------
# Does a model read the weights? The system-prompt swap test

def opposite_pairs(selected, objective=1):
    """(low, high) selected records per prompt: the ones with the lowest and the highest integer weight on
    `objective`, kept where those weights have opposite signs and the two responses differ (the prompts
    whose training data ask for different responses under opposite weights). `selected`: the records of a
    direction-mode `select` stage (prompt_id, weights, system, continuation); prompt order is kept."""
    by = {}
    for r in selected:
        by.setdefault(r["prompt_id"], []).append(r)
    pairs = []
    for pid in by:
        low = min(by[pid], key=lambda r: r["weights"][objective])
        high = max(by[pid], key=lambda r: r["weights"][objective])
        if low["weights"][objective] < 0 < high["weights"][objective] and low["continuation"] != high["continuation"]:
            pairs.append((low, high))
    return pairs


def swap_gap(own, swapped):
    """The system-prompt swap test over n pairs (low, high) of `opposite_pairs`.

    own: (n, 2) log π(y_low | s_low), log π(y_high | s_high); swapped: (n, 2) log π(y_low | s_high),
    log π(y_high | s_low), in nats. Δ_i = Σ own_i − Σ swapped_i is the log-likelihood that the written
    weights add to the responses selected for them: 0 in expectation for a model that ignores them, large
    for one that follows them. Returns {mean, se, n, positive_fraction} of Δ."""
    own, swapped = np.asarray(own, dtype=np.float64), np.asarray(swapped, dtype=np.float64)
    if own.ndim != 2 or own.shape[1] != 2 or own.shape != swapped.shape or own.shape[0] == 0:
        raise DPAError(f"own {own.shape} and swapped {swapped.shape} must both be (n, 2) with n ≥ 1")
    delta = own.sum(1) - swapped.sum(1)
    se = float(delta.std(ddof=1) / np.sqrt(delta.size)) if delta.size > 1 else float("nan")
    return {"mean": float(delta.mean()), "se": se, "n": int(delta.size),
            "positive_fraction": float(np.mean(delta > 0))}


def describe_swap_gap(gap):
    """One line for a swap_gap result: Δ ± SE in nats, the number of prompts and the share with Δ > 0."""
    return (f"Δ = {gap['mean']:.3f} ± {gap['se']:.3f} nats over {gap['n']} prompts "
            f"(> 0 for {gap['positive_fraction']:.2f} of them)")


def spearman(x, y):
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def system_prompt_for(direction=None, weights=None, objectives="helpfulness,verbosity"):
    """What `gendata.py --direction=θ` / `--weights=w1,w2` mean: (record fields {theta, weights, system},
    system prompt), or (None, None) when neither is given. θ needs exactly two objectives."""
    from mapalign import arguments
    if direction is None and weights is None:
        return None, None
    names = arguments.str_list(objectives, "objectives")
    if direction is not None and weights is not None:
        raise DPAError("give --direction or --weights, not both")
    if direction is not None:
        if len(names) != 2:
            raise DPAError(f"--direction=θ needs two objectives; --objectives names {len(names)}: {names}")
        w = integer_weights(direction_from_angle(direction))
        theta = float(direction)
    else:
        theta = None
        try:
            w = check_weights(arguments.float_list(weights, "weights"), k=len(names))
        except InputError as e:
            raise DPAError(f"--weights: {e}") from None
    system = render_system_prompt(w, names)
    return {"theta": theta, "weights": w, "system": system}, system
