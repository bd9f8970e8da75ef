"""The calibration report of a run, and the comparison of several runs: markdown, PNG, JSON.

What lives here: :func:`write_report` (``RUN_DIR/report/``: ``report.md``, ``summary.json``, one
PNG per figure) and :func:`compare_runs` (``compare.md``, ``compare.json``, ``compare.png``).
What does not: any statistic (``evaluation.py`` and ``calibration.py`` compute every number shown
here), and the run directory format (read only through ``tje_hf.records``).

matplotlib is optional: it is imported inside the plotting functions, figures are drawn with the
Agg canvas on ``matplotlib.figure.Figure`` (no pyplot, so no global backend is changed), and
without matplotlib the report holds the tables and says that the plots were skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..columns import DEFAULT_COLUMN, HIGHER_IS_UNCERTAIN, SIGNAL_UNITS, signal_of
from ..records import load_config, read_records
from .calibration import METHODS, step_values
from .evaluation import FewShotSize, GateResult, RunEvaluation, Separation, evaluate_run

TAU_NAMES = {"mean": "entropy mean", "info": "information-theoretic", "bayes": "Bayes optimal",
             "universal": "scale-invariant"}
# One colour and line style per threshold method, shared by every figure.
METHOD_STYLE = {"mean": ("#1f77b4", "-"), "info": ("#2ca02c", "--"), "bayes": ("#d62728", "-."),
                "universal": ("#9467bd", ":")}
RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
      "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.dpi": 110, "savefig.dpi": 130}


# --------------------------------------------------------------------------------------------
# Formatting: every number of a RunEvaluation as it is computed; NaN (undefined) reads "n/a".


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _pct(x, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if math.isfinite(x) else "n/a"


def _pp(x) -> str:
    """An accuracy difference in percentage points, signed."""
    return f"{100 * x:+.1f} pp" if math.isfinite(x) else "n/a"


def _p(x) -> str:
    return f"{x:.2g}" if math.isfinite(x) else "n/a"


def _tau(x) -> str:
    # A threshold of -inf never stops.
    return f"{x:.3f}" if math.isfinite(x) else "-inf (never stop)"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def signal_axis_label(signal: str, prefix: str = "step-1 mean") -> str:
    """An axis label with the unit: ``"step-1 mean top-20 entropy (bits)"``; a negated confidence
    says so (``"step-1 mean −deepconf_confidence (nats)"``)."""
    base = signal_of(signal)
    if base == "topk_entropy":
        name = f"top-{signal.split('@', 1)[1]} entropy"
    elif base == "full_entropy":
        name = "full-vocabulary entropy"
    else:
        name = f"\u2212{signal}"
    return f"{prefix} {name} ({SIGNAL_UNITS[base]})".strip()


def _ci(sep: Separation) -> str:
    if not math.isfinite(sep.auroc):
        return "n/a"
    return f"{sep.auroc:.3f} [{_num(sep.auroc_low)}, {_num(sep.auroc_high)}]"


def _sep_row(sep: Separation) -> list[str]:
    return [str(sep.n_c), str(sep.n_i), _num(sep.mu_c), _num(sep.mu_i), _num(sep.cohens_d),
            _num(sep.welch_t, 2), _p(sep.welch_p), _p(sep.mannwhitney_p), _ci(sep)]


SEP_HEADER = ["n correct", "n incorrect", "mean correct", "mean incorrect", "Cohen's d", "Welch t",
              "Welch p", "Mann-Whitney p", "AUROC [95% CI]"]


# --------------------------------------------------------------------------------------------
# The report of one run


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, signal: str = DEFAULT_COLUMN,
                 segment: str = "all") -> Path:
    """Write the calibration report of a run; returns the path of ``report.md``.

    Args:
        run_dir: a run directory (``docs/FORMAT.md``) with every step recorded (``policy="all"``).
        out_dir: where to write; default ``RUN_DIR/report``.
        signal, segment: the step-1 signal to calibrate (higher = more uncertain after
            orientation; see :func:`tje_hf.analysis.calibration.step_values`).

    Writes ``report.md`` (every table of :func:`tje_hf.analysis.evaluation.evaluate_run`),
    ``summary.json`` (its ``to_json()``, with the model, task and config hash) and, with matplotlib,
    ``hist.png``, ``sweep.png``, ``few_shot.png``, ``topk.png``, ``persistence.png``, ``budget.png``.
    """
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    if not records:
        raise ValueError(f"{run_dir} holds no records")
    cfg = load_config(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    res = evaluate_run(records, signal, segment)
    meta = _run_meta(run_dir, cfg)
    summary = {**meta, **res.to_json()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))

    values, correct, _ = step_values(records, signal, segment, 1)
    figures, skipped = _figures(res, values, correct, out)
    (out / "report.md").write_text(_report_md(meta, res, figures, skipped))
    return out / "report.md"


def _run_meta(run_dir: Path, cfg: dict) -> dict:
    c = cfg.get("config", {})
    return {"run_dir": str(run_dir), "model": c.get("model", {}).get("name_or_path", "unknown"),
            "task": c.get("task", {}).get("name", "unknown"), "config_hash": cfg.get("config_hash")}


def _report_md(meta: dict, res: RunEvaluation, figures: dict[str, str], skipped: str | None) -> str:
    cal, n = res.calibration, res.n_steps
    unit = SIGNAL_UNITS[signal_of(res.signal)]
    direction = ("" if HIGHER_IS_UNCERTAIN[signal_of(res.signal)] else
                 " The signal is a confidence (higher = more confident): it is **negated** here, so that "
                 "higher = more uncertain and every threshold is on the negated value.")
    parts = [
        f"# Calibration report: {meta['model']} on {meta['task']}",
        "",
        (f"Run `{meta['run_dir']}` (config hash `{meta['config_hash']}`). Signal `{res.signal}` ({unit}, "
        f"higher = more uncertain), segment `{res.segment}`, {res.n_problems} problems, N = {n} steps. "
        f"The gate stops after step 1 when H <= tau. Unparseable answers count as incorrect."
        f"{direction}"),
    ]
    if res.n_excluded:
        parts.append(f"\n{res.n_excluded} problems have no step-1 value (NaN): left out of calibration and "
                     "separation; the gate never stops them.")
    parts += ["", "## Accuracy", "",
              _table(["step-1 accuracy", f"{n}-step accuracy"],
                     [[_pct(res.step1_accuracy), _pct(res.n_step_accuracy)]])]

    parts += ["", "## Calibration on all problems", "",
              f"Means and sample sds (ddof = 1) of the step-1 value ({unit}); Cohen's d with the pooled sd.", "",
              _table(["mu_c", "sigma_c", "n_c", "mu_i", "sigma_i", "n_i", "Cohen's d"],
                     [[_num(cal.mu_c), _num(cal.sigma_c), cal.n_c, _num(cal.mu_i),
                       _num(cal.sigma_i), cal.n_i, _num(cal.cohens_d)]])]
    if cal.fallbacks:
        parts += ["", "Fallbacks used:", ""] + [f"- `{k}`: {v}" for k, v in cal.fallbacks.items()]

    rows = [_gate_row(f"tau_{m} ({TAU_NAMES[m]})", res.gate[m]) for m in METHODS]
    rows += [_gate_row("oracle: most savings, no loss", res.oracle.no_loss),
             _gate_row("oracle: best Thresh Acc", res.oracle.best_acc)]
    parts += ["", "## The gate", "",
              (f"Thresholds from the calibration above, applied to the same problems (**in-sample**; the held-out "
              f"numbers are under *Few-shot calibration*). Thresh Acc: the step-1 answer where H <= tau, the "
              f"step-{n} answer elsewhere. Savings: 1 - gated tokens / {n}-step tokens (generated tokens). "
              f"The oracle rows choose tau with the answers (headroom, not a method)."), "",
              _table(["threshold", f"tau ({unit})", "stopped", "acc. of stopped", "Thresh Acc",
                      f"vs {n}-step", "token savings"], rows)]
    parts += _figure_md(figures, "hist", "sweep")

    parts += ["", "## Separation of correct and incorrect (step 1)", "",
              ("Welch: two-sided t-test of incorrect vs correct. AUROC: the value as a predictor of an **incorrect** "
              "answer (> 0.5 = higher values on wrong answers), with a stratified bootstrap 95% CI "
              f"({res.separation.n_boot} resamples)."), "",
              _table(SEP_HEADER, [_sep_row(res.separation)])]

    parts += ["", "## Few-shot calibration (held out)", ""]
    if res.few_shot:
        fs_rows = [_few_shot_row(size, m) for size in res.few_shot for m in METHODS]
        single = ", ".join(f"n = {s.n}: {s.n_all_correct} all correct, {s.n_all_incorrect} all incorrect"
                           for s in res.few_shot)
        draws = res.few_shot[0].n_draws
        parts += [(f"{draws} seeded random draws of n calibration problems each; thresholds from the draw, "
                  f"evaluated on every other problem. Mean ± sd over the draws (tau over the draws where it is "
                  f"finite; a draw with no correct example never stops). Draws with a single class: {single}."), "",
                  _table(["n", "held out", "threshold", f"tau ({unit})", "finite tau", "stopped", "Thresh Acc",
                          f"vs {n}-step", "token savings", "draws without loss", "fallbacks"], fs_rows)]
    else:
        parts.append("Too few problems with a step-1 value for the protocol (it needs at least 6).")
    parts += _figure_md(figures, "few_shot")

    parts += ["", "## Top-k ablation (step 1)", ""]
    if res.topk_ablation:
        parts.append(_table(["k"] + SEP_HEADER,
                            [[k] + _sep_row(s) for k, s in res.topk_ablation.items()]))
    else:
        parts.append(f"No `topk_entropy@K` columns recorded in segment `{res.segment}`.")
    parts += _figure_md(figures, "topk")

    parts += ["", "## Persistence: separation at every step", "",
              "Step-k value against step-k correctness.", "",
              _table(["step"] + SEP_HEADER, [[k + 1] + _sep_row(s) for k, s in enumerate(res.persistence)])]
    parts += _figure_md(figures, "persistence")

    b = res.budget
    q = res.n_problems
    parts += ["", "## Token budget (equal number of calls)", "",
              (f"Budget alpha calls (each at most beta = {b.beta} tokens, the longest recorded call). Uniform: "
              f"every problem gets min({n}, floor(alpha / {q})) steps. Gated (in-sample thresholds): problems with "
              "H <= tau get one call; the calls saved go to the others, most uncertain first, each up to all "
              f"{n} steps. Accuracy of each problem's last answer."), "",
              _table(["alpha (calls)", "calls / problem", "uniform"] + [f"gated tau_{m}" for m in METHODS],
                     [[a, f"{a / q:.2f}", _pct(b.uniform[j].accuracy)]
                      + [_pct(b.gated[m][j].accuracy) for m in METHODS]
                      for j, a in enumerate(b.budgets)])]
    parts += _figure_md(figures, "budget")

    if skipped:
        parts += ["", f"_Plots skipped: {skipped}._"]
    return "\n".join(parts) + "\n"


def _gate_row(name: str, g: GateResult) -> list[str]:
    return [name, _tau(g.tau), _pct(g.fraction_stopped), _pct(g.stopped_acc), _pct(g.thresh_acc),
            _pp(g.acc_diff), _pct(g.savings)]


def _few_shot_row(size: FewShotSize, m: str) -> list:
    f = size.methods[m]
    return [size.n, size.n_eval, f"tau_{m}",
            f"{_num(f.mean_tau)} ± {_num(f.std_tau)}", f"{f.n_finite_tau}/{size.n_draws}",
            f"{_pct(f.mean_stopped)} ± {_pct(f.std_stopped)}",
            f"{_pct(f.mean_thresh_acc)} ± {_pct(f.std_thresh_acc)}",
            f"{_pp(f.mean_acc_diff)} ± {_pp(f.std_acc_diff).lstrip('+')}",
            f"{_pct(f.mean_savings)} ± {_pct(f.std_savings)}",
            _pct(f.no_loss_fraction, 0), f.n_fallback]


def _figure_md(figures: dict[str, str], *names: str) -> list[str]:
    out = []
    for name in names:
        if name in figures:
            out += ["", f"![{figures[name]}]({name}.png)"]
    return out


# --------------------------------------------------------------------------------------------
# Figures


def _mpl():
    """``(matplotlib, Figure, FigureCanvasAgg)``, or ``None`` without matplotlib."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return matplotlib, Figure, FigureCanvasAgg


