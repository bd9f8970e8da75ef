"""Evaluation of the gate (docs/method.md sections 4-5) on a hand-built run whose every number is worked
out in the comments: accuracies, Thresh Acc, savings, oracle, separation (against scipy and a direct
pairwise count), few-shot protocol, top-k ablation, persistence, token budget."""

from __future__ import annotations

import dataclasses
import json
import math
from itertools import product

import numpy as np
import pytest
from scipy import stats
from synthetic_runs import GATE_REFINE, gate_records, hand_records, make_record, write_run

from tje_hf.analysis.budget import (
    BudgetCurves,
    budget_curves,
    budget_point,
    default_budgets,
    gated_schedule,
    uniform_schedule,
    uniform_spend_point,
)
from tje_hf.analysis.calibration import Calibration, calibrate
from tje_hf.analysis.evaluation import (
    IN_SAMPLE_NOTE,
    FewShotSize,
    Oracle,
    RunEvaluation,
    Separation,
    StepSummary,
    auroc,
    auroc_ci,
    evaluate_run,
    few_shot,
    few_shot_sizes,
    oracle,
    persistence,
    separation,
    step_summaries,
    tau_sweep,
    topk_ablation,
)
from tje_hf.analysis.gate_run import (
    GateRunEvaluation,
    compare_gate_to_all,
    evaluate_gate_run,
    gate_decisions,
    gate_settings,
    paired_bootstrap,
    run_policy,
)
from tje_hf.analysis.table import MIN_CLASS_N, GateResult, gate, run_table
from tje_hf.records import read_records

# The hand-built run (HAND: six problems, three steps) and its policy-gate variant (GATE_REFINE: tau 1.5,
# N 3) are built in synthetic_runs.py, where the table of their numbers is worked out.


@pytest.fixture
def hand_run(tmp_path) -> list[dict]:
    """The hand-built records, through a run directory on disk and records.read_records."""
    return read_records(write_run(tmp_path / "run", hand_records()))


@pytest.fixture
def table(hand_run):
    return run_table(hand_run)


def test_run_table_reads_every_step(table):
    assert table.problem_ids == ("a", "b", "c", "d", "e", "f")
    assert (table.n_problems, table.n_steps) == (6, 3)
    assert table.h1.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert table.correct[:, 0].tolist() == [True, True, True, False, False, False]
    assert table.tokens.sum() == 2000


# tau, stopped, Thresh Acc (count of 6), savings: the cost with problems a.. stopped at step 1 is
#   tau -inf: none stopped                 cost 2000                        Thresh Acc = 3-step = 4/6
#   tau 1.0:  a, b stopped                 100 + 200 + 300 + 500 + 300 + 300 = 1700, savings 0.15
#             answers a T, b T (step 1) + c F, d T, e T, f F (step 3) = 4/6
#   tau 1.5:  + c (step-1 answer T)        1700 - 300 + 100 = 1500, savings 0.25, Thresh Acc 5/6
#   tau 2.0:  + d (step-1 answer F)        1500 - 500 + 300 = 1300, savings 0.35, Thresh Acc 4/6
#   tau 2.5:  + e (step-1 answer F)        1300 - 300 + 100 = 1100, savings 0.45, Thresh Acc 3/6
#   tau 3.0:  + f (unparseable)            1100 - 300 + 100 = 900,  savings 0.55, Thresh Acc 3/6
@pytest.mark.parametrize(("tau", "n_stopped", "n_right", "savings", "stopped_acc"), [
    (-math.inf, 0, 4, 0.0, math.nan),
    (1.0, 2, 4, 0.15, 1.0),
    (1.2, 2, 4, 0.15, 1.0),
    (1.5, 3, 5, 0.25, 1.0),
    (2.0, 4, 4, 0.35, 3 / 4),
    (2.5, 5, 3, 0.45, 3 / 5),
    (3.0, 6, 3, 0.55, 3 / 6),
])
def test_gate_by_hand(table, tau, n_stopped, n_right, savings, stopped_acc):
    g = gate(table, tau)
    assert g.n_stopped == n_stopped and g.fraction_stopped == n_stopped / 6
    assert g.thresh_acc == n_right / 6
    assert g.n_step_acc == 4 / 6
    assert g.acc_diff == (n_right - 4) / 6
    assert g.savings == pytest.approx(savings, abs=1e-12)
    assert (math.isnan(g.stopped_acc) and math.isnan(stopped_acc)) or g.stopped_acc == stopped_acc


