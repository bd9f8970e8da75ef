"""The report's and the comparison's PNG figures (matplotlib, optional).

matplotlib is imported inside :func:`mpl`; figures are drawn on ``matplotlib.figure.Figure`` with the
Agg canvas (no pyplot, so no global backend is changed). Every threshold method is drawn in its
colour of :func:`tje_hf.analysis.style.palette` (the viewer shows the same colours); a statistic
from fewer than 5 examples in a class is drawn hollow and labelled "n too small"; legends sit
outside the axes, where they cover no data.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..columns import unit_of
from .evaluation import RunEvaluation, Separation
from .fmt import SMALL_N, signal_axis_label
from .gate_run import GateRunEvaluation
from .style import (
    CORRECT_COLOR,
    INCORRECT_COLOR,
    RUN_TAU_COLOR,
    UNIFORM_CAP_COLOR,
    UNIFORM_SPEND_COLOR,
    is_reconstruction,
    linestyles,
    palette,
)

RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
      "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.dpi": 110, "savefig.dpi": 130}
NO_MPL = "matplotlib is not installed (pip install 'tje-hf[plots]')"
_MARKERS = (("o", 15), ("s", 11), ("D", 8), ("^", 7), ("v", 7), ("P", 7), ("X", 7))


def mpl():
    """``(matplotlib, Figure, FigureCanvasAgg)``, or ``None`` without matplotlib."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return matplotlib, Figure, FigureCanvasAgg


def _legend_outside(ax, **kw) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kw)


def tex_tau(method: str) -> str:
    """``τ_mean``; a reconstruction says so: ``τ_universal (reconstruction)``."""
    tex = rf"$\tau_{{\mathrm{{{method}}}}}$"
    return f"{tex} (reconstruction)" if is_reconstruction(method) else tex


def _or(x: float, default: float) -> float:
    """``x``, or ``default`` where it is not finite (undefined)."""
    return x if x is not None and math.isfinite(x) else default


