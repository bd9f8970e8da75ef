"""Evaluation of the entropy gate on a recorded run (docs/method.md sections 4 and 5): pure numpy/scipy.

What lives here: the per-problem arrays of a run (:class:`RunTable`, :func:`run_table`), the gate
applied offline (:func:`gate`), the separation of correct and incorrect answers
(:func:`separation`, :func:`auroc`), the few-shot calibration protocol (:func:`few_shot`), the
top-k ablation and per-step persistence, the oracle thresholds (:func:`oracle`), the token budget
framework (:func:`budget_curves`: the gated schedules and the equal-cap and equal-spend uniform
baselines), per-step accuracy and unparseable answers (:func:`step_summaries`), and
:func:`evaluate_run`, which bundles them into one :class:`RunEvaluation` (``to_json()`` gives its
JSON form). A ``policy="gate"`` run is evaluated as it ran by :func:`evaluate_gate_run`
(:class:`GateRunEvaluation`), and set against an all-steps run of the same problems by
:func:`compare_gate_to_all` (paired bootstrap). What does not: the threshold formulas (``calibration.py``), plots and files
(``report.py``), reading the run directory (``records.py``).

Conventions, everywhere in this module:

- the signal is oriented so that **higher = more uncertain** (confidences are negated, see
  :func:`tje_hf.analysis.calibration.step_values`); the gate stops after step 1 when ``H1 <= tau``;
- an unparseable answer (``correct`` null) counts as incorrect;
- a problem whose step-1 value is NaN (empty segment, signal not computed) is **never stopped**
  by the gate (it runs all N steps) and is left out of every statistic of the signal itself
  (calibration, separation); it still counts in the accuracies and token costs;
- cost is generated tokens (``n_generated``, EOS included): a stopped problem costs its step-1
  tokens, any other its N steps' tokens;
- every random draw takes an explicit seed (``numpy.random.default_rng``), so results are
  reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..columns import DEFAULT_COLUMN
from .calibration import Calibration, calibrate, cohens_d, step_values

IN_SAMPLE_NOTE = ("thresholds calibrated on every problem of the run and applied to the same problems "
                  "(in-sample); the held-out numbers are in few_shot")
#: A statistic of two classes (d, t, p, AUROC) from fewer examples than this in either class carries a
#: warning (``Separation.warning``); the reports print it next to the number.
MIN_CLASS_N = 5


def small_n_warning(n_c: int, n_i: int) -> str | None:
    """``"n too small: ..."`` when either class has fewer than :data:`MIN_CLASS_N` examples, else None."""
    if min(n_c, n_i) < MIN_CLASS_N:
        return f"n too small: {n_c} correct, {n_i} incorrect (fewer than {MIN_CLASS_N} in a class)"
    return None


# --------------------------------------------------------------------------------------------
# The run as arrays


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise: compare the fields instead
class RunTable:
    """Per-problem, per-step arrays of one run: Q problems, N steps.

    ``values (Q, N) float64``: the step's mean signal, higher = more uncertain, NaN where absent.
    ``correct (Q, N) bool``: null (unparseable) is False. ``tokens (Q, N) int64``: generated tokens.
    """

    problem_ids: tuple[str, ...]
    values: np.ndarray
    correct: np.ndarray
    tokens: np.ndarray
    signal: str
    segment: str

    @property
    def n_problems(self) -> int:
        return self.values.shape[0]

    @property
    def n_steps(self) -> int:
        return self.values.shape[1]

    @property
    def h1(self) -> np.ndarray:
        """``(Q,)`` the step-1 signal."""
        return self.values[:, 0]

    def subset(self, idx: np.ndarray) -> RunTable:
        """The problems at ``idx`` (indices or a boolean mask), in that order."""
        return RunTable(tuple(np.asarray(self.problem_ids, dtype=object)[idx]), self.values[idx],
                        self.correct[idx], self.tokens[idx], self.signal, self.segment)


def run_table(records: list[dict], signal: str = DEFAULT_COLUMN, segment: str = "all",
              n_steps: int | None = None) -> RunTable:
    """The arrays of ``records`` (``docs/FORMAT.md``) for one signal and segment.

    ``n_steps`` (default: the most steps any record has) is the N of the N-step schedule: every
    record must hold steps 1..N (a ``policy="all"`` run); a smaller N evaluates a longer run as
    if it had stopped at N.
    """
    if not records:
        raise ValueError("no records to evaluate")
    n = max(len(r["steps"]) for r in records) if n_steps is None else n_steps
    if n < 1:
        raise ValueError(f"n_steps must be >= 1, got n_steps={n}")
    cols = [step_values(records, signal, segment, k) for k in range(1, n + 1)]
    return RunTable(tuple(str(r["problem_id"]) for r in records),
                    np.stack([c[0] for c in cols], axis=1), np.stack([c[1] for c in cols], axis=1),
                    np.stack([c[2] for c in cols], axis=1), signal, segment)


def _stopped(h: np.ndarray, tau: float) -> np.ndarray:
    # NaN never stops: it is compared as +inf.
    return np.where(np.isfinite(h), h, np.inf) <= tau


# --------------------------------------------------------------------------------------------
# The gate, applied offline


@dataclass(frozen=True)
class GateResult:
    """The gate with threshold ``tau`` on a problem set.

    ``thresh_acc``: accuracy of the step-1 answer where ``H1 <= tau`` and the step-N answer
    elsewhere. ``acc_diff = thresh_acc - n_step_acc`` (>= 0: no accuracy lost).
    ``stopped_acc``: step-1 accuracy of the stopped problems (NaN when none stopped).
    ``savings = 1 - sum(cost_gated) / sum(cost_full)`` in generated tokens (at most ``1 - 1/N``
    when every step has the same length).
    """

    tau: float
    n_problems: int
    n_stopped: int
    fraction_stopped: float
    stopped_acc: float
    thresh_acc: float
    n_step_acc: float
    acc_diff: float
    savings: float


def gate(table: RunTable, tau: float) -> GateResult:
    """Apply the gate ``stop after step 1 iff H1 <= tau`` to every problem of ``table``."""
    q = table.n_problems
    if q == 0:
        raise ValueError("gate needs at least one problem, got none")
    stop = _stopped(table.h1, tau)
    c1, cn = table.correct[:, 0], table.correct[:, -1]
    # Counts, not float accuracies, so that acc_diff >= 0 is exact.
    n_gated = int(np.where(stop, c1, cn).sum())
    n_full = int(cn.sum())
    full = table.tokens.sum(axis=1)
    cost_full = int(full.sum())
    cost_gated = int(np.where(stop, table.tokens[:, 0], full).sum())
    n_stop = int(stop.sum())
    return GateResult(
        tau=float(tau), n_problems=q, n_stopped=n_stop, fraction_stopped=n_stop / q,
        stopped_acc=float(c1[stop].mean()) if n_stop else math.nan,
        thresh_acc=n_gated / q, n_step_acc=n_full / q, acc_diff=(n_gated - n_full) / q,
        savings=1 - cost_gated / cost_full if cost_full else math.nan)


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
    ``warning``: :func:`small_n_warning` (fewer than :data:`MIN_CLASS_N` examples in a class: every
    statistic of the row is unreliable), None otherwise.
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


def oracle(table: RunTable) -> Oracle:
    """:class:`Oracle` over :func:`tau_sweep`."""
    sweep = tau_sweep(table)
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
# Token budget framework (docs/method.md section 5)


@dataclass(frozen=True)
class BudgetPoint:
    """One schedule at budget ``alpha`` calls of at most ``beta`` tokens each.

    ``calls`` and ``tokens`` are what the schedule spent (``calls <= alpha``,
    ``tokens <= alpha * beta``, checked); ``accuracy`` of each problem's answer after its last
    call (a problem given m calls answers with its step-m answer); ``n_full``: problems that got
    all N steps. For the equal-spend uniform baseline (:func:`uniform_spend_point`) ``accuracy``
    and ``tokens`` are expectations over which problems get the leftover calls, so ``tokens`` may
    be fractional.
    """

    alpha: int
    calls: int
    tokens: int | float
    accuracy: float
    n_full: int


def gated_schedule(table: RunTable, tau: float, alpha: int) -> np.ndarray:
    """``(Q,) int``: calls per problem under the gate at budget ``alpha`` calls.

    Every problem gets step 1 (``alpha >= Q`` is required). A problem with ``H1 <= tau`` stops
    there. The ``alpha - Q`` remaining calls go to the problems above tau, most uncertain first
    (NaN counts as most uncertain), each taking up to its N - 1 further steps before the next
    problem gets any (**chosen**: "depth first", as the gate runs all N steps on a problem it does
    not stop). Calls nobody can use (every problem above tau already at N) are left unspent.
    """
    q, n = table.n_problems, table.n_steps
    _check_alpha(alpha, q)
    h = np.where(np.isfinite(table.h1), table.h1, np.inf)
    steps = np.ones(q, dtype=np.int64)
    left = alpha - q
    go_on = np.flatnonzero(~_stopped(table.h1, tau))
    for j in go_on[np.argsort(-h[go_on], kind="stable")]:
        if left <= 0:
            break
        extra = min(n - 1, left)
        steps[j] += extra
        left -= extra
    return steps


def _check_alpha(alpha: int, q: int) -> None:
    if alpha < q:
        raise ValueError(f"budget alpha={alpha} calls is below one call for each of the {q} problems")


def uniform_schedule(table: RunTable, alpha: int) -> np.ndarray:
    """``(Q,) int``: the **equal-cap** uniform baseline: every problem gets ``min(N, floor(alpha / Q))``
    calls, and the rest of the budget (up to ``Q - 1`` calls) is left unspent."""
    q = table.n_problems
    _check_alpha(alpha, q)
    return np.full(q, min(table.n_steps, alpha // q), dtype=np.int64)


def _score(table: RunTable, steps: np.ndarray) -> tuple[int, int, float, int]:
    """``(calls, tokens, accuracy, n_full)`` of a schedule (calls per problem), without a budget check."""
    if steps.min() < 1 or steps.max() > table.n_steps:
        raise ValueError(f"calls per problem must be in [1, {table.n_steps}], got {steps.min()}..{steps.max()}")
    within = np.arange(table.n_steps)[None, :] < steps[:, None]  # (Q, N): the calls made
    acc = float(table.correct[np.arange(table.n_problems), steps - 1].mean())
    return int(steps.sum()), int(table.tokens[within].sum()), acc, int((steps == table.n_steps).sum())


def _check_budget(calls: float, tokens: float, alpha: int, beta: int) -> None:
    if calls > alpha or tokens > alpha * beta:
        raise RuntimeError(f"schedule over budget: {calls} calls / {tokens} tokens for alpha={alpha}, "
                           f"beta={beta} (alpha * beta = {alpha * beta})")


def budget_point(table: RunTable, steps: np.ndarray, alpha: int, beta: int) -> BudgetPoint:
    """Score a schedule (calls per problem); raises ``RuntimeError`` if it breaks the budget."""
    calls, tokens, acc, n_full = _score(table, steps)
    _check_budget(calls, tokens, alpha, beta)
    return BudgetPoint(int(alpha), calls, tokens, acc, n_full)


def uniform_spend_point(table: RunTable, alpha: int, beta: int) -> BudgetPoint:
    """The **equal-spend** uniform baseline at ``alpha`` calls (docs/method.md section 5).

    Every problem gets ``m = min(N, floor(alpha / Q))`` calls; while ``m < N`` the ``r = alpha - Q m``
    leftover calls (``0 <= r < Q``) each give one more step to a different problem, so the schedule
    spends exactly ``min(alpha, N Q)`` calls. Which r problems get the extra step is not chosen by the
    signal nor by the problem order: ``accuracy`` and ``tokens`` are the averages over every choice of
    those r problems (the expectation when they are drawn uniformly at random), that is
    ``(1 - r/Q) * score(m steps each) + (r/Q) * score(m + 1 steps each)``, exactly. ``n_full`` is
    ``r`` when ``m + 1 = N`` (``Q`` when ``m = N``).
    """
    q, n = table.n_problems, table.n_steps
    _check_alpha(alpha, q)
    m = min(n, alpha // q)
    calls, tokens, acc, n_full = _score(table, np.full(q, m, dtype=np.int64))
    r = alpha - q * m if m < n else 0
    if r:
        _, tokens_up, acc_up, _ = _score(table, np.full(q, m + 1, dtype=np.int64))
        w = r / q
        calls, n_full = calls + r, (r if m + 1 == n else 0)
        tokens = (1 - w) * tokens + w * tokens_up
        acc = (1 - w) * acc + w * acc_up
    _check_budget(calls, tokens, alpha, beta)
    return BudgetPoint(int(alpha), calls, tokens, acc, n_full)


@dataclass(frozen=True)
class BudgetCurves:
    """Accuracy against budget: the two uniform baselines and the gate at each threshold.

    ``uniform``: the **equal-cap** baseline (:func:`uniform_schedule`: ``min(N, floor(alpha/Q))``
    calls each, the rest unspent). ``uniform_spend``: the **equal-spend** baseline
    (:func:`uniform_spend_point`: the whole budget, up to ``N Q`` calls, spread evenly). ``gated``:
    ``{method: points}`` (:func:`gated_schedule`). Every point says the calls and tokens it spent.
    """

    budgets: tuple[int, ...]
    beta: int
    taus: dict[str, float]
    uniform: tuple[BudgetPoint, ...]
    gated: dict[str, tuple[BudgetPoint, ...]]
    uniform_spend: tuple[BudgetPoint, ...] = ()


def default_budgets(n_problems: int, n_steps: int) -> tuple[int, ...]:
    """``Q`` to ``N Q`` calls in quarter-step increments: ``round(Q (1 + j/4))``, j = 0..4(N-1)."""
    return tuple(sorted({round(n_problems * (1 + j / 4)) for j in range(4 * (n_steps - 1) + 1)}))


def budget_curves(table: RunTable, taus: dict[str, float], budgets: tuple[int, ...] | None = None,
                  beta: int | None = None) -> BudgetCurves:
    """Accuracy at equal budget: the gated allocation (per threshold) and the two uniform baselines.

    Args:
        table: a run with all N steps recorded; each call costs its recorded tokens.
        taus: ``{name: tau}`` thresholds for the gated allocation.
        budgets: budgets ``alpha`` in calls, each >= Q; default :func:`default_budgets`.
        beta: tokens per call; default the longest recorded call. ``ValueError`` when a recorded
            call is longer.
    """
    longest = int(table.tokens.max())
    beta = longest if beta is None else int(beta)
    if beta < longest:
        raise ValueError(f"beta={beta} tokens is below the longest recorded call ({longest} tokens)")
    budgets = default_budgets(table.n_problems, table.n_steps) if budgets is None else tuple(budgets)
    uniform = tuple(budget_point(table, uniform_schedule(table, a), a, beta) for a in budgets)
    spend = tuple(uniform_spend_point(table, a, beta) for a in budgets)
    gated = {name: tuple(budget_point(table, gated_schedule(table, t, a), a, beta) for a in budgets)
             for name, t in taus.items()}
    return BudgetCurves(budgets, beta, dict(taus), uniform, gated, spend)


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
    step); ``budget`` (:class:`BudgetCurves` for the in-sample thresholds and both uniform
    baselines); ``steps``: accuracy and unparseable answers at every step (:class:`StepSummary`).
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

    ``n_steps`` as in :func:`run_table`; ``n_draws`` and ``sizes`` as in :func:`few_shot`;
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
    return RunEvaluation(
        signal=signal, segment=segment, n_problems=table.n_problems, n_steps=table.n_steps,
        n_excluded=n_excluded, step1_accuracy=float(table.correct[:, 0].mean()),
        n_step_accuracy=float(table.correct[:, -1].mean()), in_sample=IN_SAMPLE_NOTE, calibration=cal,
        gate={m: gate(table, t) for m, t in taus.items()},
        separation=separation(table.h1, table.correct[:, 0], n_boot, seed=seed),
        oracle=oracle(table), sweep=tuple(tau_sweep(table)), few_shot=tuple(few_shot(table, sizes, n_draws, seed)),
        topk_ablation=topk_ablation(records, segment, 1, n_boot, seed=seed),
        persistence=tuple(persistence(table, n_boot, seed=seed)), budget=budget_curves(table, taus),
        steps=step_summaries(records, table.n_steps))


def _refuse_gate_run(records: list[dict], n_steps: int | None) -> None:
    """A clear error for a run whose problems stopped early (``policy="gate"``): evaluate_run needs
    every step; :func:`evaluate_gate_run` is the evaluation of such a run."""
    if not records:
        return
    lengths = [len(r["steps"]) for r in records]
    need = max(lengths) if n_steps is None else n_steps
    short = sum(n < need for n in lengths)
    if short and any(r.get("policy") == "gate" for r in records):
        raise ValueError(f"{short} of {len(records)} problems stopped early (a policy='gate' run): "
                         "evaluate_run needs every step; use evaluate_gate_run (tje report does)")


# --------------------------------------------------------------------------------------------
# A policy="gate" run, and its comparison with a policy="all" run of the same problems

SAVED_NOTE = ("calls not made: exact (N - 1 for every problem stopped after step 1). Tokens saved are not "
              "measured (the steps were never run): 'at most' bounds each call not made by decode.max_new_tokens; "
              "the estimate assumes each call not made would have been as long as the continued problems' "
              "later steps (the stopped problems are the confident ones, whose steps may be shorter)")


@dataclass(frozen=True)
class GateSettings:
    """What a ``policy="gate"`` run used, read from its ``config.json``: ``refine.policy``,
    ``refine.tau``, ``refine.gate_column``, ``refine.gate_segment``, ``refine.steps`` (N; default
    the most steps recorded) and ``decode.max_new_tokens`` (None when absent)."""

    policy: str
    tau: float
    column: str
    segment: str
    n_steps: int
    max_new_tokens: int | None


def run_policy(config: dict, records: list[dict]) -> str:
    """``"gate"`` when the run's ``refine.policy`` (``config``: config.json's ``"config"``) or any record
    says ``gate``, else ``"all"``."""
    refine = config.get("refine") if isinstance(config, dict) else None
    if isinstance(refine, dict) and refine.get("policy") == "gate":
        return "gate"
    return "gate" if any(r.get("policy") == "gate" for r in records) else "all"


def gate_settings(config: dict, records: list[dict]) -> GateSettings:
    """:class:`GateSettings` of a gate run; ``ValueError`` when its config holds no numeric ``refine.tau``."""
    refine = (config.get("refine") if isinstance(config, dict) else None) or {}
    tau = _number(refine.get("tau"))
    if tau is None:
        raise ValueError(f"a policy='gate' run needs a numeric refine.tau in its config.json, got {refine.get('tau')!r}")
    steps = _number(refine.get("steps"))
    n = int(steps) if steps is not None and steps >= 1 else max((len(r["steps"]) for r in records), default=1)
    decode = (config.get("decode") or {}) if isinstance(config, dict) else {}
    mnt = _number(decode.get("max_new_tokens"))
    return GateSettings("gate", tau, str(refine.get("gate_column") or DEFAULT_COLUMN),
                        str(refine.get("gate_segment") or "all"), n, None if mnt is None else int(mnt))


def _number(x) -> float | None:
    """``x`` as a float when it is a JSON number (not a bool), else None."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def gate_decisions(records: list[dict], settings: GateSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(values, stopped)`` of a gate run, one entry per record.

    ``values (Q,)``: the step-1 mean of the gate column over the gate segment, oriented so that higher
    = more uncertain (a confidence is negated: ``columns.uncertainty``), NaN where absent.
    ``stopped (Q,) bool``: the run's **own** decision: only step 1 recorded while N > 1.
    """
    values, _, _ = step_values(records, settings.column, settings.segment, 1)
    lengths = np.array([len(r["steps"]) for r in records])
    return values, (lengths == 1) & (settings.n_steps > 1)


@dataclass(frozen=True, eq=False)
class GateRunEvaluation:
    """A ``policy="gate"`` run as it ran (:func:`evaluate_gate_run`): no threshold is re-fitted.

    ``settings``: the tau, column, segment and N the run used. ``n_stopped``: problems the run
    stopped after step 1; ``n_inconsistent``: problems whose recorded decision differs from
    ``H1 <= tau`` recomputed from the records (0 for a consistent run); ``n_nan``: problems without
    a step-1 value (never stopped). Accuracies (unparseable = incorrect): ``step1_accuracy`` over every
    problem; ``stopped_accuracy``: step 1 of the stopped ones; ``continued_accuracy``: the last step of
    the others; ``gated_accuracy``: each problem's last recorded step, the run's final answer.
    Cost: ``calls_made`` (steps recorded), ``calls_all_steps = Q N``, ``calls_not_made`` (their
    difference, exact), ``tokens_spent`` (generated tokens recorded); ``tokens_saved_at_most``
    (``calls_not_made * max_new_tokens``, None without it) and ``tokens_saved_estimate``
    (``calls_not_made`` times the mean tokens of a continued problem's later step; NaN when none
    continued) as :data:`SAVED_NOTE` explains. ``separation``: step-1 values of the gate column
    against step-1 correctness. ``steps``: :class:`StepSummary` per step (over the problems that
    reached it).
    """

    settings: GateSettings
    n_problems: int
    n_stopped: int
    n_continued: int
    n_nan: int
    n_inconsistent: int
    step1_accuracy: float
    stopped_accuracy: float
    continued_accuracy: float
    gated_accuracy: float
    n_gated_correct: int
    calls_made: int
    calls_all_steps: int
    calls_not_made: int
    tokens_spent: int
    tokens_saved_at_most: int | None
    tokens_saved_estimate: float
    saved_note: str
    separation: Separation
    steps: tuple[StepSummary, ...]

    def to_json(self) -> dict:
        """Plain JSON data as :meth:`RunEvaluation.to_json` gives it (NaN and infinities as ``None``)."""
        return {"policy": "gate", **{f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}}


def evaluate_gate_run(records: list[dict], config: dict, n_boot: int = 1000, seed: int = 0) -> GateRunEvaluation:
    """Evaluate a ``policy="gate"`` run with the threshold it used (``config``: config.json's ``"config"``).

    Nothing is calibrated: the decisions are the run's own (a problem with only step 1 recorded was
    stopped). See :class:`GateRunEvaluation` for every field.
    """
    if not records:
        raise ValueError("no records to evaluate")
    st = gate_settings(config, records)
    values, correct1, _ = step_values(records, st.column, st.segment, 1)
    _, stopped = gate_decisions(records, st)
    q = len(records)
    last = np.array([r["steps"][-1].get("correct") is True for r in records])
    lengths = np.array([len(r["steps"]) for r in records])
    expected = _stopped(values, st.tau) if st.n_steps > 1 else np.zeros(q, dtype=bool)
    later = [int(s.get("n_generated") or 0) for r, stop in zip(records, stopped, strict=True) if not stop
             for s in r["steps"][1:]]
    tokens = sum(int(s.get("n_generated") or 0) for r in records for s in r["steps"])
    not_made = max(0, q * st.n_steps - int(lengths.sum()))
    n_stop = int(stopped.sum())
    return GateRunEvaluation(
        settings=st, n_problems=q, n_stopped=n_stop, n_continued=q - n_stop, n_nan=int((~np.isfinite(values)).sum()),
        n_inconsistent=int((expected != stopped).sum()), step1_accuracy=float(correct1.mean()),
        stopped_accuracy=float(correct1[stopped].mean()) if n_stop else math.nan,
        continued_accuracy=float(last[~stopped].mean()) if n_stop < q else math.nan,
        gated_accuracy=float(last.mean()), n_gated_correct=int(last.sum()), calls_made=int(lengths.sum()),
        calls_all_steps=q * st.n_steps, calls_not_made=not_made, tokens_spent=tokens,
        tokens_saved_at_most=None if st.max_new_tokens is None else not_made * st.max_new_tokens,
        tokens_saved_estimate=float(np.mean(later)) * not_made if later else (0.0 if not not_made else math.nan),
        saved_note=SAVED_NOTE, separation=separation(values, correct1, n_boot, seed=seed),
        steps=step_summaries(records, st.n_steps))


@dataclass(frozen=True, eq=False)
class PairedComparison:
    """A gate run against an all-steps run of the same problems, matched by ``problem_id``.

    ``n``: problems in both (``n_only_all``, ``n_only_gate``: in one only, left out).
    ``gate_accuracy``: the gate run's final answers (each problem's last step); ``all_accuracy``:
    the all-steps run's step-N answers, over the same n problems. ``diff = gate - all`` with a
    paired percentile bootstrap CI ``[ci_low, ci_high]`` (``n_boot`` resamples of the n problems
    with replacement, seeded). ``n_gate_only_right`` / ``n_all_only_right``: the discordant pairs.
    ``tokens_*`` and ``calls_*``: what each run spent on the n problems (two different samples of
    the model: their difference is measured, not a per-problem saving). ``offline``: the all-steps
    run gated offline at the gate run's tau on its column and segment (:func:`gate`: the savings
    measured where the later steps were run), None when that column is not recorded there.
    ``warning``: set when ``n`` is below :data:`MIN_CLASS_N`.
    """

    n: int
    n_only_all: int
    n_only_gate: int
    all_steps: int
    gate_steps: int
    tau: float
    gate_accuracy: float
    all_accuracy: float
    diff: float
    ci_low: float
    ci_high: float
    level: float
    n_boot: int
    n_gate_only_right: int
    n_all_only_right: int
    tokens_gate: int
    tokens_all: int
    calls_gate: int
    calls_all: int
    offline: GateResult | None
    warning: str | None

    def to_json(self) -> dict:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def paired_bootstrap(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a - b)`` for paired 0/1 (or real) outcomes: the pairs are
    resampled with replacement, ``n_boot`` times, with ``default_rng(seed)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two 1-D arrays of one non-zero length, got {a.shape}, {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got level={level}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    diffs = (a - b)[idx].mean(axis=1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare_gate_to_all(all_records: list[dict], gate_records: list[dict], settings: GateSettings,
                        n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> PairedComparison:
    """:class:`PairedComparison` of a gate run with an all-steps run; ``ValueError`` without a common problem."""
    by_all = {str(r["problem_id"]): r for r in all_records}
    by_gate = {str(r["problem_id"]): r for r in gate_records}
    ids = [pid for pid in by_gate if pid in by_all]
    if not ids:
        raise ValueError("the gate run and the all-steps run have no problem id in common")
    ra, rg = [by_all[p] for p in ids], [by_gate[p] for p in ids]
    g = np.array([r["steps"][-1].get("correct") is True for r in rg])
    a = np.array([r["steps"][-1].get("correct") is True for r in ra])
    lo, hi = paired_bootstrap(g, a, n_boot, level, seed)
    try:
        offline = gate(run_table(ra, settings.column, settings.segment), settings.tau)
    except ValueError:
        offline = None
    n = len(ids)

    def spent(rs: list[dict]) -> tuple[int, int]:
        return sum(len(r["steps"]) for r in rs), sum(int(s.get("n_generated") or 0) for r in rs for s in r["steps"])

    (calls_g, tok_g), (calls_a, tok_a) = spent(rg), spent(ra)
    return PairedComparison(
        n=n, n_only_all=len(by_all) - n, n_only_gate=len(by_gate) - n,
        all_steps=max(len(r["steps"]) for r in ra), gate_steps=settings.n_steps, tau=settings.tau,
        gate_accuracy=float(g.mean()), all_accuracy=float(a.mean()), diff=float(g.mean() - a.mean()),
        ci_low=lo, ci_high=hi, level=level, n_boot=n_boot, n_gate_only_right=int((g & ~a).sum()),
        n_all_only_right=int((a & ~g).sum()), tokens_gate=tok_g, tokens_all=tok_a, calls_gate=calls_g,
        calls_all=calls_a, offline=offline,
        warning=f"n too small: {n} paired problems (fewer than {MIN_CLASS_N})" if n < MIN_CLASS_N else None)


def jsonable(obj):
    """The JSON form of one part of a :class:`RunEvaluation`: :meth:`Calibration.to_json`, else
    dataclass fields, dicts (keys as strings), sequences and numpy scalars as plain values; NaN and
    infinities as ``None``."""
    if isinstance(obj, Calibration):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