def test_oracle_and_sweep_by_hand(table):
    sweep = tau_sweep(table)
    assert [g.tau for g in sweep] == [-math.inf, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    # tau 0.5 stops a only: cost 2000 - 200 + 100 = 1900, savings 0.05, Thresh Acc 4/6.
    assert sweep[1].savings == pytest.approx(0.05)
    o = oracle(sweep)
    # No loss (Thresh Acc >= 4/6): tau -inf, 0.5, 1.0, 1.5, 2.0; most savings at tau 2.0 (0.35).
    assert o.no_loss.tau == 2.0 and o.no_loss.savings == pytest.approx(0.35) and o.no_loss.acc_diff == 0
    # Best Thresh Acc: 5/6 at tau 1.5 only.
    assert o.best_acc.tau == 1.5 and o.best_acc.thresh_acc == 5 / 6


def test_separation_by_hand(table):
    # correct [0.5, 1.0, 1.5]: mean 1, var 0.25; incorrect [2.0, 2.5, 3.0]: mean 2.5, var 0.25
    # s_p = 0.5, d = 1.5 / 0.5 = 3
    # Welch t = (2.5 - 1) / sqrt(0.25/3 + 0.25/3) = 1.5 / 0.4082483 = 3.6742346
    # Welch df = (0.25/3 + 0.25/3)^2 / ((0.25/3)^2 / 2 + (0.25/3)^2 / 2) = 4
    sep = separation(table.h1, table.correct[:, 0])
    assert (sep.n_c, sep.n_i) == (3, 3)
    assert sep.cohens_d == pytest.approx(3.0)
    assert sep.welch_t == pytest.approx(3.6742346, abs=1e-7)
    assert sep.welch_p == pytest.approx(2 * stats.t.sf(3.6742346, 4), rel=1e-6)
    assert sep.welch_p == pytest.approx(stats.ttest_ind([2.0, 2.5, 3.0], [0.5, 1.0, 1.5], equal_var=False).pvalue)
    # Perfect separation: U = 3 * 3 = 9; exact two-sided p = 2 / C(6, 3) = 2 / 20 = 0.1
    assert sep.mannwhitney_u == 9.0 and sep.mannwhitney_p == pytest.approx(0.1)
    assert sep.auroc == 1.0 and (sep.auroc_low, sep.auroc_high) == (1.0, 1.0)


def test_separation_against_scipy_on_random_data():
    rng = np.random.default_rng(7)
    v = np.round(rng.normal(1.5, 0.6, 40), 1)  # rounded: ties
    ok = rng.random(40) < 0.5
    sep = separation(v, ok, n_boot=200)
    t = stats.ttest_ind(v[~ok], v[ok], equal_var=False)
    u = stats.mannwhitneyu(v[~ok], v[ok], alternative="two-sided")
    assert (sep.welch_t, sep.welch_p) == pytest.approx((t.statistic, t.pvalue))
    assert (sep.mannwhitney_u, sep.mannwhitney_p) == pytest.approx((u.statistic, u.pvalue))
    assert sep.auroc == pytest.approx(u.statistic / (ok.sum() * (~ok).sum()))
    assert sep.auroc_low <= sep.auroc <= sep.auroc_high


def test_auroc_is_the_pairwise_probability_with_half_ties():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 6, 50).astype(float)  # many ties
    pos = rng.random(50) < 0.4
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in product(scores[pos], scores[~pos])]
    assert auroc(scores, pos) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    # By hand: positives [2, 1], negatives [1, 0]: pairs 2>1, 2>0, 1=1 (1/2), 1>0 -> 3.5 / 4 = 0.875
    assert auroc([2.0, 1.0, 1.0, 0.0], [True, True, False, False]) == 0.875
    assert math.isnan(auroc([1.0, 2.0], [True, True]))


def test_auroc_ci_is_seeded_and_checks_its_arguments():
    rng = np.random.default_rng(5)
    v, pos = rng.normal(0, 1, 30), rng.random(30) < 0.5
    v[pos] += 1
    assert auroc_ci(v, pos, 300, seed=1) == auroc_ci(v, pos, 300, seed=1)
    assert auroc_ci(v, pos, 300, seed=1) != auroc_ci(v, pos, 300, seed=2)
    lo, hi = auroc_ci(v, pos, 300, level=0.5, seed=1)
    lo95, hi95 = auroc_ci(v, pos, 300, level=0.95, seed=1)
    assert lo95 <= lo <= auroc(v, pos) <= hi <= hi95
    with pytest.raises(ValueError, match="level=1.5"):
        auroc_ci(v, pos, level=1.5)


