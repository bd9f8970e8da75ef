"""The token budget framework (docs/method.md section 5): accuracy at an equal budget of calls.

What lives here: the gated allocation of a budget of ``alpha`` calls (:func:`gated_schedule`: step 1
for every problem, the rest to the problems above tau, most uncertain first), the two uniform
baselines (:func:`uniform_schedule`: equal cap; :func:`uniform_spend_point`: equal spend), the
scoring of a schedule under a cap of ``beta`` tokens per call (:func:`budget_point`), and the curves
over a range of budgets (:func:`budget_curves`, :class:`BudgetCurves`). Pure numpy.

Units: a budget ``alpha`` is in calls (one call = one step of one problem; ``alpha >= Q``, calls
beyond ``N Q`` are left unspent); ``beta`` and every ``tokens`` are generated tokens. A schedule is
``(Q,) int``: calls per problem, in ``[1, N]``; a problem given m calls answers with its step-m
answer. "Most uncertain" follows the direction of :mod:`tje_hf.columns`; the conventions of
:mod:`tje_hf.analysis.table` hold here (NaN never stops and counts as most uncertain). Reads a
:class:`tje_hf.analysis.table.RunTable` with all N steps recorded (a ``policy="all"`` run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .table import RunTable, stops

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
    go_on = np.flatnonzero(~stops(table.h1, tau))
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
