"""Evaluation of the entropy gate on a recorded ``policy="all"`` run (docs/method.md sections 4 and 5).

What lives here: the separation of correct and incorrect answers (:func:`separation`,
:func:`auroc`, :func:`auroc_ci`), the top-k ablation and per-step persistence, the gate at every
distinct threshold and the oracle thresholds (:func:`tau_sweep`, :func:`oracle`), the few-shot
calibration protocol (:func:`few_shot`), per-step accuracy and unparseable answers
(:func:`step_summaries`), and :func:`evaluate_run`, which bundles them, with the in-sample gate and
the token budget curves, into one :class:`RunEvaluation` (``to_json()`` gives its JSON form).
numpy/scipy only. What does not: the run's arrays and the gate itself (``table.py``), the token
budget framework (``budget.py``), a ``policy="gate"`` run as it ran and its paired comparison with
an all-steps run (``gate_run.py``), the threshold formulas (``calibration.py``), plots and files
(``report.py``), reading the run directory (``records.py``).

Every value is oriented by the direction :mod:`tje_hf.columns` defines; the conventions of
:mod:`tje_hf.analysis.table` (unparseable = incorrect, NaN never stops, cost in generated tokens,
explicit seeds) hold everywhere in this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..columns import DEFAULT_COLUMN
from .budget import BudgetCurves, budget_curves
from .calibration import Calibration, calibrate, cohens_d, step_values
from .table import GateResult, RunTable, gate, jsonable, run_table, small_n_warning

IN_SAMPLE_NOTE = ("thresholds calibrated on every problem of the run and applied to the same problems "
                  "(in-sample); the held-out numbers are in few_shot")


# --------------------------------------------------------------------------------------------
# Separation of correct and incorrect


@dataclass(frozen=True)
class Separation:
    """How well the signal separates incorrect from correct answers (higher = more uncertain).

    ``cohens_d`` (pooled sd, > 0 when incorrect answers have higher values); ``welch_t`` and
    ``welch_p`` (two-sided Welch t-test of incorrect vs correct); ``mannwhitney_u`` (U of the
    incorrect sample) and its two-sided ``mannwhitney_p``; ``auroc``: AUROC of the value as a
    predictor of an **incorrect** answer (> 0.5: the expected direction; ``U / (n_i n_c)``), with
    a stratified percentile bootstrap CI ``[auroc_low, auroc_high]``. NaN where undefined (a class
    too small, zero variance in both classes for the t-test). ``n_excluded``: NaN values left out.
    ``warning``: :func:`tje_hf.analysis.table.small_n_warning` (fewer than
    :data:`tje_hf.analysis.table.MIN_CLASS_N` examples in a class: every statistic of the row is
    unreliable), None otherwise.
    """

    n_c: int
    n_i: int
    mu_c: float
    mu_i: float
    cohens_d: float
    welch_t: float
    welch_p: float
    mannwhitney_u: float
    mannwhitney_p: float
    auroc: float
    auroc_low: float
    auroc_high: float
    level: float
    n_boot: int
    n_excluded: int
    warning: str | None = None


def auroc(scores, positive) -> float:
    """Rank AUROC of ``scores`` for the ``positive`` class: P(score_pos > score_neg) + P(tie) / 2.

    Computed from average ranks (Mann-Whitney): ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.
    NaN when a class is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_ci(scores, positive, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`auroc`, resampling within each class (stratified).

    Stratified so that every resample has both classes (an unstratified one can draw a single
    class, where AUROC is undefined). NaN when a class is empty.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got level={level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got n_boot={n_boot}")
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    sp, sn = s[pos], s[~pos]
    if len(sp) == 0 or len(sn) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    bp = sp[rng.integers(0, len(sp), size=(n_boot, len(sp)))]
    bn = sn[rng.integers(0, len(sn), size=(n_boot, len(sn)))]
    ranks = stats.rankdata(np.concatenate([bp, bn], axis=1), axis=1)  # (n_boot, n_pos + n_neg)
    n_pos, n_neg = len(sp), len(sn)
    aucs = (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def separation(values, correct, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Separation:
    """:class:`Separation` of ``values (n,)`` (higher = more uncertain) by ``correct (n,) bool``.

    NaN values are left out (counted in ``n_excluded``).
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if v.shape != ok.shape or v.ndim != 1:
        raise ValueError(f"separation needs two 1-D arrays of one length, got {v.shape} and {ok.shape}")
    keep = np.isfinite(v)
    v, ok = v[keep], ok[keep]
    vc, vi = v[ok], v[~ok]
    n_c, n_i = len(vc), len(vi)
    t = p = u = pu = math.nan
    if n_c >= 2 and n_i >= 2 and (np.ptp(vc) > 0 or np.ptp(vi) > 0):
        t, p = (float(x) for x in stats.ttest_ind(vi, vc, equal_var=False))
    if n_c >= 1 and n_i >= 1:
        u, pu = (float(x) for x in stats.mannwhitneyu(vi, vc, alternative="two-sided"))
    lo, hi = auroc_ci(v, ~ok, n_boot, level, seed)
    return Separation(
        n_c=n_c, n_i=n_i, mu_c=float(vc.mean()) if n_c else math.nan, mu_i=float(vi.mean()) if n_i else math.nan,
        cohens_d=cohens_d(vc, vi), welch_t=t, welch_p=p, mannwhitney_u=u, mannwhitney_p=pu,
        auroc=auroc(v, ~ok), auroc_low=lo, auroc_high=hi, level=level, n_boot=n_boot,
        n_excluded=int((~keep).sum()), warning=small_n_warning(n_c, n_i))


def topk_ablation(records: list[dict], segment: str = "all", step: int = 1, n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0) -> dict[int, Separation]:
    """``{K: Separation}`` of ``topk_entropy@K`` at ``step`` for every K recorded (K ascending)."""
    if not records:
        raise ValueError("no records to evaluate")
    names = records[0]["steps"][step - 1]["signals"].get(segment, {})
    ks = sorted(int(n.split("@", 1)[1]) for n in names if n.startswith("topk_entropy@"))
    out = {}
    for k in ks:
        values, correct, _ = step_values(records, f"topk_entropy@{k}", segment, step)
        out[k] = separation(values, correct, n_boot, level, seed)
    return out


def persistence(table: RunTable, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> list[Separation]:
    """The separation at every step k = 1..N: step-k values against step-k correctness."""
    return [separation(table.values[:, k], table.correct[:, k], n_boot, level, seed)
            for k in range(table.n_steps)]


# --------------------------------------------------------------------------------------------
# Oracle thresholds (headroom)


def tau_sweep(table: RunTable) -> list[GateResult]:
    """The gate at ``tau = -inf`` (never stop) and at every distinct finite step-1 value, ascending.

    These are all the distinct decisions a threshold can make on this problem set.
    """
    h = table.h1
    taus = [-math.inf] + sorted(set(h[np.isfinite(h)].tolist()))
    return [gate(table, t) for t in taus]


@dataclass(frozen=True)
class Oracle:
    """Thresholds chosen with the answers of the evaluation set itself: an upper bound, not a method.

    ``no_loss``: the largest savings with ``acc_diff >= 0`` (``tau = -inf``, never stop, always
    qualifies). ``best_acc``: the highest ``thresh_acc``. Ties go to larger savings, then to the
    smaller ``tau``.
    """

    no_loss: GateResult
    best_acc: GateResult


def oracle(sweep: Sequence[GateResult]) -> Oracle:
    """:class:`Oracle` over a :func:`tau_sweep`."""
    feasible = [g for g in sweep if g.acc_diff >= 0]
    no_loss = max(feasible, key=lambda g: (g.savings, g.thresh_acc, -g.tau))
    best = max(sweep, key=lambda g: (g.thresh_acc, g.savings, -g.tau))
    return Oracle(no_loss, best)


# --------------------------------------------------------------------------------------------
# Few-shot calibration


@dataclass(frozen=True)
class FewShotMethod:
    """One threshold method over R draws of n calibration problems, evaluated on the rest.

    ``mean_tau``/``std_tau`` over the ``n_finite_tau`` draws whose tau is finite (a draw with no
    correct example gives ``-inf``: never stop). ``n_fallback``: draws where the method used a
    documented fallback. The other pairs are mean and sd (``ddof=0``, over the draws) of the gate
    on the held-out problems; ``no_loss_fraction``: draws with ``acc_diff >= 0``.
    """

    mean_tau: float
    std_tau: float
    n_finite_tau: int
    n_fallback: int
    mean_stopped: float
    std_stopped: float
    mean_thresh_acc: float
    std_thresh_acc: float
    mean_acc_diff: float
    std_acc_diff: float
    mean_savings: float
    std_savings: float
    no_loss_fraction: float


@dataclass(frozen=True)
class FewShotSize:
    """The few-shot protocol at one calibration size ``n``: ``n_draws`` seeded draws.

    ``n_eval``: held-out problems per draw (every problem not drawn, NaN-signal ones included).
    ``n_all_correct`` / ``n_all_incorrect``: draws with a single class (their thresholds use the
    documented fallbacks of :func:`tje_hf.analysis.calibration.calibrate`).
    """

    n: int
    n_draws: int
    n_eval: int
    n_all_correct: int
    n_all_incorrect: int
    methods: dict[str, FewShotMethod]


def few_shot_sizes(n_pool: int) -> tuple[int, ...]:
    """``5, 10, 20, 40, ...`` (doubling) up to ``n_pool - 1``, so that one problem is always held out."""
    sizes, n = [], 5
    while n <= n_pool - 1:
        sizes.append(n)
        n *= 2
    return tuple(sizes)


def few_shot(table: RunTable, sizes: tuple[int, ...] | None = None, n_draws: int = 50, seed: int = 0
             ) -> list[FewShotSize]:
    """Calibrate on ``n`` random problems, apply the thresholds to all the others, ``n_draws`` times.

    Calibration problems are drawn without replacement from the problems with a finite step-1
    value; draw ``r`` at size ``n`` uses ``default_rng([seed, n])``, so one size's draws do not
    depend on which other sizes are run. ``sizes`` default: :func:`few_shot_sizes`.
    """
    pool = np.flatnonzero(np.isfinite(table.h1))
    sizes = few_shot_sizes(len(pool)) if sizes is None else tuple(sizes)
    for n in sizes:
        if not 1 <= n <= len(pool) - 1:
            raise ValueError(f"few-shot size n={n} must be in [1, {len(pool) - 1}] "
                             f"({len(pool)} problems with a finite step-1 value)")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got n_draws={n_draws}")
    out = []
    for n in sizes:
        rng = np.random.default_rng([seed, n])
        rows: dict[str, list[tuple[float, bool, GateResult]]] = {}  # every registered method, in order
        all_c = all_i = 0
        for _ in range(n_draws):
            cal_idx = rng.choice(pool, size=n, replace=False)
            rest = np.ones(table.n_problems, dtype=bool)
            rest[cal_idx] = False
            cal = calibrate(table.h1[cal_idx], table.correct[cal_idx, 0])
            all_c += cal.n_i == 0
            all_i += cal.n_c == 0
            held = table.subset(rest)
            for m, tau in cal.thresholds().items():
                rows.setdefault(m, []).append((tau, m in cal.fallbacks, gate(held, tau)))
        methods = {m: _few_shot_method(r) for m, r in rows.items()}
        out.append(FewShotSize(n, n_draws, table.n_problems - n, all_c, all_i, methods))
    return out


def _few_shot_method(rows: list[tuple[float, bool, GateResult]]) -> FewShotMethod:
    taus = np.array([r[0] for r in rows])
    finite = taus[np.isfinite(taus)]
    g = [r[2] for r in rows]

    def ms(xs: list[float]) -> tuple[float, float]:
        a = np.asarray(xs, dtype=np.float64)
        return float(a.mean()), float(a.std())

    stopped, acc, diff, sav = (ms([getattr(x, f) for x in g])
                               for f in ("fraction_stopped", "thresh_acc", "acc_diff", "savings"))
    return FewShotMethod(
        mean_tau=float(finite.mean()) if len(finite) else math.nan,
        std_tau=float(finite.std()) if len(finite) else math.nan,
        n_finite_tau=len(finite), n_fallback=sum(r[1] for r in rows),
        mean_stopped=stopped[0], std_stopped=stopped[1], mean_thresh_acc=acc[0], std_thresh_acc=acc[1],
        mean_acc_diff=diff[0], std_acc_diff=diff[1], mean_savings=sav[0], std_savings=sav[1],
        no_loss_fraction=float(np.mean([x.acc_diff >= 0 for x in g])))


# --------------------------------------------------------------------------------------------
# Per step: accuracy and unparseable answers


@dataclass(frozen=True)
class StepSummary:
    """One step over the problems that reached it (all of them in a ``policy="all"`` run).

    ``n``: problems with this step recorded; ``n_correct``; ``n_unparseable``: answers recorded as
    ``correct: null`` (they count as incorrect in ``accuracy``); ``tokens``: generated tokens of
    the step, summed over those problems.
    """

    step: int
    n: int
    n_correct: int
    n_unparseable: int
    accuracy: float
    unparseable_rate: float
    tokens: int


def step_summaries(records: list[dict], n_steps: int | None = None) -> tuple[StepSummary, ...]:
    """:class:`StepSummary` for steps 1..N (default N: the most steps any record has)."""
    n = max((len(r["steps"]) for r in records), default=0) if n_steps is None else n_steps
    out = []
    for k in range(1, n + 1):
        steps = [r["steps"][k - 1] for r in records if len(r["steps"]) >= k]
        n_ok = sum(st.get("correct") is True for st in steps)
        n_null = sum(st.get("correct") is None for st in steps)
        tokens = sum(int(st.get("n_generated") or 0) for st in steps)
        m = len(steps)
        out.append(StepSummary(k, m, n_ok, n_null, n_ok / m if m else math.nan, n_null / m if m else math.nan,
                               tokens))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Everything at once


@dataclass(frozen=True, eq=False)  # eq would compare NaN fields as unequal: compare to_json() instead
class RunEvaluation:
    """Every measurement of docs/method.md sections 4-5 on one run (:func:`evaluate_run`).

    ``n_excluded``: problems whose step-1 value is NaN; ``step1_accuracy`` / ``n_step_accuracy``
    over every problem; ``calibration`` on all problems with a step-1 value; ``gate``
    (``{method: GateResult}``, in :data:`METHODS` order) applies those thresholds to the same
    problems, **in-sample** (``in_sample`` says so in words; the held-out numbers are in
    ``few_shot``); ``separation`` at step 1; ``oracle`` and ``sweep`` (the gate at every distinct
    threshold, :func:`tau_sweep`); ``few_shot`` (one :class:`FewShotSize` per calibration size);
    ``topk_ablation`` (``{K: Separation}``, K ascending); ``persistence`` (one Separation per
    step); ``budget`` (:class:`tje_hf.analysis.budget.BudgetCurves` for the in-sample thresholds and
    both uniform baselines); ``steps``: accuracy and unparseable answers at every step
    (:class:`StepSummary`).
    Values are as computed: NaN where undefined, ``-inf`` for a threshold that never stops;
    :meth:`to_json` turns them into ``None``. Thresholds: every method of the registry
    (``calibration.METHODS``), in its order; ``calibration.reconstructed`` names the
    reconstructions.
    """

    signal: str
    segment: str
    n_problems: int
    n_steps: int
    n_excluded: int
    step1_accuracy: float
    n_step_accuracy: float
    in_sample: str
    calibration: Calibration
    gate: dict[str, GateResult]
    separation: Separation
    oracle: Oracle
    sweep: tuple[GateResult, ...]
    few_shot: tuple[FewShotSize, ...]
    topk_ablation: dict[int, Separation]
    persistence: tuple[Separation, ...]
    budget: BudgetCurves
    steps: tuple[StepSummary, ...] = ()

    def to_json(self) -> dict:
        """Plain JSON data, keys in field order: nested results as dicts, tuples as lists, the K of
        ``topk_ablation`` as strings, NaN and infinities as ``None`` (``json.dumps(...,
        allow_nan=False)`` accepts it)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def evaluate_run(records: list[dict], signal: str = DEFAULT_COLUMN, segment: str = "all", seed: int = 0,
                 n_steps: int | None = None, n_draws: int = 50, n_boot: int = 1000,
                 sizes: tuple[int, ...] | None = None) -> RunEvaluation:
    """Every measurement of docs/method.md sections 4-5 on one run, as a :class:`RunEvaluation`.

    ``n_steps`` as in :func:`tje_hf.analysis.table.run_table`; ``n_draws`` and ``sizes`` as in :func:`few_shot`;
    ``n_boot`` bootstrap resamples for every AUROC CI; ``seed`` drives the bootstrap and the
    few-shot draws. ``ValueError`` when no record has a finite step-1 value.
    """
    _refuse_gate_run(records, n_steps)
    table = run_table(records, signal, segment, n_steps)
    finite = np.isfinite(table.h1)
    if not finite.any():
        raise ValueError(f"signal {signal!r} (segment {segment!r}) is NaN or null at step 1 in every record")
    n_excluded = int((~finite).sum())
    cal = dataclasses.replace(calibrate(table.h1[finite], table.correct[finite, 0]), n_excluded=n_excluded)
    taus = cal.thresholds()
    sweep = tuple(tau_sweep(table))
    persist = tuple(persistence(table, n_boot, seed=seed))  # its step 1 is the run's separation
    return RunEvaluation(
        signal=signal, segment=segment, n_problems=table.n_problems, n_steps=table.n_steps,
        n_excluded=n_excluded, step1_accuracy=float(table.correct[:, 0].mean()),
        n_step_accuracy=float(table.correct[:, -1].mean()), in_sample=IN_SAMPLE_NOTE, calibration=cal,
        gate={m: gate(table, t) for m, t in taus.items()}, separation=persist[0],
        oracle=oracle(sweep), sweep=sweep, few_shot=tuple(few_shot(table, sizes, n_draws, seed)),
        topk_ablation=topk_ablation(records, segment, 1, n_boot, seed=seed),
        persistence=persist, budget=budget_curves(table, taus), steps=step_summaries(records, table.n_steps))


def _refuse_gate_run(records: list[dict], n_steps: int | None) -> None:
    """A clear error for a run whose problems stopped early (``policy="gate"``): evaluate_run needs
    every step; :func:`tje_hf.analysis.gate_run.evaluate_gate_run` is the evaluation of such a run."""
    if not records:
        return
    lengths = [len(r["steps"]) for r in records]
    need = max(lengths) if n_steps is None else n_steps
    short = sum(n < need for n in lengths)
    if short and any(r.get("policy") == "gate" for r in records):
        raise ValueError(f"{short} of {len(records)} problems stopped early (a policy='gate' run): "
                         "evaluate_run needs every step; use evaluate_gate_run (tje report does)")