def test_persistence_by_hand(table):
    # step 2: correct (a, b, d) [0.4, 0.6, 2.1], incorrect (c, e, f) [2.0, 1.9, 2.2]
    #   incorrect > correct pairs: 2.0 > 0.4, 0.6 (2); 1.9 > 0.4, 0.6 (2); 2.2 > all three (3): 7 / 9
    # step 3: correct (a, b, d, e) [0.3, 0.5, 0.7, 0.9], incorrect (c, f) [1.0, 1.2]: 8 / 8 = 1
    seps = persistence(table, n_boot=100)
    assert [s.auroc for s in seps] == pytest.approx([1.0, 7 / 9, 1.0])
    assert [(s.n_c, s.n_i) for s in seps] == [(3, 3), (3, 3), (4, 2)]


def test_topk_ablation_by_hand(hand_run):
    # k = 5: correct [0.5, 1.2, 0.9], incorrect [1.0, 0.4, 1.1]
    #   1.0 > 0.5, 0.9 (2); 0.4 > none (0); 1.1 > 0.5, 0.9 (2): AUROC 4 / 9
    ab = topk_ablation(hand_run, n_boot=100)
    assert list(ab) == [5, 20]
    assert ab[5].auroc == pytest.approx(4 / 9) and ab[20].auroc == 1.0


# Token budget with tau = 1.5: a, b, c stop; the others, most uncertain first: f (3.0), e (2.5), d (2.0).
#   alpha  extra calls     answers (a b c | d e f)             acc  calls  tokens
#   6      none            T T T | F  F  -   (all step 1)       3/6  6      900
#   8      f +2            T T T | F  F  F(s3)                  3/6  8      900 + 200 = 1100
#   9      f +2, e +1      T T T | F  F(s2) F                   3/6  9      1100 + 100 = 1200
#   10     f +2, e +2      T T T | F  T(s3) F                   4/6  10     1300
#   12     f, e, d +2      T T T | T(s3) T F                    5/6  12     1500
#   18     as 12 (nothing left to give)                         5/6  12     1500
# Uniform: alpha 6..11 -> 1 step each (3/6, 900 tokens); 12..17 -> 2 steps: step-2 answers
#   T T F T F F = 3/6, tokens 150 + 300 + 200 + 400 + 200 + 200 = 1450; 18 -> 3 steps: 4/6, 2000 tokens.
@pytest.mark.parametrize(("alpha", "acc", "calls", "tokens"), [
    (6, 3, 6, 900), (8, 3, 8, 1100), (9, 3, 9, 1200), (10, 4, 10, 1300), (12, 5, 12, 1500), (18, 5, 12, 1500)])
def test_gated_budget_by_hand(table, alpha, acc, calls, tokens):
    p = budget_point(table, gated_schedule(table, 1.5, alpha), alpha, beta=300)
    assert (p.accuracy, p.calls, p.tokens) == (acc / 6, calls, tokens)


@pytest.mark.parametrize(("alpha", "acc", "calls", "tokens"), [
    (6, 3, 6, 900), (11, 3, 6, 900), (12, 3, 12, 1450), (17, 3, 12, 1450), (18, 4, 18, 2000)])
def test_uniform_budget_by_hand(table, alpha, acc, calls, tokens):
    p = budget_point(table, uniform_schedule(table, alpha), alpha, beta=300)
    assert (p.accuracy, p.calls, p.tokens) == (acc / 6, calls, tokens)


def test_budget_curves_never_exceed_the_budget(table):
    # Q = 6, N = 3: round(6 * (1 + j/4)) for j = 0..8 = 6, 7.5 -> 8, 9, 10.5 -> 10, 12, 13.5 -> 14, 15, 16.5 -> 16, 18
    assert default_budgets(6, 3) == (6, 8, 9, 10, 12, 14, 15, 16, 18)
    taus = {"low": 0.7, "mid": 1.5, "never": -math.inf, "always": 5.0}
    curves = budget_curves(table, taus)
    assert curves.beta == 300  # the longest recorded call
    for points in [curves.uniform, *curves.gated.values()]:
        for p in points:
            assert p.calls <= p.alpha and p.tokens <= p.alpha * curves.beta
    # Never stopping at full budget is the 3-step schedule; always stopping is step 1 at any budget.
    assert curves.gated["never"][-1].accuracy == curves.uniform[-1].accuracy == 4 / 6
    assert {p.accuracy for p in curves.gated["always"]} == {3 / 6}
    assert curves.gated["mid"][3].accuracy == 4 / 6  # alpha 10, as in the table above


def test_budget_errors(table):
    with pytest.raises(ValueError, match="alpha=5 calls is below one call for each of the 6"):
        gated_schedule(table, 1.5, 5)
    with pytest.raises(ValueError, match="beta=200 tokens is below the longest recorded call"):
        budget_curves(table, {"x": 1.5}, beta=200)
    with pytest.raises(RuntimeError, match="over budget: 18 calls"):
        budget_point(table, np.full(6, 3), 12, beta=300)


