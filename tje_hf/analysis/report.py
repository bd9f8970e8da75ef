"""The calibration report of a run, and the comparison of several runs: markdown, PNG, JSON.

What lives here: :func:`write_report` (``RUN_DIR/report/``: ``report.md``, ``summary.json``, one
PNG per figure), for a ``policy="all"`` run (calibration, gate, separation, few-shot, budget) and
for a ``policy="gate"`` run (the tau it used, its decisions, accuracy and cost, as it ran), and
:func:`compare_runs` (``compare.md``, ``compare.json``, ``compare.png``; defined in
``compare.py``). What does not: any statistic (``table.py``, ``evaluation.py``, ``budget.py``,
``gate_run.py`` and ``calibration.py`` compute every number shown here), the figures
(``figures.py``), the palette (``style.py``), and the run directory format (read only through
``tje_hf.records``).

matplotlib is optional: without it the report holds the tables and says that the plots were skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..columns import (
    DEFAULT_COLUMN,
    higher_is_uncertain,
    unit_of,
)
from ..records import REPORT_DIR, load_config, read_records, with_steps
from .calibration import step_values
from .compare import compare_runs
from .evaluation import FewShotSize, RunEvaluation, evaluate_run
from .figures import gate_run_figures, run_figures
from .fmt import (
    SEP_HEADER,
    SMALL_N_NOTE,
    STEP_HEADER,
    figure_md,
    frac,
    gate_row,
    num,
    pct,
    pp,
    rate,
    reconstruction_notes,
    run_meta,
    sep_row,
    short_name,
    signal_axis_label,
    step_rows,
    table,
    tokens,
)
from .gate_run import GateRunEvaluation, evaluate_gate_run, run_policy
from .style import method_title
from .table import MIN_CLASS_N

__all__ = ["compare_runs", "signal_axis_label", "write_report"]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, signal: str = DEFAULT_COLUMN,
                 segment: str = "all") -> Path:
    """Write the report of a run; returns the path of ``report.md``.

    Args:
        run_dir: a run directory (``docs/FORMAT.md``).
        out_dir: where to write; default ``RUN_DIR/report``.
        signal, segment: for a ``policy="all"`` run, the step-1 signal to calibrate (higher = more
            uncertain after orientation; see :func:`tje_hf.analysis.calibration.step_values`). A
            ``policy="gate"`` run is reported with the column, segment and tau it used (its
            ``config.json``), whatever these say.

    A ``policy="all"`` run: ``report.md`` (every table of
    :func:`tje_hf.analysis.evaluation.evaluate_run`), ``summary.json`` (its ``to_json()``, with the
    model, task and config hash) and, with matplotlib, ``hist.png``, ``sweep.png``,
    ``few_shot.png``, ``topk.png``, ``persistence.png``, ``budget.png``. A ``policy="gate"`` run:
    ``report.md`` and ``summary.json`` of :func:`tje_hf.analysis.gate_run.evaluate_gate_run`,
    and ``hist.png``.
    """
    run_dir = Path(run_dir)
    recorded = read_records(run_dir)
    records = with_steps(recorded)
    if not records:
        raise ValueError(f"{run_dir} holds no records" + (" of a problem that ran a step" if recorded else ""))
    cfg = load_config(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(run_dir, cfg), "not_run": len(recorded) - len(records)}
    config = cfg.get("config", {})
    if run_policy(config, records) == "gate":
        res_g = evaluate_gate_run(records, config)
        (out / "summary.json").write_text(json.dumps({**meta, **res_g.to_json()}, indent=1, allow_nan=False))
        values, correct, _ = step_values(records, res_g.settings.column, res_g.settings.segment, 1)
        figures, skipped = gate_run_figures(res_g, values, correct, out)
        (out / "report.md").write_text(_gate_report_md(meta, res_g, figures, skipped))
        return out / "report.md"

    res = evaluate_run(records, signal, segment)
    (out / "summary.json").write_text(json.dumps({**meta, **res.to_json()}, indent=1, allow_nan=False))
    values, correct, _ = step_values(records, signal, segment, 1)
    figures, skipped = run_figures(res, values, correct, out)
    (out / "report.md").write_text(_report_md(meta, res, figures, skipped))
    return out / "report.md"


# --------------------------------------------------------------------------------------------
# A policy="all" run


def _report_md(meta: dict, res: RunEvaluation, figures: dict[str, str], skipped: str | None) -> str:
    parts = _intro_md(meta, res) + _accuracy_md(res) + _calibration_md(res) + _gate_md(res, figures)
    parts += _separation_md(res) + _few_shot_md(res, figures) + _topk_md(res, figures)
    parts += _persistence_md(res, figures) + _budget_md(res, figures)
    if skipped:
        parts += ["", f"_Plots skipped: {skipped}._"]
    return "\n".join(parts) + "\n"


def _intro_md(meta: dict, res: RunEvaluation) -> list[str]:
    unit = unit_of(res.signal)
    direction = ("" if higher_is_uncertain(res.signal) else
                 " The signal is a confidence (higher = more confident): it is **negated** here, so that "
                 "higher = more uncertain and every threshold is on the negated value.")
    parts = [
        f"# Calibration report: {meta['model']} on {meta['task']}",
        "",
        (f"Run `{meta['run_dir']}` (config hash `{meta['config_hash']}`), policy `all`. Signal `{res.signal}` "
         f"({unit}, higher = more uncertain), segment `{res.segment}`, {res.n_problems} problems, N = {res.n_steps} "
         f"steps. The gate stops after step 1 when H <= tau. Unparseable answers count as incorrect. Every rate "
         f"shows its count (k/n); a statistic from fewer than {MIN_CLASS_N} examples in a class is marked "
         f"'n too small'.{direction}"),
    ]
    if res.n_excluded:
        parts.append(f"\n{res.n_excluded} problems have no step-1 value (NaN): left out of calibration and "
                     "separation; the gate never stops them.")
    return parts + _not_run_md(meta)


def _not_run_md(meta: dict) -> list[str]:
    """The problems recorded without a step (their prompt did not fit the model's context)."""
    if not meta.get("not_run"):
        return []
    return ["", (f"{meta['not_run']} more problems did not fit the model's context and ran no step "
                 "(`stopped: context_full`): left out of everything below.")]


def _accuracy_md(res: RunEvaluation) -> list[str]:
    q, n = res.n_problems, res.n_steps
    return ["", "## Accuracy", "",
            table(["step-1 accuracy", f"{n}-step accuracy"],
                  [[rate(res.step1_accuracy, q), rate(res.n_step_accuracy, q)]]),
            "", "### Accuracy and unparseable answers by step", "",
            "An unparseable answer (`correct: null` in the records) counts as incorrect in the accuracy.", "",
            table(STEP_HEADER, step_rows(res.steps))]


def _calibration_md(res: RunEvaluation) -> list[str]:
    cal = res.calibration
    unit = unit_of(res.signal)
    parts = ["", "## Calibration on all problems", "",
             f"Means and sample sds (ddof = 1) of the step-1 value ({unit}); Cohen's d with the pooled sd.", "",
             table(["mu_c", "sigma_c", "n_c", "mu_i", "sigma_i", "n_i", "Cohen's d"],
                   [[num(cal.mu_c), num(cal.sigma_c), cal.n_c, num(cal.mu_i),
                     num(cal.sigma_i), cal.n_i, num(cal.cohens_d)]])]
    if min(cal.n_c, cal.n_i) < MIN_CLASS_N:
        parts += ["", (f"\u26a0 n too small: {cal.n_c} correct and {cal.n_i} incorrect examples; the thresholds "
                  f"rest on fewer than {MIN_CLASS_N} examples in a class.")]
    if cal.fallbacks:
        parts += ["", "Fallbacks used:", ""] + [f"- `{k}`: {v}" for k, v in cal.fallbacks.items()]
    return parts


def _gate_md(res: RunEvaluation, figures: dict[str, str]) -> list[str]:
    n = res.n_steps
    unit = unit_of(res.signal)
    rows = [gate_row(method_title(m), g) for m, g in res.gate.items()]
    rows += [gate_row("oracle: most savings, no loss", res.oracle.no_loss),
             gate_row("oracle: best Thresh Acc", res.oracle.best_acc)]
    parts = ["", "## The gate", "",
             (f"Thresholds from the calibration above, applied to the same problems (**in-sample**; the held-out "
              f"numbers are under *Few-shot calibration*). Thresh Acc: the step-1 answer where H <= tau, the "
              f"step-{n} answer elsewhere. Savings: 1 - gated tokens / {n}-step tokens (generated tokens). "
              f"The oracle rows choose tau with the answers (headroom, not a method)."), "",
             table(["threshold", f"tau ({unit})", "stopped (k/Q)", "acc. of stopped", "Thresh Acc",
                    f"vs {n}-step", "token savings"], rows)]
    notes = reconstruction_notes(res.calibration.reconstructed)
    if notes:
        parts += [""] + notes
    return parts + figure_md(figures, "hist", "sweep")


def _separation_md(res: RunEvaluation) -> list[str]:
    parts = ["", "## Separation of correct and incorrect (step 1)", "",
             ("Welch: two-sided t-test of incorrect vs correct. AUROC: the value as a predictor of an **incorrect** "
              "answer (> 0.5 = higher values on wrong answers), with a stratified bootstrap 95% CI "
              f"({res.separation.n_boot} resamples)."), "",
             table(SEP_HEADER, [sep_row(res.separation)])]
    if res.separation.warning:
        parts += ["", SMALL_N_NOTE]
    return parts


def _few_shot_row(size: FewShotSize, m: str) -> list:
    f = size.methods[m]
    return [size.n, size.n_eval, short_name(m),
            f"{num(f.mean_tau)} ± {num(f.std_tau)}", f"{f.n_finite_tau}/{size.n_draws}",
            f"{pct(f.mean_stopped)} ± {pct(f.std_stopped)}",
            f"{pct(f.mean_thresh_acc)} ± {pct(f.std_thresh_acc)}",
            f"{pp(f.mean_acc_diff)} ± {pp(f.std_acc_diff).lstrip('+')}",
            f"{pct(f.mean_savings)} ± {pct(f.std_savings)}",
            pct(f.no_loss_fraction, 0), f.n_fallback]


def _few_shot_md(res: RunEvaluation, figures: dict[str, str]) -> list[str]:
    unit = unit_of(res.signal)
    parts = ["", "## Few-shot calibration (held out)", ""]
    if res.few_shot:
        fs_rows = [_few_shot_row(size, m) for size in res.few_shot for m in size.methods]
        single = ", ".join(f"n = {s.n}: {s.n_all_correct} all correct, {s.n_all_incorrect} all incorrect"
                           for s in res.few_shot)
        draws = res.few_shot[0].n_draws
        parts += [(f"{draws} seeded random draws of n calibration problems each; thresholds from the draw, "
                   f"evaluated on every other problem (held out). Mean ± sd over the draws (tau over the draws where "
                   f"it is finite; a draw with no correct example never stops). Draws with a single class: {single}."),
                  "",
                  table(["n", "held out", "threshold", f"tau ({unit})", "finite tau", "stopped", "Thresh Acc",
                         f"vs {res.n_steps}-step", "token savings", "draws without loss", "fallbacks"], fs_rows)]
    else:
        parts.append("Too few problems with a step-1 value for the protocol (it needs at least 6).")
    return parts + figure_md(figures, "few_shot")


def _topk_md(res: RunEvaluation, figures: dict[str, str]) -> list[str]:
    parts = ["", "## Top-k ablation (step 1)", ""]
    if res.topk_ablation:
        parts.append(table(["k"] + SEP_HEADER, [[k] + sep_row(s) for k, s in res.topk_ablation.items()]))
        if any(s.warning for s in res.topk_ablation.values()):
            parts += ["", SMALL_N_NOTE]
    else:
        parts.append(f"No `topk_entropy@K` columns recorded in segment `{res.segment}`.")
    return parts + figure_md(figures, "topk")


def _persistence_md(res: RunEvaluation, figures: dict[str, str]) -> list[str]:
    parts = ["", "## Persistence: separation at every step", "",
             "Step-k value against step-k correctness.", "",
             table(["step"] + SEP_HEADER, [[k + 1] + sep_row(s) for k, s in enumerate(res.persistence)])]
    if any(s.warning for s in res.persistence):
        parts += ["", SMALL_N_NOTE]
    return parts + figure_md(figures, "persistence")


def _budget_md(res: RunEvaluation, figures: dict[str, str]) -> list[str]:
    b, q, n = res.budget, res.n_problems, res.n_steps
    names = list(b.gated)
    header = ["alpha (calls)", "calls / problem", "uniform, equal cap", "uniform, equal spend"]
    header += [f"gated {short_name(m)}" for m in names]

    def cell(p) -> str:
        return f"{pct(p.accuracy)} ({p.calls} calls)"

    acc_rows, tok_rows = [], []
    for j, a in enumerate(b.budgets):
        pts = [b.uniform[j], b.uniform_spend[j]] + [b.gated[m][j] for m in names]
        acc_rows.append([a, f"{a / q:.2f}"] + [cell(p) for p in pts])
        tok_rows.append([a, tokens(a * b.beta)] + [tokens(p.tokens) for p in pts])
    return ["", "## Token budget: equal cap and equal spend", "",
            (f"A budget allows alpha calls, each of at most beta = {b.beta} tokens (the longest recorded call); "
             f"Q = {q} problems, N = {n} steps. Each problem is scored on the answer of its last call."), "",
            (f"- **Uniform, equal cap**: every problem gets m = min({n}, floor(alpha / {q})) steps; the other "
             f"alpha - {q} m calls are left unspent."),
            (f"- **Uniform, equal spend**: every problem gets m steps and, while m < {n}, the r = alpha - {q} m "
             f"leftover calls give one more step to r different problems, so it spends min(alpha, {n * q}) calls, "
             "the whole budget. Neither the signal nor the problem order picks those r problems: accuracy and "
             "tokens are the average over every choice of them (the expectation under a uniformly random choice)."),
            ("- **Gated** (in-sample thresholds): every problem gets step 1; problems with H <= tau stop there; the "
             f"other calls go to the remaining problems, most uncertain first, each up to all {n} steps."), "",
            "Accuracy, with the calls each schedule actually spent:", "",
            table(header, acc_rows), "",
            "Generated tokens spent (the equal-spend baseline's are expectations):", "",
            table(["alpha (calls)", "alpha × beta"] + header[2:], tok_rows)] + figure_md(figures, "budget")


# --------------------------------------------------------------------------------------------
# A policy="gate" run


def _gate_report_md(meta: dict, res: GateRunEvaluation, figures: dict[str, str], skipped: str | None) -> str:
    st, q = res.settings, res.n_problems
    unit = unit_of(st.column)
    negated = "" if higher_is_uncertain(st.column) else " (a confidence: the threshold is on its negation)"
    parts = [
        f"# Gate run report: {meta['model']} on {meta['task']}",
        "",
        (f"Run `{meta['run_dir']}` (config hash `{meta['config_hash']}`), policy `gate`: the run stopped a problem "
         f"after step 1 when its step-1 mean `{st.column}` ({unit}{negated}) over segment `{st.segment}` was <= "
         f"tau = {num(st.tau)} (config.json `refine.tau`), and ran all N = {st.n_steps} steps otherwise. "
         f"{q} problems. Everything below is what the run did; no threshold is re-fitted. Unparseable answers "
         "count as incorrect."),
        *_not_run_md(meta),
        "", "## The run's gate", "",
        table(["policy", f"tau ({unit})", "column", "segment", "N", "stopped after step 1", "continued",
               "no step-1 value"],
              [["gate", num(st.tau), f"`{st.column}`", st.segment, st.n_steps, frac(res.n_stopped, q),
                frac(res.n_continued, q), res.n_nan]]),
    ]
    if res.n_inconsistent:
        parts += ["", (f"\u26a0 {res.n_inconsistent} of {q} problems were stopped (or continued) against "
                       f"H1 <= tau recomputed from their records: check the run.")]
    parts += ["", "## Accuracy", "",
              table(["", "accuracy"],
                    [["step 1, every problem", rate(res.step1_accuracy, q)],
                     ["stopped problems (their step-1 answer)", rate(res.stopped_accuracy, res.n_stopped)],
                     [f"continued problems (their step-{st.n_steps} answer)",
                      rate(res.continued_accuracy, res.n_continued)],
                     ["**gated final** (each problem's last step)", frac(res.n_gated_correct, q)]]),
              "", "### Accuracy and unparseable answers by step", "",
              "Over the problems that reached the step (a stopped problem has step 1 only).", "",
              table(STEP_HEADER, step_rows(res.steps))]
    parts += _gate_cost_md(res)
    sep = res.separation
    parts += ["", f"## Separation of correct and incorrect (step 1, `{st.column}`, segment `{st.segment}`)", "",
              table(SEP_HEADER, [sep_row(sep)])]
    if sep.warning:
        parts += ["", SMALL_N_NOTE]
    parts += figure_md(figures, "hist")
    if skipped:
        parts += ["", f"_Plots skipped: {skipped}._"]
    return "\n".join(parts) + "\n"


def _gate_cost_md(res: GateRunEvaluation) -> list[str]:
    st = res.settings
    at_most = ("n/a (no decode.max_new_tokens in config.json)" if res.tokens_saved_at_most is None else
               f"at most {tokens(res.tokens_saved_at_most)} ({res.calls_not_made} × {st.max_new_tokens})")
    return ["", "## Cost", "",
            table(["calls made", "calls if every step ran", "calls not made", "tokens spent",
                   "tokens saved", "tokens saved, estimate"],
                  [[res.calls_made, res.calls_all_steps, res.calls_not_made, tokens(res.tokens_spent), at_most,
                    f"~{tokens(res.tokens_saved_estimate)} (estimate)"]]),
            "", (f"{res.saved_note[0].upper()}{res.saved_note[1:]}. For the accuracy against running every step, "
            "and savings measured where the later steps were run, compare with a `policy: all` run of the same "
            "problems: `tje compare ALL_RUN GATE_RUN --out DIR`.")]
