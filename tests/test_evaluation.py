"""evaluation.py against hand-computed answers: win rates (ties ½), pairing by prompt id, standard
errors, navigation efficiency and the quantile transform."""
import math
import random

import numpy as np
import pytest

from mapalign import evaluation
from mapalign.evaluation import EvaluationError


def _recs(scores, prompt_ids=None, prompts=None, metric="m"):
    out = []
    for j, s in enumerate(scores):
        pid = j if prompt_ids is None else prompt_ids[j]
        r = {"prompt": prompts[j] if prompts else f"prompt {pid}", "generated": "x", metric: float(s)}
        if prompt_ids is not None:
            r["prompt_id"] = pid
        out.append(r)
    return out


def test_win_rate_ties_count_half():
    # scores 1, ½, 0, ½, 1 -> mean 0.6; deviations .4,-.1,-.6,-.1,.4 -> var .14
    rate, se = evaluation.win_rate([3, 2, 1, 5, 4], [1, 2, 4, 5, 0])
    assert rate == pytest.approx(0.6)
    assert se == pytest.approx(math.sqrt(0.14) / math.sqrt(5))


def test_win_rate_se_without_ties_is_binomial():
    rate, se = evaluation.win_rate([2, 2, 0, 0], [1, 1, 1, 1])
    assert rate == 0.5
    assert se == pytest.approx(math.sqrt(0.5 * 0.5 / 4))


def test_win_rate_rejects_bad_shapes():
    with pytest.raises(EvaluationError, match="equal length"):
        evaluation.win_rate([1, 2], [1, 2, 3])
    with pytest.raises(EvaluationError):
        evaluation.win_rate([], [])


def test_standard_error_population_std():
    assert evaluation.standard_error([1, 2, 3, 4]) == pytest.approx(math.sqrt(1.25) / 2)
    with pytest.raises(EvaluationError):
        evaluation.standard_error([])


def test_pairing_by_prompt_id_ignores_order():
    model_scores, base_scores = [3, 2, 1, 5, 4], [1, 2, 4, 5, 0]
    base = _recs(base_scores, prompt_ids=[0, 1, 2, 3, 4])
    model = _recs(model_scores, prompt_ids=[0, 1, 2, 3, 4])
    expected = evaluation.win_rates(model, base, ["m"])
    assert expected["m"] == pytest.approx(0.6) and expected["n_prompts"] == 5
    shuffled = model[:]
    random.Random(3).shuffle(shuffled)
    assert [r["prompt_id"] for r in shuffled] != [0, 1, 2, 3, 4]
    got = evaluation.win_rates(shuffled, base[::-1], ["m"])
    assert got["m"] == pytest.approx(expected["m"]) and got["m_SE"] == pytest.approx(expected["m_SE"])


def test_several_samples_per_prompt_compare_all_pairs():
    # prompt 0: model 1, 3 vs base 2 -> pairs lose, win -> 1/2; prompt 1: 5 vs 4 -> win
    model = _recs([1, 5, 3], prompt_ids=[0, 1, 0])
    base = _recs([2, 4], prompt_ids=[0, 1])
    got = evaluation.win_rates(model, base, ["m"])
    assert got["m"] == pytest.approx(0.75) and got["n_prompts"] == 2
    # prompt 0: model 1, 3 vs base 2, 2, 3 -> (0 + 0 + 0 + 1 + 1 + 1/2) / 6; prompt 1: 5 vs 4, 6 -> 1/2
    model = _recs([1, 5, 3], prompt_ids=[0, 1, 0])
    base = _recs([2, 4, 2, 3, 6], prompt_ids=[0, 1, 0, 0, 1])
    got = evaluation.win_rates(model, base, ["m"])
    scores = np.array([2.5 / 6, 0.5])
    assert got["m"] == pytest.approx(scores.mean()) and got["m_SE"] == pytest.approx(np.std(scores) / np.sqrt(2))


@pytest.mark.parametrize("model_samples,base_samples", [(1, 8), (8, 1), (3, 5)])
def test_identical_models_score_one_half_whatever_the_sample_counts(model_samples, base_samples):
    # Both "models" draw from the same skewed distribution (exponential, shifted per prompt). Comparing
    # per-prompt means instead scores P(X > mean of 8) = (1 + 1/8)^-8 = 0.39 for (1, 8).
    rng = np.random.default_rng(0)
    prompts = 3000
    shift = rng.normal(size=prompts)
    model = _recs((np.repeat(shift, model_samples) + rng.exponential(size=prompts * model_samples)).tolist(),
                  prompt_ids=np.repeat(np.arange(prompts), model_samples).tolist())
    base = _recs((np.repeat(shift, base_samples) + rng.exponential(size=prompts * base_samples)).tolist(),
                 prompt_ids=np.repeat(np.arange(prompts), base_samples).tolist())
    got = evaluation.win_rates(model, base, ["m"])
    assert abs(got["m"] - 0.5) < 4 * got["m_SE"] and got["m_SE"] < 0.01
    # a file against itself: exactly one half (every pair and its mirror image)
    assert evaluation.win_rates(model, model, ["m"])["m"] == pytest.approx(0.5, abs=1e-12)