def test_few_shot_sizes():
    assert few_shot_sizes(5) == ()
    assert few_shot_sizes(6) == (5,)
    assert few_shot_sizes(41) == (5, 10, 20, 40)
    assert few_shot_sizes(40) == (5, 10, 20)


def test_few_shot_calibrates_on_the_draw_and_evaluates_on_the_rest(table):
    (size,) = few_shot(table, sizes=(4,), n_draws=1, seed=3)
    # The same draw by hand: default_rng([seed, n]), 4 of the 6 problems.
    idx = np.random.default_rng([3, 4]).choice(np.arange(6), size=4, replace=False)
    rest = np.setdiff1d(np.arange(6), idx)
    cal = calibrate(table.h1[idx], table.correct[idx, 0])
    assert (size.n, size.n_draws, size.n_eval) == (4, 1, 2)
    for m, tau in cal.thresholds().items():
        g = gate(table.subset(rest), tau)
        f = size.methods[m]
        assert f.mean_tau == tau and f.std_tau == 0
        assert (f.mean_stopped, f.mean_thresh_acc, f.mean_savings) == (g.fraction_stopped, g.thresh_acc, g.savings)


def test_few_shot_is_seeded(table):
    a = few_shot(table, sizes=(3, 5), n_draws=20, seed=0)
    assert a == few_shot(table, sizes=(3, 5), n_draws=20, seed=0)
    assert a[0] == few_shot(table, sizes=(3,), n_draws=20, seed=0)[0]  # one size does not depend on the others
    assert a != few_shot(table, sizes=(3, 5), n_draws=20, seed=1)
    with pytest.raises(ValueError, match="n=6 must be in"):
        few_shot(table, sizes=(6,))


def test_few_shot_counts_single_class_draws():
    recs = [make_record(j, f"p{j}", (0.2 * j + 0.1, 1.0), (True, True), (10, 10)) for j in range(8)]
    (size,) = few_shot(run_table(recs), sizes=(5,), n_draws=10)
    assert (size.n_all_correct, size.n_all_incorrect) == (10, 0)
    assert size.methods["mean"].n_fallback == 0 and size.methods["bayes"].n_fallback == 10
    recs = [make_record(j, f"p{j}", (0.2 * j + 0.1, 1.0), (False, True), (10, 10)) for j in range(8)]
    (size,) = few_shot(run_table(recs), sizes=(5,), n_draws=10)
    assert (size.n_all_correct, size.n_all_incorrect) == (0, 10)
    f = size.methods["info"]
    assert f.n_finite_tau == 0 and math.isnan(f.mean_tau)
    assert (f.mean_stopped, f.mean_savings, f.no_loss_fraction) == (0.0, 0.0, 1.0)  # tau = -inf: never stops


def test_nan_signal_never_stops_and_is_left_out_of_statistics():
    recs = hand_records()
    recs[5]["steps"][0]["signals"]["all"]["topk_entropy@20"] = float("nan")  # problem f
    table = run_table(recs)
    assert gate(table, 100.0).n_stopped == 5
    assert separation(table.h1, table.correct[:, 0]).n_excluded == 1
    # NaN counts as the most uncertain: with tau 1.5 and 2 spare calls, f gets them.
    assert gated_schedule(table, 1.5, 8).tolist() == [1, 1, 1, 1, 1, 3]
    res = evaluate_run(recs, n_boot=50, n_draws=5).to_json()
    assert res["n_excluded"] == 1 and res["calibration"]["n_excluded"] == 1
    assert res["calibration"]["n_i"] == 2


def test_run_table_needs_every_step():
    recs = hand_records()
    recs[2]["steps"] = recs[2]["steps"][:1]
    with pytest.raises(ValueError, match="'c' has 1 recorded steps, step 2 asked"):
        run_table(recs)
    two = run_table(hand_records(), n_steps=2)
    assert gate(two, -math.inf).n_step_acc == 3 / 6  # step-2 answers T T F T F F


