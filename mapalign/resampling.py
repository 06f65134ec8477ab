"""Choosing among M samples toward p_λ ∝ p0·exp(λᵀr): the stable softmax weights, their effective sample
size and the draw (importance resampling, or best-of-n). Pure numpy; MC decoding (decoding.py) and DPA's
selection (dpa.select) both use it.
"""
import numpy as np

from mapalign.errors import InputError


class DecodingError(InputError):
    """Bad decoding inputs (λ, values, rewards); the message names the input and the fix."""


def resample_weights(scores):
    """Stable softmax along the last axis, in float64: w = exp(s − max s) / Σ exp(s − max s).

    scores: (..., M) tilt scores λᵀr. Returns weights of the same shape, each row summing to 1.
    Finite scores never overflow, whatever their spread (rows with spread > ~745 put all weight on
    their maxima). Raises DecodingError for NaN or infinite scores (a reward that is not a number).
    """
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise DecodingError(f"{int(np.sum(~np.isfinite(s)))} tilt scores λᵀr are NaN or infinite: some reward "
                            "is not a finite number (check the scorer), or λ is too large for float64.")
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def effective_sample_size(weights):
    """1/Σw² along the last axis: M for uniform weights, 1 when one sample holds all the weight."""
    w = np.asarray(weights, dtype=np.float64)
    return 1.0 / np.sum(w * w, axis=-1)


def choose_samples(rewards, lam, rng, best_of_n=False):
    """Pick one of the M samples of every prompt.

    rewards: (k, P, M) rewards of P prompts × M samples on k values; lam: (k,).
    rng: numpy Generator (one uniform draw per prompt; drawn even for best_of_n so both modes
    consume the same randomness).
    Returns (chosen (P,) int, weights (P, M), ess (P,)). Resampling draws index j with probability
    w_j = softmax(λᵀr)_j; best_of_n takes argmax_j λᵀr_j (first on ties).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    if rewards.ndim != 3 or rewards.shape[0] != lam.size:
        raise DecodingError(f"rewards must have shape (k={lam.size}, prompts, samples); got {rewards.shape}")
    scores = np.einsum("k,kpm->pm", lam, rewards)
    weights = resample_weights(scores)
    u = rng.random(weights.shape[0])
    if best_of_n:
        chosen = scores.argmax(axis=1)
    else:
        # inverse CDF per row; the clip guards against u landing past a cumsum that rounds below 1
        cdf = np.cumsum(weights, axis=1)
        chosen = np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), weights.shape[1] - 1)
    return chosen.astype(np.int64), weights, effective_sample_size(weights)
