"""The data every evaluation reads: one run as per-problem arrays, and the gate applied offline.

What lives here: :class:`RunTable` and :func:`run_table` (Q problems, N steps: the step mean of one
signal column over one segment, correctness and generated tokens of every step), :func:`gate` and
:class:`GateResult` (the gate ``stop after step 1 iff H1 <= tau`` on a problem set, its accuracy and
savings), and what every evaluation module shares: :data:`MIN_CLASS_N` with :func:`small_n_warning`
(when a statistic of two classes is too small to trust) and :func:`jsonable` (the JSON form of any
result). Pure numpy. What does not: the statistics (``evaluation.py``), the token budget
(``budget.py``), the evaluation of a ``policy="gate"`` run (``gate_run.py``), the threshold formulas
(``calibration.py``).

Conventions, shared by ``table.py``, ``evaluation.py``, ``budget.py`` and ``gate_run.py``:

- values are oriented by the direction :mod:`tje_hf.columns` defines once (a confidence is negated:
  :func:`tje_hf.columns.uncertainty`, applied by :func:`tje_hf.analysis.calibration.step_values`),
  so that the gate stops after step 1 when ``H1 <= tau``;
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

from ..columns import DEFAULT_COLUMN
from .calibration import Calibration, step_values

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


def stops(h: np.ndarray, tau: float) -> np.ndarray:
    """Which rows the gate stops: ``h <= tau``, ``h`` and ``tau`` in uncertainty orientation
    (:func:`tje_hf.columns.uncertainty`). NaN never stops: it is compared as +inf."""
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
    stop = stops(table.h1, tau)
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
# The JSON form of a result


def jsonable(obj):
    """The JSON form of one part of a :class:`tje_hf.analysis.evaluation.RunEvaluation`:
    :meth:`Calibration.to_json`, else dataclass fields, dicts (keys as strings), sequences and numpy
    scalars as plain values; NaN and infinities as ``None``."""
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