def test_evaluate_run_bundles_everything(hand_run):
    res = evaluate_run(hand_run, n_boot=200, n_draws=10).to_json()
    json.dumps(res, allow_nan=False)  # JSON-ready: no NaN, no inf
    assert res["step1_accuracy"] == 0.5 and res["n_step_accuracy"] == 4 / 6
    cal = res["calibration"]
    # correct [0.5, 1, 1.5], incorrect [2, 2.5, 3]: mu_c = 1, sigma_c = 0.5, d = 3
    # tau_info = 1 + 0.5 ln 4 = 1.6931472; tau_bayes (equal variances and priors) = (1 + 2.5)/2 = 1.75
    # tau_universal = 1 + sqrt 3 / (1 + sqrt 3) * 1.5 * (1 - 0.5) = 1 + 0.6339746 * 0.75 = 1.4754810
    assert cal["tau_mean"] == 1.0
    assert cal["tau_info"] == pytest.approx(1.6931472, abs=1e-7)
    assert cal["tau_bayes"] == pytest.approx(1.75)
    assert cal["tau_universal"] == pytest.approx(1.4754810, abs=1e-7)
    # tau 1.0 and 1.475 stop a, b (savings 0.15, Thresh Acc 4/6); 1.693 and 1.75 stop a, b, c (0.25, 5/6)
    assert res["gate"]["mean"]["savings"] == pytest.approx(0.15)
    assert res["gate"]["universal"]["thresh_acc"] == 4 / 6
    assert res["gate"]["bayes"]["savings"] == pytest.approx(0.25) and res["gate"]["info"]["thresh_acc"] == 5 / 6
    assert res["oracle"]["no_loss"]["tau"] == 2.0 and res["oracle"]["best_acc"]["tau"] == 1.5
    assert res["sweep"][0]["tau"] is None  # -inf in JSON
    assert res["separation"]["auroc"] == 1.0
    assert list(res["topk_ablation"]) == ["5", "20"]
    assert len(res["persistence"]) == 3 and [f["n"] for f in res["few_shot"]] == [5]
    assert res["budget"]["budgets"] == [6, 8, 9, 10, 12, 14, 15, 16, 18]
    assert res == evaluate_run(hand_run, n_boot=200, n_draws=10).to_json()  # deterministic


def test_confidence_signals_are_negated(hand_run):
    # deepconf_confidence = 10 - H: negated, it is H - 10, so ranks (and d) are those of H.
    res = evaluate_run(hand_run, signal="deepconf_confidence", n_boot=50, n_draws=5).to_json()
    assert res["separation"]["auroc"] == 1.0 and res["separation"]["cohens_d"] == pytest.approx(3.0)
    assert res["calibration"]["tau_mean"] == pytest.approx(1.0 - 10)
    # The same gate decisions as on H for the shift-equivariant thresholds:
    assert res["gate"]["bayes"]["savings"] == pytest.approx(0.25)
    # tau_universal needs a positive mean; the negated confidence has mu_c = -9.
    assert "mu_c = -9 <= 0" in res["calibration"]["fallbacks"]["universal"]


def test_evaluate_run_is_typed(hand_run):
    res = evaluate_run(hand_run, n_boot=200, n_draws=10)
    assert isinstance(res, RunEvaluation) and isinstance(res.calibration, Calibration)
    assert isinstance(res.oracle, Oracle) and isinstance(res.budget, BudgetCurves)
    assert list(res.gate) == ["mean", "info", "bayes", "universal"]
    assert all(isinstance(g, GateResult) for g in res.gate.values())
    assert all(isinstance(s, FewShotSize) for s in res.few_shot)
    assert all(isinstance(s, Separation) for s in (*res.persistence, *res.topk_ablation.values()))
    # The values as computed (to_json turns NaN and -inf into None), the K of the ablation as ints.
    assert (res.n_problems, res.n_steps, res.n_excluded, res.step1_accuracy) == (6, 3, 0, 0.5)
    assert res.in_sample == IN_SAMPLE_NOTE
    assert res.calibration.tau_bayes == pytest.approx(1.75)
    assert res.gate["info"].savings == pytest.approx(0.25) and res.gate["info"].thresh_acc == 5 / 6
    assert res.sweep[0].tau == -math.inf and math.isnan(res.sweep[0].stopped_acc)
    assert res.oracle.no_loss.tau == 2.0 and res.oracle.best_acc.tau == 1.5
    assert list(res.topk_ablation) == [5, 20] and res.topk_ablation[5].auroc == pytest.approx(4 / 9)
    assert res.persistence[1].auroc == pytest.approx(7 / 9)
    assert [(s.n, s.n_draws, s.n_eval) for s in res.few_shot] == [(5, 10, 1)]
    assert list(res.few_shot[0].methods) == ["mean", "info", "bayes", "universal"]
    assert res.budget.budgets == (6, 8, 9, 10, 12, 14, 15, 16, 18)