def _save(matplotlib, Figure, Canvas, path: Path, size, draw) -> bool:
    """Draw ``draw(fig)`` into a new figure and save it to ``path``; False when ``draw`` returns False."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=size)
        Canvas(fig)
        if draw(fig) is False:
            return False
        fig.tight_layout()
        fig.savefig(path)
    return True


# --------------------------------------------------------------------------------------------
# One policy="all" run


def run_figures(res: RunEvaluation, values: np.ndarray, correct: np.ndarray, out: Path
                ) -> tuple[dict[str, str], str | None]:
    """Draw every figure of a run into ``out``; ``({name: caption}, None)``, or ``({}, why)`` when skipped."""
    m = mpl()
    if m is None:
        return {}, NO_MPL
    captions = {"hist": "step-1 histograms with the thresholds", "sweep": "Thresh Acc against token savings",
                "few_shot": "few-shot stability", "topk": "top-k ablation", "persistence": "persistence over steps",
                "budget": "accuracy against budget and against calls spent"}
    draws = {"hist": lambda f: _plot_hist(f, res, values, correct), "sweep": lambda f: _plot_sweep(f, res),
             "few_shot": lambda f: _plot_few_shot(f, res), "topk": lambda f: _plot_topk(f, res),
             "persistence": lambda f: _plot_persistence(f, res), "budget": lambda f: _plot_budget(f, res)}
    sizes = {"hist": (10.5, 5), "sweep": (10.5, 5), "few_shot": (12, 4.8), "topk": (11, 4.8),
             "persistence": (11, 4.8), "budget": (13, 5)}
    drawn = {}
    for name, draw in draws.items():
        if _save(*m, out / f"{name}.png", sizes[name], draw):
            drawn[name] = captions[name]
    return drawn, None


def _hist_bars(ax, values, correct) -> np.ndarray:
    ok = np.isfinite(values)
    v, c = values[ok], correct[ok]
    bins = np.histogram_bin_edges(v, bins=min(30, max(8, len(v) // 4))) if len(v) else 10
    from matplotlib.ticker import MaxNLocator

    ax.hist(v[c], bins=bins, alpha=0.9, color=CORRECT_COLOR, edgecolor="white",
            label=f"correct (n = {int(c.sum())})")
    ax.hist(v[~c], bins=bins, alpha=0.6, color=INCORRECT_COLOR, edgecolor="white", hatch="//",
            label=f"incorrect or unparseable (n = {int((~c).sum())})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return v


def _plot_hist(fig, res: RunEvaluation, values, correct) -> None:
    ax = fig.subplots()
    _hist_bars(ax, values, correct)
    taus = res.calibration.thresholds()
    pal, ls = palette(taus), linestyles(taus)
    for m, t in taus.items():
        if math.isfinite(t):
            ax.axvline(t, color=pal[m], ls=ls[m], lw=2.4, label=f"{tex_tau(m)} = {t:.3f}")
    ax.set_xlabel(signal_axis_label(res.signal))
    ax.set_ylabel("problems")
    ax.set_title(f"Step-1 signal by correctness, with the thresholds (in-sample, n = {res.n_problems})")
    _legend_outside(ax)  # inside, it hides the bars of one class or the other


def _plot_sweep(fig, res: RunEvaluation) -> None:
    ax = fig.subplots()
    x = [100 * g.savings for g in res.sweep]
    y = [100 * g.thresh_acc for g in res.sweep]
    ax.plot(x, y, "-", color="0.35", lw=1.5, marker="o", ms=3, label="gate at every threshold")
    ax.axhline(100 * res.n_step_accuracy, color="black", ls="--", lw=1.2, label=f"{res.n_steps}-step accuracy")
    ax.axhline(100 * res.step1_accuracy, color="0.5", ls=":", lw=1.2, label="step-1 accuracy")
    pal = palette(res.gate)
    # Decreasing sizes, drawn in order: thresholds that make the same decisions stay visible.
    for j, (m, g) in enumerate(res.gate.items()):
        marker, size = _MARKERS[j % len(_MARKERS)]
        ax.plot(100 * g.savings, 100 * g.thresh_acc, marker, ms=size, color=pal[m], mec="black", label=tex_tau(m),
                ls="none")
    g = res.oracle.no_loss
    ax.plot(100 * g.savings, 100 * g.thresh_acc, "*", ms=16, color="gold", mec="black", ls="none",
            label="oracle: most savings, no loss")
    ax.set_xlabel("token savings (% of generated tokens)")
    ax.set_ylabel("Thresh Acc (%)")
    ax.set_title(rf"Accuracy against savings as $\tau$ sweeps (in-sample, n = {res.n_problems})")
    _legend_outside(ax, framealpha=0.9)  # outside: inside it covered the start of the curve
    ax.grid(alpha=0.3)


def _plot_few_shot(fig, res: RunEvaluation) -> bool:
    fs = res.few_shot
    if not fs:
        return False
    ax1, ax2 = fig.subplots(1, 2)
    ns = np.array([s.n for s in fs], dtype=float)
    unit = unit_of(res.signal)
    names = list(fs[0].methods)
    pal, ls = palette(names), linestyles(names)
    for j, m in enumerate(names):
        dx = ns * (1 + 0.03 * (j - (len(names) - 1) / 2))  # a small offset: error bars do not hide each other
        mt = [_or(s.methods[m].mean_tau, np.nan) for s in fs]
        st = [_or(s.methods[m].std_tau, 0) for s in fs]
        ax1.errorbar(dx, mt, yerr=st, color=pal[m], ls=ls[m], marker="o", capsize=4, lw=1.8, label=tex_tau(m))
        ms_ = [100 * s.methods[m].mean_savings for s in fs]
        ss_ = [100 * s.methods[m].std_savings for s in fs]
        ax2.errorbar(dx, ms_, yerr=ss_, color=pal[m], ls=ls[m], marker="o", capsize=4, lw=1.8, label=tex_tau(m))
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlim(ns.min() / 1.4, ns.max() * 1.4)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(int(n)) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel(f"calibration problems n (of {res.n_problems})")
        ax.grid(alpha=0.3)
    ax1.set_ylabel(rf"$\tau$ ({unit}), mean ± sd over draws")
    ax1.set_title(f"Threshold stability ({fs[0].n_draws} draws)")
    ax2.set_ylabel("held-out token savings (%)")
    ax2.set_title("Held-out savings")
    _legend_outside(ax2, framealpha=0.9)
    return True


def _auroc_arrays(seps: list[Separation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC and its CI bounds per separation, NaN where undefined."""
    return tuple(np.array([_or(getattr(s, name), np.nan) for s in seps])  # type: ignore[return-value]
                 for name in ("auroc", "auroc_low", "auroc_high"))


