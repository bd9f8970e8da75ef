"""Threshold calibration (docs/method.md section 3): every formula against numbers worked out by hand,
every documented fallback, the reading of records, and the scaling table of the module docstring
(hypothesis)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tje_hf.analysis.calibration import (
    METHODS,
    bayes_threshold,
    calibrate,
    calibrate_records,
    cohens_d,
    pooled_sd,
    step_values,
)

SQRT3 = math.sqrt(3.0)


def test_reference_example_by_hand():
    # correct [1, 2, 3]: mu_c = 2, SS_c = 1 + 0 + 1 = 2, sigma_c = sqrt(2 / 2) = 1
    # incorrect [3, 5]: mu_i = 4, SS_i = 1 + 1 = 2, sigma_i = sqrt(2 / 1) = sqrt(2)
    # s_p = sqrt((2 + 2) / (3 + 2 - 2)) = sqrt(4/3) = 1.1547005; d = (4 - 2) / 1.1547005 = sqrt(3)
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    assert (cal.n_c, cal.n_i) == (3, 2)
    assert cal.mu_c == 2.0 and cal.mu_i == 4.0
    assert cal.sigma_c == pytest.approx(1.0) and cal.sigma_i == pytest.approx(math.sqrt(2))
    assert cal.cohens_d == pytest.approx(SQRT3)
    # tau_mean = mu_c = 2
    assert cal.tau_mean == 2.0
    # tau_info = 2 + 1 * ln(1 + sqrt 3) = 2 + ln(2.7320508) = 2 + 1.0050525 = 3.0050525
    assert cal.tau_info == pytest.approx(3.0050525, abs=1e-7)
    # tau_universal = 2 + sqrt(sqrt 3) / (1 + sqrt(sqrt 3)) * (4 - 2) * max(0, 1 - 1/2)
    #               = 2 + 1.3160740 / 2.3160740 * 2 * 0.5 = 2 + 0.5682349 = 2.5682349
    assert cal.tau_universal == pytest.approx(2.5682349, abs=1e-7)
    # Bayes: sigma_c = 1, sigma_i = sqrt 2, pi_c = 3/5, pi_i = 2/5
    # a = 1/2 - 1/4 = 0.25; b = 4/2 - 2/1 = 0
    # c = 4/2 - 16/4 + ln(1/sqrt 2) - ln(3/2) = -2 - 0.3465736 - 0.4054651 = -2.7520387
    # 0.25 tau^2 = 2.7520387 -> tau = +-sqrt(11.0081548) = +-3.3178539; only +3.3178539 is in [2, 4]
    assert cal.tau_bayes == pytest.approx(3.3178539, abs=1e-7)
    assert cal.fallbacks == {}
    assert cal.thresholds() == {"mean": cal.tau_mean, "info": cal.tau_info, "bayes": cal.tau_bayes,
                                "universal": cal.tau_universal}


def test_bayes_root_equalises_the_weighted_densities():
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    left = 0.6 * stats.norm.pdf(cal.tau_bayes, cal.mu_c, cal.sigma_c)
    right = 0.4 * stats.norm.pdf(cal.tau_bayes, cal.mu_i, cal.sigma_i)
    assert left == pytest.approx(right, rel=1e-9)


def test_cohens_d_and_pooled_sd_match_the_textbook_formula():
    rng = np.random.default_rng(3)
    c, i = rng.normal(1, 0.5, 7), rng.normal(2, 0.8, 5)
    s_p = math.sqrt(((7 - 1) * c.var(ddof=1) + (5 - 1) * i.var(ddof=1)) / (7 + 5 - 2))
    assert pooled_sd(c, i) == pytest.approx(s_p, rel=1e-12)
    assert cohens_d(c, i) == pytest.approx((i.mean() - c.mean()) / s_p, rel=1e-12)
    assert cohens_d(i, c) == pytest.approx(-cohens_d(c, i))  # d > 0 when incorrect values are higher


def test_bayes_equal_variances_uses_the_linear_root():
    # correct [0, 1, 1, 1, 2]: mu_c = 1, SS = 1 + 0 + 0 + 0 + 1 = 2, var = 2/4 = 0.5
    # incorrect [4.5, 5.5]: mu_i = 5, SS = 0.25 + 0.25 = 0.5, var = 0.5/1 = 0.5  (equal: a = 0)
    # tau = (1 + 5)/2 + 0.5 * ln(5/2) / (5 - 1) = 3 + 0.125 * 0.9162907 = 3.1145363
    cal = calibrate([0, 1, 1, 1, 2, 4.5, 5.5], [True] * 5 + [False] * 2)
    assert cal.tau_bayes == pytest.approx(3.1145363, abs=1e-7)
    assert "bayes" not in cal.fallbacks
    # Equal priors put the linear root at the midpoint, exactly.
    assert bayes_threshold(1.0, 0.7, 3.0, 0.7, 0.5) == (2.0, None)


def test_bayes_no_real_root_falls_back_to_mu_c():
    # mu_c = 0, sigma_c = 2, mu_i = 1, sigma_i = 1, pi_c = 0.99:
    # a = 1/8 - 1/2 = -0.375; b = 1/1 - 0 = 1; c = 0 - 1/2 + ln 2 - ln 99 = -4.4019748
    # b^2 - 4ac = 1 - 4 * 0.375 * 4.4019748 = 1 - 6.6029622 = -5.6029622 < 0
    tau, why = bayes_threshold(0.0, 2.0, 1.0, 1.0, 0.99)
    assert tau == 0.0
    assert "no real root" in why and "-5.60296" in why


def test_bayes_mu_i_not_above_mu_c_falls_back():
    tau, why = bayes_threshold(2.0, 1.0, 2.0, 1.5, 0.5)
    assert tau == 2.0 and "mu_i = 2 <= mu_c = 2" in why


def test_bayes_neither_root_inside_takes_the_one_nearest_the_midpoint():
    mu_c, sc, mu_i, si, pi_c = 0.0, 1.0, 1.0, 1.2, 0.999
    a = 1 / (2 * sc**2) - 1 / (2 * si**2)
    b = mu_i / si**2 - mu_c / sc**2
    c = mu_c**2 / (2 * sc**2) - mu_i**2 / (2 * si**2) + math.log(sc / si) - math.log(pi_c / (1 - pi_c))
    roots = np.roots([a, b, c]).real
    assert not any(mu_c <= r <= mu_i for r in roots)  # the prior pushes both roots outside [0, 1]
    tau, why = bayes_threshold(mu_c, sc, mu_i, si, pi_c)
    assert why is None
    assert tau == pytest.approx(min(roots, key=lambda r: abs(r - 0.5)), rel=1e-9)
    assert pi_c * stats.norm.pdf(tau, mu_c, sc) == pytest.approx((1 - pi_c) * stats.norm.pdf(tau, mu_i, si))


def test_bayes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sigma_c=0"):
        bayes_threshold(0.0, 0.0, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="pi_c=1"):
        bayes_threshold(0.0, 1.0, 1.0, 1.0, 1)


def test_all_correct():
    cal = calibrate([1.0, 2.0, 3.0], [True, True, True])
    assert (cal.n_c, cal.n_i) == (3, 0) and math.isnan(cal.mu_i) and math.isnan(cal.cohens_d)
    assert cal.thresholds() == dict.fromkeys(METHODS, 2.0)
    assert set(cal.fallbacks) == {"info", "bayes", "universal", "cohens_d"}
    assert "no incorrect examples" in cal.fallbacks["bayes"]


def test_all_incorrect_never_stops():
    cal = calibrate([1.0, 2.0, 3.0], [False, False, False])
    assert cal.thresholds() == dict.fromkeys(METHODS, -math.inf)
    assert set(cal.fallbacks) == set(METHODS) and "never stop" in cal.fallbacks["mean"]
    assert json.dumps(cal.to_json(), allow_nan=False)  # -inf and NaN become null
    assert cal.to_json()["tau_bayes"] is None


def test_one_incorrect_example_uses_the_pooled_sd():
    # correct [1, 2, 3] (SS 2), incorrect [5] (SS 0): s_p = sqrt(2 / (4 - 2)) = 1 = sigma_c
    # d = (5 - 2) / 1 = 3
    cal = calibrate([1.0, 2.0, 3.0, 5.0], [True, True, True, False])
    assert math.isnan(cal.sigma_i) and cal.cohens_d == pytest.approx(3.0)
    # tau_info = 2 + 1 * ln(1 + 3) = 2 + 1.3862944 = 3.3862944
    assert cal.tau_info == pytest.approx(3.3862944, abs=1e-7)
    # tau_universal = 2 + sqrt 3 / (1 + sqrt 3) * 3 * (1 - 1/2) = 2 + 0.6339746 * 1.5 = 2.9509619
    assert cal.tau_universal == pytest.approx(2.9509619, abs=1e-7)
    # Bayes with s_p = 1 for both: linear, tau = (2 + 5)/2 + 1 * ln(3/1) / (5 - 2) = 3.5 + 0.3662041
    assert cal.tau_bayes == pytest.approx(3.8662041, abs=1e-7)
    assert "sigma_i undefined (one example)" in cal.fallbacks["bayes"]
    assert "info" not in cal.fallbacks


def test_one_correct_example_uses_the_pooled_sd():
    # correct [1], incorrect [3, 5]: s_p = sqrt(2 / 1) = sqrt 2 = sigma_i; d = (4 - 1) / sqrt 2 = 2.1213203
    cal = calibrate([1.0, 3.0, 5.0], [True, False, False])
    assert math.isnan(cal.sigma_c) and cal.cohens_d == pytest.approx(2.1213203, abs=1e-7)
    # tau_info = 1 + sqrt 2 * ln(1 + 2.1213203) = 1 + 1.4142136 * 1.1382122 = 2.6097372
    assert cal.tau_info == pytest.approx(2.6097372, abs=1e-7)
    # tau_universal: max(0, 1 - sqrt 2 / 1) = 0, so tau_universal = mu_c = 1
    assert cal.tau_universal == 1.0
    # Bayes, sigma = sqrt 2 for both: tau = (1 + 4)/2 + 2 * ln(1/2) / 3 = 2.5 - 0.4620981 = 2.0379019
    assert cal.tau_bayes == pytest.approx(2.0379019, abs=1e-7)
    assert {"info", "universal", "bayes"} <= set(cal.fallbacks)
    assert "one correct example" in cal.fallbacks["info"]


def test_one_example_each_leaves_d_undefined():
    cal = calibrate([1.0, 2.0], [True, False])
    assert math.isnan(cal.cohens_d) and "n_c + n_i = 2 < 3" in cal.fallbacks["cohens_d"]
    assert cal.thresholds() == dict.fromkeys(METHODS, 1.0)


def test_zero_variance_in_one_class():
    # correct [2, 2, 2]: sigma_c = 0; incorrect [3, 5]: SS 2. s_p = sqrt(2/3) = 0.8164966
    # d = (4 - 2) / 0.8164966 = sqrt 6 = 2.4494897
    cal = calibrate([2.0, 2.0, 2.0, 3.0, 5.0], [True, True, True, False, False])
    assert cal.sigma_c == 0.0 and cal.cohens_d == pytest.approx(math.sqrt(6))
    assert cal.tau_info == 2.0  # sigma_c * ln(1 + |d|) = 0
    # tau_universal = 2 + sqrt(sqrt 6) / (1 + sqrt(sqrt 6)) * 2 * (1 - 0) = 2 + 0.6101493 * 2 = 3.2202986
    assert cal.tau_universal == pytest.approx(3.2202986, abs=1e-7)
    # Bayes with s_p for both: tau = 3 + (2/3) * ln(3/2) / 2 = 3 + 0.1351550 = 3.1351550
    assert cal.tau_bayes == pytest.approx(3.1351550, abs=1e-7)
    assert "sigma_c = 0" in cal.fallbacks["bayes"]


def test_zero_variance_in_both_classes():
    # 0.1 * 3 values: np.mean gives 0.10000000000000002; the class must still count as spread 0.
    cal = calibrate([0.1, 0.1, 0.1, 0.7, 0.7], [True, True, True, False, False])
    assert cal.mu_c == 0.1 and cal.sigma_c == 0.0 and cal.sigma_i == 0.0
    assert math.isnan(cal.cohens_d) and "pooled sd is 0" in cal.fallbacks["cohens_d"]
    assert cal.thresholds() == dict.fromkeys(METHODS, 0.1)


def test_mu_i_below_mu_c():
    # correct [3, 4, 5], incorrect [1, 3]: d = (2 - 4) / sqrt(4/3) = -sqrt 3
    cal = calibrate([3.0, 4.0, 5.0, 1.0, 3.0], [True, True, True, False, False])
    assert cal.cohens_d == pytest.approx(-SQRT3)
    assert cal.tau_bayes == 4.0 and "mu_i = 2 <= mu_c = 4" in cal.fallbacks["bayes"]
    # tau_info uses |d|: 4 + 1 * ln(1 + sqrt 3) = 5.0050525
    assert cal.tau_info == pytest.approx(5.0050525, abs=1e-7)
    # tau_universal keeps the formula: 4 + 0.5682349 * (2 - 4) * (1 - 1/4) = 4 - 0.8523523 = 3.1476477
    assert cal.tau_universal == pytest.approx(3.1476477, abs=1e-7)
    assert "universal" not in cal.fallbacks


def test_universal_without_a_positive_mean_falls_back():
    cal = calibrate([-3.0, -2.0, -1.0, 0.0, 1.0], [True, True, True, False, False])
    assert cal.tau_universal == cal.tau_mean == -2.0
    assert "mu_c = -2 <= 0" in cal.fallbacks["universal"]


@pytest.mark.parametrize(("values", "correct", "match"), [
    ([1.0, float("nan")], [True, False], r"entropies\[1\] = nan"),
    ([1.0, 2.0], [True], "one length"),
    ([], [], "at least one"),
    ([1.0, 2.0], [1, 2], "booleans, got 2"),
])
def test_calibrate_rejects_bad_input(values, correct, match):
    with pytest.raises(ValueError, match=match):
        calibrate(values, correct)


def test_integer_correctness_is_accepted():
    assert calibrate([1.0, 2.0, 3.0], [1, 1, 0]) == calibrate([1.0, 2.0, 3.0], [True, True, False])


# --------------------------------------------------------------------------------------------
# Scaling and shifting: exactly the claims of the module docstring's table

grid = st.integers(1, 400).map(lambda i: i / 100)  # 0.01 .. 4 bits, away from float-rounding ties
samples = st.tuples(st.lists(grid, max_size=8), st.lists(grid, max_size=8)).filter(lambda t: t[0] or t[1])


def _cal(c: list[float], i: list[float], scale: float = 1.0, shift: float = 0.0):
    return calibrate(np.array(c + i) * scale + shift, [True] * len(c) + [False] * len(i))


def _same(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(samples, st.one_of(st.just(math.log(2)), st.floats(0.05, 20)))
def test_every_threshold_is_scale_equivariant(data, s):
    base, scaled = _cal(*data), _cal(*data, scale=s)
    for m in METHODS:
        assert _same(getattr(scaled, f"tau_{m}"), s * getattr(base, f"tau_{m}")), m
    assert set(scaled.fallbacks) == set(base.fallbacks)
    assert math.isnan(base.cohens_d) == math.isnan(scaled.cohens_d)
    if not math.isnan(base.cohens_d):
        assert _same(scaled.cohens_d, base.cohens_d)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(samples, st.integers(-300, 300).map(lambda j: j / 100))
def test_mean_info_bayes_are_shift_equivariant(data, t):
    base, shifted = _cal(*data), _cal(*data, shift=t)
    for m in ("mean", "info", "bayes"):
        assert math.isclose(getattr(shifted, f"tau_{m}"), getattr(base, f"tau_{m}") + t, rel_tol=1e-7,
                            abs_tol=1e-7) or getattr(base, f"tau_{m}") == -math.inf, m


def test_universal_is_not_shift_equivariant():
    # Reference example: tau_universal = 2.5682349. Shifted by +2: mu_c = 4, mu_i = 6, sigma_c = 1, d = sqrt 3:
    # 4 + 0.5682349 * 2 * (1 - 1/4) = 4.8523523, not 2.5682349 + 2 = 4.5682349.
    shifted = calibrate([3.0, 4.0, 5.0, 5.0, 7.0], [True, True, True, False, False])
    assert shifted.tau_universal == pytest.approx(4.8523523, abs=1e-7)


# --------------------------------------------------------------------------------------------
# Reading records


def _rec(pid: str, signals: dict, correct, n_generated: int = 10, steps: int = 1) -> dict:
    return {"problem_id": pid, "steps": [
        {"step": k, "correct": correct, "n_generated": n_generated + k, "signals": {"all": signals}}
        for k in range(1, steps + 1)]}


def test_step_values_orients_and_counts_null_as_incorrect():
    recs = [_rec("a", {"topk_entropy@20": 1.5, "deepconf_confidence": 12.0, "token_logprob": None}, True),
            _rec("b", {"topk_entropy@20": float("nan"), "deepconf_confidence": 9.0, "token_logprob": -0.5}, None),
            _rec("c", {"topk_entropy@20": 2.5, "deepconf_confidence": 8.0, "token_logprob": -0.1}, False)]
    v, c, t = step_values(recs, "topk_entropy@20")
    assert np.array_equal(v, [1.5, np.nan, 2.5], equal_nan=True)
    assert c.tolist() == [True, False, False]  # correct = null (unparseable) counts as incorrect
    assert t.tolist() == [11, 11, 11]
    v, _, _ = step_values(recs, "deepconf_confidence")  # higher = more confident: negated
    assert v.tolist() == [-12.0, -9.0, -8.0]
    v, _, _ = step_values(recs, "token_logprob")
    assert np.array_equal(v, [np.nan, 0.5, 0.1], equal_nan=True)


def test_step_values_errors_name_the_problem():
    recs = [_rec("p7", {"topk_entropy@20": 1.0}, True)]
    with pytest.raises(ValueError, match="'p7' has 1 recorded steps, step 2"):
        step_values(recs, step=2)
    with pytest.raises(ValueError, match=r"'topk_entropy@5' not recorded .*\['topk_entropy@20'\]"):
        step_values(recs, "topk_entropy@5")
    with pytest.raises(ValueError, match="segment 'reasoning'"):
        step_values(recs, segment="reasoning")
    with pytest.raises(ValueError, match="unknown signal 'entropy'"):
        step_values(recs, "entropy")


def test_calibrate_records_drops_nan_and_counts_it():
    recs = [_rec(str(j), {"topk_entropy@20": h}, ok) for j, (h, ok) in
            enumerate([(1.0, True), (2.0, True), (3.0, True), (3.0, False), (5.0, False), (float("nan"), True)])]
    cal = calibrate_records(recs)
    assert cal.n_excluded == 1 and (cal.n_c, cal.n_i) == (3, 2)
    assert cal.tau_bayes == pytest.approx(3.3178539, abs=1e-7)  # the reference example
    with pytest.raises(ValueError, match="NaN or null in all 1 records"):
        calibrate_records([_rec("x", {"topk_entropy@20": None}, True)])


# --------------------------------------------------------------------------------------------
# The registry of threshold methods


@pytest.fixture
def registry():
    """Restores the registry (and METHODS) after a test that registers or replaces methods."""
    from tje_hf.analysis import calibration

    saved = dict(calibration._REGISTRY)
    yield calibration
    calibration._REGISTRY.clear()
    calibration._REGISTRY.update(saved)
    calibration.METHODS = tuple(saved)


def test_builtin_registry_and_reconstruction_label():
    from tje_hf.analysis import calibration

    assert calibration.METHODS == METHODS == ("mean", "info", "bayes", "universal")
    methods = {m.name: m for m in calibration.threshold_methods()}
    assert [m.reconstruction for m in methods.values()] == [False, False, False, True]
    assert "does not publish its formula" in methods["universal"].note
    assert "max(0, 1 - sigma_c / mu_c)" in methods["universal"].note
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    assert cal.reconstructed == {"universal": methods["universal"].note}
    assert cal.taus == cal.thresholds() == {"mean": 2.0, "info": cal.tau_info, "bayes": cal.tau_bayes,
                                            "universal": cal.tau_universal}
    js = cal.to_json()
    assert js["reconstructed"] == {"universal": methods["universal"].note}
    assert js["thresholds"]["bayes"] == pytest.approx(3.3178539, abs=1e-7)


def test_registered_method_gets_the_statistics_and_follows_everywhere(registry):
    seen = []

    def midpoint(s):
        seen.append(s)
        return (s.mu_c + s.mu_i) / 2

    registry.register_threshold("midpoint", midpoint, label="midpoint of the class means", color="#112233")
    assert registry.METHODS == ("mean", "info", "bayes", "universal", "midpoint")
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    # The reference example: mu_c 2, mu_i 4 -> 3; the statistics are those of calibrate
    assert cal.taus["midpoint"] == 3.0 and cal.thresholds()["midpoint"] == 3.0
    (s,) = seen
    assert (s.mu_c, s.mu_i, s.n_c, s.n_i) == (2.0, 4.0, 3, 2)
    assert s.sigma_c == pytest.approx(1.0) and s.sigma_i == pytest.approx(math.sqrt(2))
    assert s.d == pytest.approx(SQRT3) and s.s_p == pytest.approx(math.sqrt(4 / 3)) and s.pi_c == 0.6
    # The built-ins are unchanged.
    assert (cal.tau_mean, cal.tau_bayes) == (2.0, pytest.approx(3.3178539, abs=1e-7))
    assert "midpoint" not in cal.reconstructed
    # The documented fallbacks cover a registered method too (it is not called).
    assert calibrate([1.0, 2.0, 3.0], [True, True, True]).taus["midpoint"] == 2.0
    assert calibrate([1.0, 2.0], [False, False]).taus["midpoint"] == -math.inf
    assert len(seen) == 1
    registry.unregister_threshold("midpoint")
    assert registry.METHODS == METHODS
    assert "midpoint" not in calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False]).thresholds()


def test_replacing_the_reconstruction_with_a_published_formula(registry):
    # Say the paper publishes tau_universal = mu_c * (2 - sigma_c / mu_c) = 2 mu_c - sigma_c (made up here).
    registry.register_threshold("universal", lambda s: (2 * s.mu_c - s.sigma_c, None), label="scale-invariant (paper)",
                                replace=True)
    assert registry.METHODS == METHODS  # keeps its place
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    assert cal.tau_universal == pytest.approx(3.0) and cal.reconstructed == {}
    assert cal.tau_info == pytest.approx(3.0050525, abs=1e-7)


def test_a_nan_threshold_falls_back_and_says_so(registry):
    registry.register_threshold("broken", lambda s: math.nan)
    cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
    assert cal.taus["broken"] == 2.0 and "NaN" in cal.fallbacks["broken"]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("Bad-Name", lambda s: 0.0), {}, ValueError, "must match"),
    (("run", lambda s: 0.0), {}, ValueError, "must match"),
    (("info", lambda s: 0.0), {}, ValueError, "already registered"),
    (("mean", lambda s: 0.0), {"replace": True}, ValueError, "cannot be replaced"),
    (("x", 3.0), {}, TypeError, "callable"),
    (("x", lambda s: 0.0), {"color": "red"}, ValueError, "#rrggbb"),
])
def test_register_threshold_rejects_bad_input(registry, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        registry.register_threshold(*args, **kwargs)
    with pytest.raises(ValueError, match="cannot be removed"):
        registry.unregister_threshold("mean")
    with pytest.raises(KeyError, match="no threshold method 'nope'"):
        registry.unregister_threshold("nope")


def test_none_among_correctness_values_is_a_one_line_error():
    # What records hold for an unparseable answer: calibrate() says what to do with it.
    with pytest.raises(ValueError, match=r"booleans, got None at index 1 .*unparseable answer: pass False"):
        calibrate([1.0, 2.0, 1.5], [True, None, False])
