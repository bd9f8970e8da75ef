"""A ``policy="gate"`` run evaluated as it ran, and its paired comparison with an all-steps run.

What lives here: the settings the run used, read from its ``config.json`` (:func:`run_policy`,
:func:`gate_settings`, :class:`GateSettings`), its own per-problem decisions (:func:`gate_decisions`),
its accuracy and cost as recorded (:func:`evaluate_gate_run`, :class:`GateRunEvaluation`; no
threshold is re-fitted), and its comparison with a ``policy="all"`` run of the same problems,
matched by problem id (:func:`compare_gate_to_all`, :class:`PairedComparison`: gate minus all-steps
final accuracy with a seeded paired bootstrap CI, :func:`paired_bootstrap`).

Units: accuracies are fractions of problems (unparseable = incorrect); calls are steps run; tokens
are generated tokens (``n_generated``). Tokens a stopped problem did not spend were never measured:
:data:`SAVED_NOTE` says how they are bounded and estimated. The gate column's direction is the one
:mod:`tje_hf.columns` defines (a confidence is negated); the conventions of
:mod:`tje_hf.analysis.table` hold here. A ``policy="all"`` run is evaluated by
:func:`tje_hf.analysis.evaluation.evaluate_run` instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..columns import DEFAULT_COLUMN
from .calibration import step_values
from .evaluation import Separation, StepSummary, separation, step_summaries
from .table import MIN_CLASS_N, GateResult, gate, jsonable, run_table, stops

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
    against step-1 correctness. ``steps``: :class:`tje_hf.analysis.evaluation.StepSummary` per step
    (over the problems that reached it).
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
        """Plain JSON data as :meth:`tje_hf.analysis.evaluation.RunEvaluation.to_json` gives it (NaN and
        infinities as ``None``)."""
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
    expected = stops(values, st.tau) if st.n_steps > 1 else np.zeros(q, dtype=bool)
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
    run gated offline at the gate run's tau on its column and segment (:func:`tje_hf.analysis.table.gate`:
    the savings measured where the later steps were run), None when that column is not recorded there.
    ``warning``: set when ``n`` is below :data:`tje_hf.analysis.table.MIN_CLASS_N`.
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