def _figures(res: RunEvaluation, values: np.ndarray, correct: np.ndarray, out: Path) -> tuple[dict[str, str], str | None]:
    """Draw every figure into ``out``; ``({name: caption}, None)``, or ``({}, why)`` when skipped."""
    mpl = _mpl()
    if mpl is None:
        return {}, "matplotlib is not installed (pip install 'tje-hf[plots]')"
    matplotlib, Figure, Canvas = mpl
    drawn = {}
    with matplotlib.rc_context(RC):
        for name, draw in (("hist", _plot_hist), ("sweep", _plot_sweep), ("few_shot", _plot_few_shot),
                           ("topk", _plot_topk), ("persistence", _plot_persistence), ("budget", _plot_budget)):
            fig = Figure(figsize=(11, 4.6) if name in ("few_shot", "topk", "persistence")
                         else (10.5, 5) if name in ("hist", "budget") else (8, 5))
            Canvas(fig)
            caption = draw(fig, res, values, correct)
            if caption is None:
                continue
            fig.tight_layout()
            fig.savefig(out / f"{name}.png")
            drawn[name] = caption
    return drawn, None


def _tex_tau(method: str) -> str:
    return rf"$\tau_{{\mathrm{{{method}}}}}$"


def _plot_hist(fig, res: RunEvaluation, values, correct) -> str:
    ax = fig.subplots()
    ok = np.isfinite(values)
    v, c = values[ok], correct[ok]
    bins = np.histogram_bin_edges(v, bins=min(30, max(8, len(v) // 4)))
    ax.hist(v[c], bins=bins, alpha=0.55, color="#2b8cbe", label=f"correct (n = {int(c.sum())})")
    ax.hist(v[~c], bins=bins, alpha=0.55, color="#e6550d",
            label=f"incorrect or unparseable (n = {int((~c).sum())})")
    for m, tau in res.calibration.thresholds().items():
        if not math.isfinite(tau):
            continue
        color, ls = METHOD_STYLE[m]
        ax.axvline(tau, color=color, ls=ls, lw=2.2, label=f"{_tex_tau(m)} = {tau:.3f}")
    ax.set_xlabel(signal_axis_label(res.signal))
    ax.set_ylabel("problems")
    ax.set_title("Step-1 signal by correctness, with the four thresholds")
    # Outside the axes: inside, it hides the bars of one class or the other.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return "step-1 histograms with the thresholds"


def _plot_sweep(fig, res: RunEvaluation, values, correct) -> str:
    ax = fig.subplots()
    x = [100 * g.savings for g in res.sweep]
    y = [100 * g.thresh_acc for g in res.sweep]
    ax.plot(x, y, "-", color="0.35", lw=1.5, marker="o", ms=3, label="gate at every threshold")
    ax.axhline(100 * res.n_step_accuracy, color="black", ls="--", lw=1.2,
               label=f"{res.n_steps}-step accuracy")
    ax.axhline(100 * res.step1_accuracy, color="0.5", ls=":", lw=1.2, label="step-1 accuracy")
    # Decreasing sizes, drawn in order: thresholds that make the same decisions stay visible.
    for m, (marker, size) in zip(METHODS, (("o", 15), ("s", 11), ("D", 8), ("^", 7)), strict=True):
        g = res.gate[m]
        color, _ = METHOD_STYLE[m]
        ax.plot(100 * g.savings, 100 * g.thresh_acc, marker, ms=size, color=color, mec="black",
                label=_tex_tau(m))
    g = res.oracle.no_loss
    ax.plot(100 * g.savings, 100 * g.thresh_acc, "*", ms=16, color="gold", mec="black",
            label="oracle: most savings, no loss")
    ax.set_xlabel("token savings (% of generated tokens)")
    ax.set_ylabel("Thresh Acc (%)")
    ax.set_title(r"Accuracy against savings as $\tau$ sweeps (in-sample)")
    ax.legend(loc="lower left", framealpha=0.9)
    ax.grid(alpha=0.3)
    return "Thresh Acc against token savings"


def _plot_few_shot(fig, res: RunEvaluation, values, correct) -> str | None:
    fs = res.few_shot
    if not fs:
        return None
    ax1, ax2 = fig.subplots(1, 2)
    ns = np.array([s.n for s in fs], dtype=float)
    unit = SIGNAL_UNITS[signal_of(res.signal)]
    for j, m in enumerate(METHODS):
        color, ls = METHOD_STYLE[m]
        dx = ns * (1 + 0.03 * (j - 1.5))  # a small offset so that error bars do not hide each other
        mt = [_or(s.methods[m].mean_tau, np.nan) for s in fs]
        st = [_or(s.methods[m].std_tau, 0) for s in fs]
        ax1.errorbar(dx, mt, yerr=st, color=color, ls=ls, marker="o", capsize=4, lw=1.8, label=_tex_tau(m))
        ms_ = [100 * s.methods[m].mean_savings for s in fs]
        ss_ = [100 * s.methods[m].std_savings for s in fs]
        ax2.errorbar(dx, ms_, yerr=ss_, color=color, ls=ls, marker="o", capsize=4, lw=1.8, label=_tex_tau(m))
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlim(ns.min() / 1.4, ns.max() * 1.4)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(int(n)) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("calibration problems n")
        ax.grid(alpha=0.3)
    ax1.set_ylabel(rf"$\tau$ ({unit}), mean ± sd over draws")
    ax1.set_title("Threshold stability")
    ax2.set_ylabel("held-out token savings (%)")
    ax2.set_title("Held-out savings")
    ax1.legend(framealpha=0.9)
    return "few-shot stability"


def _or(x: float, default: float) -> float:
    """``x``, or ``default`` where it is not finite (undefined)."""
    return x if math.isfinite(x) else default


def _auroc_arrays(seps: list[Separation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC and its CI bounds per separation, NaN where undefined."""
    return tuple(np.array([_or(getattr(s, name), np.nan) for s in seps])  # type: ignore[return-value]
                 for name in ("auroc", "auroc_low", "auroc_high"))


def _plot_seps(fig, xs, seps: list[Separation], xlabel, title_prefix) -> None:
    ax1, ax2 = fig.subplots(1, 2)
    auc, lo, hi = _auroc_arrays(seps)
    # No legend (it would cover error bars): the axis label names the CI, a text names the chance line.
    ax1.errorbar(xs, auc, yerr=[np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)], marker="o", capsize=5,
                 lw=2, color="#1f77b4")
    ax1.axhline(0.5, color="0.4", ls="--", lw=1.2)
    ax1.text(0.99, 0.5, "chance", transform=ax1.get_yaxis_transform(), ha="right", va="bottom", color="0.3")
    ax1.set_ylim(min(0.3, np.nanmin(lo) - 0.05) if np.isfinite(lo).any() else 0.3, 1.03)
    ax1.set_ylabel("AUROC for an incorrect answer\n(95% bootstrap CI)")
    ax1.set_title(f"{title_prefix}: AUROC")
    d = [_or(s.cohens_d, np.nan) for s in seps]
    ax2.plot(xs, d, marker="s", lw=2, color="#d62728")
    ax2.axhline(0, color="0.4", ls="--", lw=1.2)
    ax2.set_ylabel("Cohen's d (incorrect − correct)")
    ax2.set_title(f"{title_prefix}: effect size")
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)


def _plot_topk(fig, res: RunEvaluation, values, correct) -> str | None:
    ab = res.topk_ablation
    if not ab:
        return None
    _plot_seps(fig, list(ab), list(ab.values()), "k of the top-k entropy", "Top-k ablation (step 1)")
    return "top-k ablation"


def _plot_persistence(fig, res: RunEvaluation, values, correct) -> str:
    steps = list(range(1, res.n_steps + 1))
    _plot_seps(fig, steps, list(res.persistence), "refinement step", "Per step")
    return "persistence over steps"


def _plot_budget(fig, res: RunEvaluation, values, correct) -> str:
    ax = fig.subplots()
    b = res.budget
    x = np.array(b.budgets) / res.n_problems
    ax.plot(x, [100 * p.accuracy for p in b.uniform], color="black", lw=2, marker="o",
            label="uniform schedule")
    for m in METHODS:
        color, ls = METHOD_STYLE[m]
        ax.plot(x, [100 * p.accuracy for p in b.gated[m]], color=color, ls=ls, lw=2, marker=".",
                label=f"gated, {_tex_tau(m)}")
    ax.set_xlabel("budget (calls per problem)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy at equal budget")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    return "accuracy against budget"


# --------------------------------------------------------------------------------------------
# Several runs


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, signal: str = DEFAULT_COLUMN,
                 segment: str = "all") -> Path:
    """Several runs' step-1 calibration side by side; returns the path of ``compare.md``.

    For each run: model and task (from its ``config.json``), accuracies, Cohen's d, Welch p, AUROC
    with its bootstrap 95% CI, the oracle's savings at no accuracy loss, and the in-sample
    ``tau_*`` with the most savings among those that lose no accuracy (none when every one loses
    some; ties go to the higher Thresh Acc, then to the earlier method of ``METHODS``). Writes
    ``compare.md``, ``compare.json`` and, with matplotlib, ``compare.png`` (AUROC with CI per run)
    into ``out_dir``.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory, got none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for rd in run_dirs:
        rd = Path(rd)
        records = read_records(rd)
        if not records:
            raise ValueError(f"{rd} holds no records")
        res = evaluate_run(records, signal, segment)
        runs.append(_Compared(_run_meta(rd, load_config(rd)), res, _best_no_loss(res)))
    (out / "compare.json").write_text(json.dumps({"signal": signal, "segment": segment,
                                                  "runs": [r.to_json() for r in runs]}, indent=1, allow_nan=False))
    drawn, skipped = _plot_compare(runs, out)
    table = _table(
        ["run", "model", "task", "problems", "step-1 acc.", "N-step acc.", "Cohen's d", "Welch p",
         "AUROC [95% CI]", "oracle savings, no loss", "best tau_* without loss"], [r.md_row() for r in runs])
    md = [f"# Comparison of {len(runs)} runs", "",
          (f"Signal `{signal}` ({SIGNAL_UNITS[signal_of(signal)]}), segment `{segment}`, step 1. AUROC: the signal as a "
          "predictor of an incorrect answer (0.5 = no separation). Savings are in-sample (thresholds from all "
          "of a run's problems); the oracle chooses tau with the answers."), "", table]
    if drawn:
        md += ["", "![AUROC per run](compare.png)"]
    if skipped:
        md += ["", f"_Plot skipped: {skipped}._"]
    path = out / "compare.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _best_no_loss(res: RunEvaluation) -> str | None:
    """The in-sample ``tau_*`` with the most savings among those with ``acc_diff >= 0`` (None: every one
    loses accuracy). Ties go to the higher Thresh Acc, then to the method listed first in METHODS."""
    no_loss = [m for m in METHODS if res.gate[m].acc_diff >= 0]
    return max(no_loss, key=lambda m: (res.gate[m].savings, res.gate[m].thresh_acc, -METHODS.index(m)),
               default=None)


@dataclass(frozen=True)
class _Compared:
    """One run of a comparison: its metadata (:func:`_run_meta`), evaluation and best no-loss method."""

    meta: dict
    res: RunEvaluation
    best: str | None

    def to_json(self) -> dict:
        """The run's entry of ``compare.json``."""
        js = self.res.to_json()
        return {**self.meta, "n_problems": js["n_problems"], "n_steps": js["n_steps"],
                "step1_accuracy": js["step1_accuracy"], "n_step_accuracy": js["n_step_accuracy"],
                "separation": js["separation"], "oracle_no_loss": js["oracle"]["no_loss"],
                "best_no_loss_method": self.best,
                "best_no_loss_savings": None if self.best is None else js["gate"][self.best]["savings"],
                "gate": js["gate"]}

    def md_row(self) -> list:
        """The run's row of the ``compare.md`` table."""
        res, sep, oracle = self.res, self.res.separation, self.res.oracle.no_loss
        return [Path(self.meta["run_dir"]).name, f"`{self.meta['model']}`", self.meta["task"], res.n_problems,
                _pct(res.step1_accuracy), _pct(res.n_step_accuracy), _num(sep.cohens_d), _p(sep.welch_p), _ci(sep),
                f"{_pct(oracle.savings)} (tau {_tau(oracle.tau)})",
                "none" if self.best is None else f"tau_{self.best}: {_pct(res.gate[self.best].savings)}"]


def _plot_compare(runs: list[_Compared], out: Path) -> tuple[bool, str | None]:
    mpl = _mpl()
    if mpl is None:
        return False, "matplotlib is not installed (pip install 'tje-hf[plots]')"
    matplotlib, Figure, Canvas = mpl
    labels = [f"{r.meta['model']}\n{r.meta['task']}" for r in runs]
    auc, lo, hi = _auroc_arrays([r.res.separation for r in runs])
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(8, 1.6 + 0.75 * len(runs)))
        Canvas(fig)
        ax = fig.subplots()
        y = np.arange(len(runs))[::-1]
        ax.errorbar(auc, y, xerr=[np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)], fmt="o", ms=8, capsize=6,
                    lw=2, color="#1f77b4")
        ax.axvline(0.5, color="0.4", ls="--", lw=1.2)
        ax.text(0.5, 1.0, " chance", transform=ax.get_xaxis_transform(), ha="left", va="top", color="0.3")
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_ylim(-0.6, len(runs) - 0.4)
        finite_lo = lo[np.isfinite(lo)]
        ax.set_xlim(min(0.3, finite_lo.min() - 0.05) if len(finite_lo) else 0.3, 1.03)
        ax.set_xlabel("step-1 AUROC for an incorrect answer (95% bootstrap CI)")
        ax.set_title("Separation of correct and incorrect answers per run")
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        fig.savefig(out / "compare.png")
    return True, None