def _old_jsonable(obj):
    """evaluate_run's serialisation before it returned a RunEvaluation (kept here as the reference)."""
    if isinstance(obj, Calibration):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _old_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _old_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_old_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_old_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _old_evaluate_run(records, signal="topk_entropy@20", segment="all", seed=0, n_steps=None, n_draws=50,
                      n_boot=1000, sizes=None) -> dict:
    """The JSON dict evaluate_run returned before RunEvaluation, built the old way from the parts."""
    table = run_table(records, signal, segment, n_steps)
    finite = np.isfinite(table.h1)
    cal = dataclasses.replace(calibrate(table.h1[finite], table.correct[finite, 0]),
                              n_excluded=int((~finite).sum()))
    taus = cal.thresholds()
    return _old_jsonable({
        "signal": signal, "segment": segment, "n_problems": table.n_problems, "n_steps": table.n_steps,
        "n_excluded": int((~finite).sum()), "step1_accuracy": float(table.correct[:, 0].mean()),
        "n_step_accuracy": float(table.correct[:, -1].mean()), "in_sample": IN_SAMPLE_NOTE,
        "calibration": cal, "gate": {m: gate(table, t) for m, t in taus.items()},
        "separation": separation(table.h1, table.correct[:, 0], n_boot, seed=seed),
        "oracle": oracle(tau_sweep(table)), "sweep": tau_sweep(table), "few_shot": few_shot(table, sizes, n_draws, seed),
        "topk_ablation": {str(k): s for k, s in topk_ablation(records, segment, 1, n_boot, seed=seed).items()},
        "persistence": persistence(table, n_boot, seed=seed), "budget": budget_curves(table, taus)})


def _nan_f_records():
    recs = hand_records()
    recs[5]["steps"][0]["signals"]["all"]["topk_entropy@20"] = float("nan")
    return recs


@pytest.mark.parametrize(("records", "kw"), [
    (hand_records, {"n_boot": 200, "n_draws": 10}),
    (hand_records, {"signal": "deepconf_confidence", "n_boot": 50, "n_draws": 5}),
    (hand_records, {"signal": "self_certainty", "segment": "answer", "seed": 3, "n_boot": 50, "n_draws": 5}),
    (hand_records, {"n_steps": 2, "sizes": (2, 3), "n_boot": 50, "n_draws": 5}),
    (hand_records, {"signal": "full_entropy", "sizes": (), "n_boot": 50, "n_draws": 5}),
    (_nan_f_records, {"n_boot": 50, "n_draws": 5}),
    (lambda: [make_record(j, f"p{j}", (0.2 * j + 0.1, 1.0), (True, True), (10, 10)) for j in range(8)],
     {"n_boot": 50, "n_draws": 5}),
])
def test_to_json_is_the_old_dict(records, kw):
    new = evaluate_run(records(), **kw).to_json()
    old = _old_evaluate_run(records(), **kw)
    # Equal as text: the same keys in the same order, the same values, None where NaN or infinite. The one
    # key added since (per-step accuracy and unparseable answers) comes last.
    assert list(new) == [*old, "steps"]
    steps = new.pop("steps")
    assert json.dumps(new, allow_nan=False) == json.dumps(old, allow_nan=False)
    assert [st["step"] for st in steps] == list(range(1, new["n_steps"] + 1))


# --------------------------------------------------------------------------------------------
# The equal-spend uniform baseline (docs/method.md section 5)

# Q = 6, N = 3. m = min(3, alpha // 6), r = alpha - 6 m leftover calls while m < 3, each one more step for one
# problem; accuracy and tokens are averaged over every choice of those r problems: weight r/6 on m + 1 steps.
#   1 step each: 3/6 right, 900 tokens; 2 steps: 3/6, 1450 tokens; 3 steps: 4/6, 2000 tokens
#   alpha 8:  m 1, r 2: acc 3/6;                          tokens 900 + (2/6) 550 = 1083.33; calls 8
#   alpha 10: m 1, r 4: acc 3/6;                          tokens 900 + (4/6) 550 = 1266.67; calls 10
#   alpha 14: m 2, r 2: acc (4/6)(3/6) + (2/6)(4/6) = 5/9;  tokens 1450 + (2/6) 550 = 1633.33; calls 14, n_full 2
#   alpha 18: m 3: acc 4/6, 2000 tokens, 18 calls;  alpha 25: still 18 calls (no problem can take a 4th step)
@pytest.mark.parametrize(("alpha", "acc", "calls", "tokens", "n_full"), [
    (6, 3 / 6, 6, 900, 0), (8, 3 / 6, 8, 900 + 2 / 6 * 550, 0), (10, 3 / 6, 10, 900 + 4 / 6 * 550, 0),
    (12, 3 / 6, 12, 1450, 0), (14, 5 / 9, 14, 1450 + 2 / 6 * 550, 2), (18, 4 / 6, 18, 2000, 6),
    (25, 4 / 6, 18, 2000, 6)])
def test_uniform_spend_by_hand(table, alpha, acc, calls, tokens, n_full):
    p = uniform_spend_point(table, alpha, beta=300)
    assert (p.alpha, p.calls, p.n_full) == (alpha, calls, n_full)
    assert p.accuracy == pytest.approx(acc, abs=1e-12) and p.tokens == pytest.approx(tokens, abs=1e-9)


