"""dpa.py: directions, integer weights, templates, selection (known answers)."""
import numpy as np
import pytest

from mapalign import dpa


def test_two_objective_directions_are_uniform_in_angle_and_unit():
    v, theta = dpa.sample_directions(20000, 2, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(v, axis=1), 1)
    assert theta.min() >= -45 and theta.max() <= 45
    assert np.allclose(v, np.stack([np.cos(np.radians(theta)), np.sin(np.radians(theta))], 1))
    # uniform on [-45, 45]: mean 0 (sd 26/√n), each 15° bin holds 1/6
    assert abs(theta.mean()) < 4 * 26 / np.sqrt(20000)
    counts = np.histogram(theta, bins=6, range=(-45, 45))[0] / 20000
    assert np.all(np.abs(counts - 1 / 6) < 0.015)
    w = np.array([dpa.integer_weights(x) for x in v])
    assert w[:, 0].min() >= 71  # cos 45° = 0.7071 -> 71: the DPA README's minimum helpfulness weight


def test_cap_directions_for_more_objectives():
    v, alpha = dpa.sample_directions(5000, 4, np.random.default_rng(1), max_angle=30, main=2)
    assert np.allclose(np.linalg.norm(v, axis=1), 1)
    assert np.allclose(np.degrees(np.arccos(np.clip(v[:, 2], -1, 1))), alpha)
    assert alpha.max() <= 30 and abs(alpha.mean() - 15) < 0.5
    # the orthogonal part is symmetric: no preferred side objective
    assert np.all(np.abs(v[:, [0, 1, 3]].mean(0)) < 0.02)


def test_integer_rounding_is_half_away_from_zero_and_symmetric():
    assert dpa.integer_weights([0.005, -0.005]) == [1, -1]
    assert dpa.integer_weights([0.715, -0.125]) == [72, -13]
    assert dpa.integer_weights(dpa.direction_from_angle(-15)) == [97, -26]
    assert dpa.integer_weights(dpa.direction_from_angle(15)) == [97, 26]
    assert dpa.integer_weights(dpa.direction_from_angle(45)) == [71, 71]
    with pytest.raises(dpa.DPAError, match="all zero"):
        dpa.integer_weights([0.001, -0.004])
    for bad in (91, -90.5, float("nan")):
        with pytest.raises(dpa.DPAError, match=r"outside \[−90°, 90°\]"):
            dpa.direction_from_angle(bad)


def test_template_round_trip_gives_the_selection_weights():
    rng = np.random.default_rng(2)
    v, _ = dpa.sample_directions(200, 2, rng)
    for x in v:
        w = dpa.integer_weights(x)
        text = dpa.render_system_prompt(w, ["helpfulness", "verbosity"])
        names, parsed = dpa.parse_system_prompt(text)
        assert names == ["helpfulness", "verbosity"] and parsed == w
        assert np.array_equal(dpa.selection_vector(parsed), np.array(w) / 100)
    assert dpa.render_system_prompt([97, -26], ["helpfulness", "verbosity"]).endswith(
        "maximize weighted rating = helpfulness*97 + verbosity*-26.")
    with pytest.raises(dpa.DPAError, match="all zero"):
        dpa.render_system_prompt([0, 0], ["a", "b"])
    c = [0.51234567, 17.25]
    text = dpa.render_palette_prompt(c, ["sentiment", "length"])
    assert dpa.parse_palette_prompt(text) == (["sentiment", "length"], dpa.written_levels(c))
    assert dpa.written_levels(c) == [0.5123, 17.25]
    with pytest.raises(dpa.DPAError, match="has 3 levels but there are 2 objectives"):
        dpa.render_palette_prompt([1, 2, 3], ["a", "b"])


def test_system_prompt_for_gendata_flags():
    fields, system = dpa.system_prompt_for(-15, None, "helpfulness,verbosity")
    assert fields["weights"] == [97, -26] and system == fields["system"]
    assert dpa.system_prompt_for(None, "80,-60", "a,b")[0]["weights"] == [80, -60]
    assert dpa.system_prompt_for(None, None) == (None, None)
    with pytest.raises(dpa.DPAError, match="all zero"):
        dpa.system_prompt_for(None, "0,0", "a,b")
    with pytest.raises(dpa.DPAError, match="3 entries for 2"):
        dpa.system_prompt_for(None, "1,2,3", "a,b")
    with pytest.raises(dpa.DPAError, match="outside"):
        dpa.system_prompt_for(120, None)


def test_direction_grid():
    assert dpa.direction_grid(15) == [-45, -30, -15, 0, 15, 30, 45]
    assert len(dpa.direction_grid(5)) == 19
    with pytest.raises(dpa.DPAError):
        dpa.direction_grid(7)


def test_argmax_and_resampling_frequencies():
    rng = np.random.default_rng(3)
    R = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-0.5, 2.0]])  # K = 4 samples, k = 2 objectives
    lam = np.array([1.0, 0.5])
    n = 40000
    chosen, scores = dpa.select(np.repeat(R[None], n, 0), np.repeat(lam[None], n, 0), rng, mode="resample")
    p = np.exp(R @ lam) / np.exp(R @ lam).sum()
    freq = np.bincount(chosen, minlength=4) / n
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n))  # within 4 binomial SE
    assert np.allclose(scores[0], R @ lam)
    v = np.array([[0.97, -0.26], [0.71, 0.71]])
    best, _ = dpa.select(np.repeat(R[None], 2, 0), v, rng, mode="argmax")
    assert best.tolist() == [0, 3]
    with pytest.raises(dpa.DPAError):
        dpa.select(np.zeros((2, 4, 2)), np.zeros((2, 3)), rng)


def test_spearman():
    assert dpa.spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert dpa.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(dpa.spearman([1, 2, 3], [1, 1, 1]))


def test_opposite_pairs_keep_prompts_selected_under_opposite_weights_with_different_responses():
    def rec(pid, w2, text):
        return {"prompt_id": pid, "weights": [90, w2], "system": f"s{w2}", "continuation": text}
    selected = [rec(0, -40, "a"), rec(0, 10, "b"), rec(0, 60, "c"),   # pair (−40, 60)
                rec(1, -20, "a"), rec(1, 30, "a"),                     # same response: dropped
                rec(2, 10, "a"), rec(2, 50, "b"),                      # no negative weight: dropped
                rec(3, 70, "x"), rec(3, -70, "y")]                     # order within a prompt does not matter
    pairs = dpa.opposite_pairs(selected)
    assert [(lo["continuation"], hi["continuation"]) for lo, hi in pairs] == [("a", "c"), ("y", "x")]


def test_swap_gap_is_the_likelihood_the_own_system_prompts_add():
    own = np.array([[-10.0, -12.0], [-8.0, -9.0], [-5.0, -5.0]])
    swapped = np.array([[-11.0, -13.5], [-8.0, -9.0], [-4.0, -5.5]])
    r = dpa.swap_gap(own, swapped)
    assert r["n"] == 3 and r["mean"] == pytest.approx((2.5 + 0.0 - 0.5) / 3)
    assert r["se"] == pytest.approx(np.std([2.5, 0.0, -0.5], ddof=1) / np.sqrt(3))
    assert r["positive_fraction"] == pytest.approx(1 / 3)
    assert dpa.swap_gap(swapped, own)["mean"] == pytest.approx(-r["mean"])
    with pytest.raises(dpa.DPAError):
        dpa.swap_gap(own, swapped[:2])
    assert dpa.describe_swap_gap(r) == "Δ = 0.667 ± 0.928 nats over 3 prompts (> 0 for 0.33 of them)"