def _n_label(sep: Separation) -> str:
    return f"n={sep.n_c}/{sep.n_i}" + (f"\n{SMALL_N}" if sep.warning else "")


def _plot_seps(fig, xs, seps: list[Separation], xlabel, title_prefix) -> None:
    ax1, ax2 = fig.subplots(1, 2)
    auc, lo, hi = _auroc_arrays(seps)
    small = np.array([s.warning is not None for s in seps])
    xs_a = np.asarray(xs, dtype=float)
    # No legend (it would cover error bars): the axis label names the CI, a text names the chance line.
    ax1.errorbar(xs_a, auc, yerr=[np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)], fmt="none", capsize=5, lw=2,
                 color="#1f77b4")
    ax1.plot(xs_a[~small], auc[~small], "o", color="#1f77b4", ms=7)
    ax1.plot(xs_a[small], auc[small], "o", mfc="white", mec="#1f77b4", mew=2, ms=7)  # hollow: n too small
    ax1.axhline(0.5, color="0.4", ls="--", lw=1.2)  # chance: named in the axis label, a text would hide points
    ax1.set_ylim(min(0.3, np.nanmin(lo) - 0.05) if np.isfinite(lo).any() else 0.3, 1.15)
    ax1.set_ylabel("AUROC for an incorrect answer\n(95% bootstrap CI; dashed: chance)")
    ax1.set_title(f"{title_prefix}: AUROC")
    d = np.array([_or(s.cohens_d, np.nan) for s in seps])
    ax2.plot(xs_a, d, "-", lw=2, color="#d62728")
    ax2.plot(xs_a[~small], d[~small], "s", color="#d62728", ms=7)
    ax2.plot(xs_a[small], d[small], "s", mfc="white", mec="#d62728", mew=2, ms=7)
    ax2.axhline(0, color="0.4", ls="--", lw=1.2)
    ax2.set_ylabel("Cohen's d (incorrect − correct)")
    ax2.set_title(f"{title_prefix}: effect size")
    tops = np.where(np.isfinite(hi), np.fmax(hi, auc), auc)  # above the error bar, not on it
    for ax, ys in ((ax1, tops), (ax2, d)):
        for x, y, s in zip(xs_a, ys, seps, strict=True):
            if np.isfinite(y):
                ax.annotate(_n_label(s), (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8,
                            color="#b35806" if s.warning else "0.3")
        ax.set_xticks(xs_a)
        ax.set_xlabel(xlabel + "\n(n = correct/incorrect; hollow marker: n too small)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.12)
    ax2.margins(y=0.2)


def _plot_topk(fig, res: RunEvaluation) -> bool:
    ab = res.topk_ablation
    if not ab:
        return False
    _plot_seps(fig, list(ab), list(ab.values()), "k of the top-k entropy", "Top-k ablation (step 1)")
    return True


def _plot_persistence(fig, res: RunEvaluation) -> None:
    steps = list(range(1, res.n_steps + 1))
    _plot_seps(fig, steps, list(res.persistence), "refinement step", "Per step")


def _plot_budget(fig, res: RunEvaluation) -> None:
    ax1, ax2 = fig.subplots(1, 2)
    b, q = res.budget, res.n_problems
    x = np.array(b.budgets) / q
    pal, ls = palette(b.gated), linestyles(b.gated)
    lines = [("uniform, equal cap", b.uniform, UNIFORM_CAP_COLOR, "-", "o"),
             ("uniform, equal spend", b.uniform_spend, UNIFORM_SPEND_COLOR, (0, (4, 2)), "s")]
    lines += [(f"gated, {tex_tau(m)}", pts, pal[m], ls[m], ".") for m, pts in b.gated.items()]
    for label, pts, color, style, marker in lines:
        acc = [100 * p.accuracy for p in pts]
        ax1.plot(x, acc, color=color, ls=style, lw=2, marker=marker, label=label)
        ax2.plot([p.calls / q for p in pts], acc, color=color, ls=style, lw=2, marker=marker, label=label)
    ax1.set_xlabel("budget alpha (calls per problem)")
    ax1.set_title(f"Accuracy at budget alpha (n = {q} problems)")
    ax2.set_xlabel("calls actually spent (per problem)")
    ax2.set_title("Accuracy against calls spent")
    for ax in (ax1, ax2):
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_outside(ax2)


# --------------------------------------------------------------------------------------------
# One policy="gate" run


def gate_run_figures(res: GateRunEvaluation, values: np.ndarray, correct: np.ndarray, out: Path
                     ) -> tuple[dict[str, str], str | None]:
    """The gate run's step-1 histogram with the tau it used; ``({name: caption}, why skipped or None)``."""
    m = mpl()
    if m is None:
        return {}, NO_MPL

    def draw(fig):
        ax = fig.subplots()
        _hist_bars(ax, values, correct)
        st = res.settings
        ax.axvline(st.tau, color=RUN_TAU_COLOR, lw=2.4,
                   label=rf"the run's $\tau$ = {st.tau:.3f} ({res.n_stopped} of {res.n_problems} stopped)")
        ax.set_xlabel(f"{signal_axis_label(st.column)}, segment {st.segment}")
        ax.set_ylabel("problems")
        ax.set_title(f"Step-1 signal by correctness, with the run's threshold (n = {res.n_problems})")
        _legend_outside(ax)

    _save(*m, out / "hist.png", (10.5, 5), draw)
    return {"hist": "step-1 histograms with the run's threshold"}, None


# --------------------------------------------------------------------------------------------
# Several runs


def compare_figure(labels: list[str], seps: list[Separation], out: Path) -> tuple[bool, str | None]:
    """``compare.png``: step-1 AUROC with its CI per run, each row labelled by run, n beside each point."""
    m = mpl()
    if m is None:
        return False, NO_MPL
    auc, lo, hi = _auroc_arrays(seps)

    def draw(fig):
        ax = fig.subplots()
        y = np.arange(len(seps))[::-1]
        small = np.array([s.warning is not None for s in seps])
        ax.errorbar(auc, y, xerr=[np.nan_to_num(auc - lo), np.nan_to_num(hi - auc)], fmt="none", capsize=6, lw=2,
                    color="#1f77b4")
        ax.plot(auc[~small], y[~small], "o", ms=8, color="#1f77b4")
        ax.plot(auc[small], y[small], "o", ms=8, mfc="white", mec="#1f77b4", mew=2)
        for yy, a, h, s in zip(y, auc, hi, seps, strict=True):
            text = f"n = {s.n_c} correct / {s.n_i} incorrect" + (f"  {SMALL_N}" if s.warning else "")
            xpos = _or(h, _or(a, 0.5))
            ax.annotate(text, (xpos, yy), textcoords="offset points", xytext=(8, 0), va="center", fontsize=9,
                        color="#b35806" if s.warning else "0.25")
        ax.axvline(0.5, color="0.4", ls="--", lw=1.2)
        ax.text(0.5, 1.0, " chance", transform=ax.get_xaxis_transform(), ha="left", va="top", color="0.3")
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_ylim(-0.6, len(seps) - 0.4)
        finite_lo = lo[np.isfinite(lo)]
        ax.set_xlim(min(0.3, finite_lo.min() - 0.05) if len(finite_lo) else 0.3, 1.6)
        ax.set_xticks([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
        ax.set_xlabel("step-1 AUROC for an incorrect answer (95% bootstrap CI); hollow: n too small")
        ax.set_title("Separation of correct and incorrect answers per run")
        ax.grid(alpha=0.3, axis="x")

    _save(*m, out / "compare.png", (11, 1.8 + 0.9 * len(seps)), draw)
    return True, None