def test_budget_curves_report_both_uniform_baselines_and_their_spend(table):
    curves = budget_curves(table, {"mid": 1.5})
    assert [p.calls for p in curves.uniform] == [6, 6, 6, 6, 12, 12, 12, 12, 18]  # equal cap: up to Q - 1 unspent
    assert [p.calls for p in curves.uniform_spend] == list(curves.budgets)  # equal spend: the whole budget
    assert [p.calls for p in curves.gated["mid"]] == [6, 8, 9, 10, 12, 12, 12, 12, 12]
    for p in curves.uniform_spend:
        assert p.tokens <= p.alpha * curves.beta
    js = evaluate_run(hand_records(), n_boot=20, n_draws=2).to_json()["budget"]
    assert [p["calls"] for p in js["uniform_spend"]] == [6, 8, 9, 10, 12, 14, 15, 16, 18]
    assert js["uniform_spend"][5]["accuracy"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="alpha=5 calls is below"):
        uniform_spend_point(table, 5, beta=300)


# --------------------------------------------------------------------------------------------
# Per-step accuracy and unparseable answers; small-n warnings


def test_step_summaries_count_unparseable_answers():
    # step 1: a b c right, f unparseable; steps 2 and 3 as in HAND (no null)
    steps = step_summaries(hand_records())
    assert steps == (StepSummary(1, 6, 3, 1, 0.5, 1 / 6, 900), StepSummary(2, 6, 3, 0, 0.5, 0.0, 550),
                     StepSummary(3, 6, 4, 0, 4 / 6, 0.0, 550))
    # A gate run: steps 2 and 3 over the three problems that continued (d, e, f)
    steps = step_summaries(gate_records(), 3)
    assert [(s.n, s.n_correct, s.n_unparseable, s.tokens) for s in steps] == [(6, 3, 1, 900), (3, 1, 0, 300),
                                                                              (3, 2, 0, 300)]
    assert evaluate_run(hand_records(), n_boot=20, n_draws=2).steps[0].unparseable_rate == 1 / 6


def test_separation_warns_when_a_class_is_small():
    assert MIN_CLASS_N == 5
    sep = separation([0.1, 0.2, 0.3, 0.9, 1.0, 1.1], [True, True, True, False, False, False], n_boot=20)
    assert sep.warning == "n too small: 3 correct, 3 incorrect (fewer than 5 in a class)"
    sep = separation(np.r_[np.arange(5.0), np.arange(5.0) + 3], [True] * 5 + [False] * 5, n_boot=20)
    assert sep.warning is None


# --------------------------------------------------------------------------------------------
# A policy="gate" run (GATE_REFINE of synthetic_runs.py: tau 1.5, N 3; a, b, c stopped after step 1)

GATE_CONFIG = {"refine": GATE_REFINE, "decode": {"max_new_tokens": 512}}


def test_gate_settings_and_policy():
    st = gate_settings(GATE_CONFIG, gate_records())
    assert (st.policy, st.tau, st.column, st.segment, st.n_steps, st.max_new_tokens) == \
        ("gate", 1.5, "topk_entropy@20", "all", 3, 512)
    assert run_policy(GATE_CONFIG, []) == "gate" and run_policy({}, gate_records()) == "gate"
    assert run_policy({"refine": {"policy": "all"}}, hand_records()) == "all"
    with pytest.raises(ValueError, match="needs a numeric refine.tau"):
        gate_settings({"refine": {"policy": "gate"}}, gate_records())
    values, stopped = gate_decisions(gate_records(), st)
    assert values.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0] and stopped.tolist() == [True] * 3 + [False] * 3


def test_evaluate_gate_run_by_hand():
    res = evaluate_gate_run(gate_records(), GATE_CONFIG, n_boot=50)
    assert isinstance(res, GateRunEvaluation)
    assert (res.n_problems, res.n_stopped, res.n_continued, res.n_nan, res.n_inconsistent) == (6, 3, 3, 0, 0)
    assert res.step1_accuracy == 0.5 and res.stopped_accuracy == 1.0 and res.continued_accuracy == 2 / 3
    assert res.gated_accuracy == 5 / 6 and res.n_gated_correct == 5
    assert (res.calls_made, res.calls_all_steps, res.calls_not_made) == (12, 18, 6)
    assert res.tokens_spent == 1500 and res.tokens_saved_at_most == 6 * 512 and res.tokens_saved_estimate == 600.0
    assert res.separation.auroc == 1.0 and res.separation.warning is not None
    assert [s.n for s in res.steps] == [6, 3, 3]
    js = res.to_json()
    json.dumps(js, allow_nan=False)
    assert js["policy"] == "gate" and js["settings"]["tau"] == 1.5 and js["calls_not_made"] == 6
    # Without decode.max_new_tokens there is no bound; the estimate stays.
    res = evaluate_gate_run(gate_records(), {"refine": GATE_REFINE}, n_boot=20)
    assert res.tokens_saved_at_most is None and res.tokens_saved_estimate == 600.0