def test_mismatched_prompt_sets_are_refused():
    with pytest.raises(EvaluationError, match="different prompts"):
        evaluation.win_rates(_recs([1, 2, 3], prompt_ids=[0, 1, 2]), _recs([1, 2, 3], prompt_ids=[0, 1, 3]), ["m"])
    other_text = _recs([1, 2], prompt_ids=[0, 1], prompts=["a", "b"])
    with pytest.raises(EvaluationError, match="prompt_id 1 has different prompts"):
        evaluation.win_rates(other_text, _recs([1, 2], prompt_ids=[0, 1], prompts=["a", "c"]), ["m"])


def test_mixed_prompt_ids_are_refused():
    mixed = _recs([1, 2], prompt_ids=[0, 1])
    del mixed[1]["prompt_id"]
    with pytest.raises(EvaluationError, match="some records have `prompt_id`"):
        evaluation.win_rates(mixed, _recs([1, 2], prompt_ids=[0, 1]), ["m"])


def test_position_pairing_needs_same_length_and_prompts():
    base = _recs([1, 2, 4], prompts=["a", "b", "c"])
    ok = evaluation.win_rates(_recs([2, 2, 3], prompts=["a", "b", "c"]), base, ["m"])
    assert ok["m"] == pytest.approx((1 + 0.5 + 0) / 3) and ok["n_prompts"] == 3
    with pytest.raises(EvaluationError, match="4 records.*3 records"):
        evaluation.win_rates(_recs([1, 2, 3, 4], prompts=["a", "b", "c", "d"]), base, ["m"])
    with pytest.raises(EvaluationError, match="record 1 has different prompts"):
        evaluation.win_rates(_recs([1, 2, 3], prompts=["a", "x", "c"]), base, ["m"])


def test_missing_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="'gpt2-helpful' is missing"):
        evaluation.win_rates(_recs([1]), _recs([1]), ["gpt2-helpful"])


def test_navigation_efficiency_with_tolerance():
    points = [[0.6, 0.7], [0.48, 0.9], [0.46, 0.6], [0.5, 0.5]]
    assert evaluation.navigation_efficiency(points, 0.5, tolerance=0.03) == pytest.approx(0.75)
    assert evaluation.navigation_efficiency(points, 0.5) == pytest.approx(0.5)
    assert evaluation.navigation_efficiency(points, [0.45, 0.65], tolerance=0.0) == pytest.approx(0.5)
    with pytest.raises(EvaluationError):
        evaluation.navigation_efficiency(np.empty((0, 2)), 0.5)


def test_quantile_of_is_left_searchsorted():
    ref = [5, 2, 1, 3, 2]
    assert evaluation.quantile_of(ref, 2) == pytest.approx(0.2)  # ties at the level do not count
    assert evaluation.quantile_of(ref, 2.5) == pytest.approx(0.6)
    assert evaluation.quantile_of(ref, 0) == 0.0
    assert evaluation.quantile_of(ref, 5) == pytest.approx(0.8)
    assert evaluation.quantile_of(ref, 6) == 1.0
    np.testing.assert_allclose(evaluation.quantile_of(ref, [1, 3]), [0.0, 0.6])


def test_quantile_transform_rows_and_shape_check():
    ref = np.array([[1, 2, 2, 3, 5], [10, 20, 30, 40, 50]])
    got = evaluation.quantile_transform(ref, [[2, 35], [5, 10]])
    np.testing.assert_allclose(got, [[0.2, 0.6], [0.8, 0.0]])
    with pytest.raises(EvaluationError, match="one level per value"):
        evaluation.quantile_transform(ref, [1, 2, 3])


def test_realized_quantiles_hand_computed():
    # λ = log 2 on align row [0, 0, 1] -> weights [¼, ¼, ½]; eval [0, 4, 10] -> level 6 -> 2 of 3 below
    q = evaluation.realized_quantiles([[0.0, 0.0, 1.0]], [math.log(2)], [[0.0, 4.0, 10.0]])
    np.testing.assert_allclose(q, [2 / 3])
