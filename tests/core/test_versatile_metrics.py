"""Versatile metrics (Avg R, Avg CV, R-G, CV-G, per constraint and summed) against hand-computed
values (docs/algorithms/ccpo.md)."""

from pathlib import Path

import numpy as np
import pytest

from saferl.core.versatile import versatile_metrics

# Two seeds, thresholds 10 / 20 / 30, behaviour set {20}, two episodes per threshold.
RETURNS = [[[100, 110], [200, 220], [300, 300]],
           [[90, 90], [100, 140], [150, 150]]]
COSTS = [[[12, 16], [10, 30], [40, 30]],  # means 14, 20, 35 → violations 4, 0, 5
         [[9, 9], [24, 18], [30, 31]]]  # means 9, 21, 30.5 → violations 0, 1, 0.5


def test_metrics_of_two_seeds_by_hand():
    metrics = versatile_metrics([10, 20, 30], np.asarray(RETURNS), np.asarray(COSTS),
                                behaviour=[20])
    np.testing.assert_allclose(metrics.avg_return, [205.0, 120.0])
    np.testing.assert_allclose(metrics.generalized_return, [202.5, 120.0])  # ε = 10 and 30
    # The violation is of the mean cost at ε: at ε = 20 seed 0's episodes cost 10 and 30,
    # mean 20, no violation (the mean of per-episode violations would be 5).
    np.testing.assert_allclose(metrics.avg_violation, [3.0, 0.5])
    np.testing.assert_allclose(metrics.generalized_violation, [4.5, 0.25])
    summary = metrics.summary()
    assert summary["Avg R"] == pytest.approx((162.5, 42.5))
    assert summary["Avg CV"] == pytest.approx((1.75, 1.25))
    assert summary["R-G"] == pytest.approx((161.25, 41.25))
    assert summary["CV-G"] == pytest.approx((2.375, 2.125))
    assert summary["CV_0"] == summary["Avg CV"]
    assert metrics.summary(ddof=1)["Avg R"][1] == pytest.approx(42.5 * np.sqrt(2))


def test_several_constraints_report_each_violation_and_their_sum():
    thresholds = [[10, 5], [20, 5]]
    costs = np.asarray([[[[12, 4]], [[20, 8]]]])  # violations (2, 0) and (0, 3)
    metrics = versatile_metrics(thresholds, np.ones((1, 2, 1)), costs, behaviour=[[10, 5]])
    np.testing.assert_allclose(metrics.avg_violation_per_constraint, [[1.0, 1.5]])
    np.testing.assert_allclose(metrics.avg_violation, [2.5])
    np.testing.assert_allclose(metrics.generalized_violation_per_constraint, [[0.0, 3.0]])
    np.testing.assert_allclose(metrics.generalized_violation, [3.0])
    assert metrics.summary()["CV-G_1"] == (3.0, 0.0)


def test_no_generalised_threshold_gives_nan_and_no_behaviour_set_uses_all():
    returns, costs = np.asarray(RETURNS), np.asarray(COSTS)
    inside = versatile_metrics([10, 20, 30], returns, costs, behaviour=[10, 20, 30])
    assert np.isnan(inside.generalized_return).all()
    assert np.isnan(inside.summary()["CV-G"][0])
    everything = versatile_metrics([10, 20, 30], returns, costs)
    np.testing.assert_allclose(everything.generalized_return, everything.avg_return)


@pytest.mark.parametrize("thresholds, returns, costs, match", [
    ([], np.zeros((1, 0, 1)), np.zeros((1, 0, 1)), "thresholds must hold at least one"),
    ([10, 20], np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), r"returns must be \[seeds, 2 "),
    ([10, 20], np.zeros((1, 2, 1)), np.zeros((1, 2, 2)), r"costs must be \[seeds, thresh"),
])
def test_bad_shapes_are_one_sentence(thresholds, returns, costs, match):
    with pytest.raises(ValueError, match=match):
        versatile_metrics(thresholds, returns, costs)


def test_two_constraints_each_ones_violation_reaches_the_record_and_the_report():
    """With two constraints Avg CV is the sum of the two CV_i (docs/algorithms/ccpo.md); each seed's
    CV_i and CV-G_i reach versatile.json and the report's table, and a threshold counts as
    trained on in the table exactly when it does in the metrics (every component, to 1e-9)."""
    from saferl.experiments import report
    from saferl.versatile import VersatileResult

    thresholds = np.array([[10.0, 5.0], [20.0 + 1e-12, 5.0], [30.0, 10.0]])
    behaviour = np.array([[20.0, 5.0]])
    returns = np.array([[[100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]])  # [1 seed, 3, 2]
    costs = np.zeros((1, 3, 2, 2))
    costs[0, :, :, 0] = [[12.0, 14.0], [20.0, 20.0], [30.0, 36.0]]  # means 13, 20, 33
    costs[0, :, :, 1] = [[6.0, 6.0], [9.0, 9.0], [10.0, 10.0]]  # means 6, 9, 10
    result = VersatileResult(thresholds, returns, costs, (3,), behaviour, ("a", "b"), True)
    # violations: constraint a: 3, 0, 3 -> CV_0 = 2, CV-G_0 (thresholds 1 and 3) = 3;
    #             constraint b: 1, 4, 0 -> CV_1 = 5/3, CV-G_1 = 0.5
    seed = result.per_seed()["3"]
    assert seed["CV_0"] == pytest.approx(2.0) and seed["CV-G_0"] == pytest.approx(3.0)
    assert seed["CV_1"] == pytest.approx(5 / 3) and seed["CV-G_1"] == pytest.approx(0.5)
    assert seed["Avg CV"] == pytest.approx(2.0 + 5 / 3)
    assert seed["CV-G"] == pytest.approx(3.5)
    assert [row["trained_on"] for row in result.table()] == [0.0, 1.0, 0.0]
    member = report.MemberFigures(Path("r"), "env", "ccpo", 3, (0.0, 0.0), {}, {}, {},
                                  conditioned=True)
    member.versatile = seed
    table = report.versatile_table(report.group([member]))
    assert table[0]["CV_1_mean"] == pytest.approx(5 / 3)
    assert table[0]["CV_G_0_mean"] == pytest.approx(3.0)