def test_gate_run_decisions_are_the_recorded_ones():
    recs = gate_records()
    # d (H1 2.0) recorded as stopped although 2.0 > tau: the run's decision counts, and it is flagged.
    recs[3]["steps"] = recs[3]["steps"][:1]
    # f has no step-1 value: the run continued it (NaN never stops) and that is consistent.
    recs[5]["steps"][0]["signals"]["all"]["topk_entropy@20"] = None
    res = evaluate_gate_run(recs, GATE_CONFIG, n_boot=20)
    assert (res.n_stopped, res.n_inconsistent, res.n_nan) == (4, 1, 1)
    assert res.gated_accuracy == 4 / 6  # a b c T (s1), d F (s1), e T (s3), f F (s3)
    assert res.calls_not_made == 8


def test_evaluate_run_refuses_a_gate_run_with_a_clear_message():
    with pytest.raises(ValueError, match="3 of 6 problems stopped early .* use evaluate_gate_run"):
        evaluate_run(gate_records())


def test_gate_run_against_the_all_steps_run_by_hand():
    st = gate_settings(GATE_CONFIG, gate_records())
    p = compare_gate_to_all(hand_records(), gate_records(), st, n_boot=2000, seed=0)
    # gate final 5/6 (c right at step 1, wrong at step 3), all-steps final 4/6: +1/6, one discordant pair
    assert (p.n, p.n_only_all, p.n_only_gate, p.all_steps, p.gate_steps) == (6, 0, 0, 3, 3)
    assert (p.gate_accuracy, p.all_accuracy, p.diff) == (5 / 6, 4 / 6, pytest.approx(1 / 6))
    assert (p.n_gate_only_right, p.n_all_only_right) == (1, 0)
    # The bootstrap difference is (times c is drawn) / 6: 0 with probability (5/6)^6 = 0.33 > 2.5%, and
    # P(3 or more of 6) = 0.062 > 2.5% > P(4 or more) = 0.0087: the 95% CI is [0, 3/6].
    assert (p.ci_low, p.ci_high) == (0.0, 0.5)
    assert (p.calls_gate, p.calls_all, p.tokens_gate, p.tokens_all) == (12, 18, 1500, 2000)
    # The all-steps run gated offline at tau 1.5: test_gate_by_hand's row (3 stopped, 5/6, savings 0.25)
    assert p.offline.n_stopped == 3 and p.offline.thresh_acc == 5 / 6 and p.offline.savings == pytest.approx(0.25)
    assert p.warning is None
    # Matched by id: a gate run of a subset, the rest counted
    sub = compare_gate_to_all(hand_records(), gate_records()[:4], st, n_boot=100)
    assert (sub.n, sub.n_only_all, sub.warning) == (4, 2, "n too small: 4 paired problems (fewer than 5)")
    with pytest.raises(ValueError, match="no problem id in common"):
        compare_gate_to_all(hand_records()[:2], gate_records()[2:], st)


def test_paired_bootstrap_is_seeded_and_checks_its_input():
    a, b = np.array([1, 1, 0, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 0])
    assert paired_bootstrap(a, b, 500, seed=3) == paired_bootstrap(a, b, 500, seed=3)
    rng = np.random.default_rng(0)  # enough problems that the seed shows in the bounds
    many_a, many_b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    assert paired_bootstrap(many_a, many_b, 500, seed=3) != paired_bootstrap(many_a, many_b, 500, seed=4)
    lo, hi = paired_bootstrap(a, b, 500, seed=3)
    assert lo <= (a - b).mean() <= hi
    with pytest.raises(ValueError, match="one non-zero length"):
        paired_bootstrap([], [])


def test_registered_threshold_flows_through_the_evaluation(hand_run):
    from tje_hf.analysis import calibration

    calibration.register_threshold("midpoint", lambda s: (s.mu_c + s.mu_i) / 2)
    try:
        res = evaluate_run(hand_run, n_boot=20, n_draws=3)
    finally:
        calibration.unregister_threshold("midpoint")
    # (1 + 2.5) / 2 = 1.75: the gate of tau_bayes (a, b, c stopped)
    assert list(res.gate) == ["mean", "info", "bayes", "universal", "midpoint"]
    assert res.gate["midpoint"].tau == 1.75 and res.gate["midpoint"].savings == pytest.approx(0.25)
    assert list(res.few_shot[0].methods)[-1] == "midpoint" and "midpoint" in res.budget.gated
    assert res.calibration.reconstructed == {"universal": calibration.UNIVERSAL_NOTE}
