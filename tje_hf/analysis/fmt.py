"""Number formatting shared by the report and the comparison (markdown): every number as it is
computed, NaN (undefined) as "n/a", a count next to every rate, a warning next to every statistic
of two classes that is too small to trust."""

from __future__ import annotations

import math

from ..columns import SIGNAL_UNITS, signal_of
from .evaluation import Separation, StepSummary
from .style import is_reconstruction, method_title
from .table import MIN_CLASS_N, GateResult

WARN = "\u26a0"  # ⚠
SMALL_N = f"{WARN} n too small"


def num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "n/a"


def pct(x, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if x is not None and math.isfinite(x) else "n/a"


def frac(k: int, n: int) -> str:
    """``"50.0% (3/6)"``: a rate with its count; ``"n/a (0/0)"`` without any case."""
    return f"{pct(k / n) if n else 'n/a'} ({k}/{n})"


def rate(x: float, n: int) -> str:
    """A rate known as a float over n cases, with its count (``round(x n)``)."""
    return frac(round(x * n), n) if x is not None and math.isfinite(x) else f"n/a (0/{n})"


def pp(x) -> str:
    """An accuracy difference in percentage points, signed."""
    return f"{100 * x:+.1f} pp" if x is not None and math.isfinite(x) else "n/a"


def pval(x) -> str:
    return f"{x:.2g}" if x is not None and math.isfinite(x) else "n/a"


def tau(x) -> str:
    # A threshold of -inf never stops.
    return f"{x:.3f}" if math.isfinite(x) else "-inf (never stop)"


def tokens(x) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def table(header: list[str], rows: list[list]) -> str:
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


def auroc_ci(sep: Separation) -> str:
    """``"0.812 [0.700, 0.901]"``, followed by the n warning when a class has fewer than ``MIN_CLASS_N`` (5) examples."""
    if not math.isfinite(sep.auroc):
        return "n/a"
    text = f"{sep.auroc:.3f} [{num(sep.auroc_low)}, {num(sep.auroc_high)}]"
    return f"{text} {SMALL_N}" if sep.warning else text


SEP_HEADER = ["n correct", "n incorrect", "mean correct", "mean incorrect", "Cohen's d", "Welch t",
              "Welch p", "Mann-Whitney p", "AUROC [95% CI]"]
SMALL_N_NOTE = (f"{SMALL_N}: fewer than {MIN_CLASS_N} examples in a class (correct or incorrect); every statistic of that "
                "row (d, t, p, AUROC and its CI) rests on too few examples to be trusted.")


def sep_row(sep: Separation) -> list[str]:
    return [str(sep.n_c), str(sep.n_i), num(sep.mu_c), num(sep.mu_i), num(sep.cohens_d),
            num(sep.welch_t, 2), pval(sep.welch_p), pval(sep.mannwhitney_p), auroc_ci(sep)]


def gate_row(name: str, g: GateResult) -> list[str]:
    """threshold, tau, stopped, acc. of stopped, Thresh Acc, vs N-step, savings; counts with the rates."""
    return [name, tau(g.tau), frac(g.n_stopped, g.n_problems), rate(g.stopped_acc, g.n_stopped),
            rate(g.thresh_acc, g.n_problems), pp(g.acc_diff), pct(g.savings)]


def step_rows(steps: tuple[StepSummary, ...]) -> list[list]:
    """step, problems, accuracy, unparseable, tokens."""
    return [[s.step, s.n, frac(s.n_correct, s.n), frac(s.n_unparseable, s.n), tokens(s.tokens)] for s in steps]


STEP_HEADER = ["step", "problems", "accuracy (correct / n)", "unparseable (null / n)", "tokens"]


def unparseable_by_step(steps: tuple[StepSummary, ...]) -> str:
    """``"1/6 · 0/6 · 0/6"``: the unparseable answers of every step, over the problems that reached it."""
    return " · ".join(f"{s.n_unparseable}/{s.n}" for s in steps) or "n/a"


def short_name(method: str) -> str:
    """``tau_<method>``, with "(reconstruction)" for a reconstruction: short, for wide tables."""
    return f"tau_{method} (reconstruction)" if is_reconstruction(method) else f"tau_{method}"


def reconstruction_notes(reconstructed: dict[str, str]) -> list[str]:
    """One markdown bullet per reconstructed method, with the registry's note."""
    return [f"- **{method_title(m)}** is a reconstruction, not the paper's formula: {note}. Replace or complement "
            "it with `tje_hf.analysis.calibration.register_threshold` when the formula is published."
            for m, note in reconstructed.items()]


def run_meta(run_dir, cfg: dict) -> dict:
    """``{"run_dir", "model", "task", "config_hash"}`` of a run from its ``config.json`` (``cfg``)."""
    c = cfg.get("config", {}) if isinstance(cfg, dict) else {}
    model = c.get("model") if isinstance(c.get("model"), dict) else {}
    task = c.get("task") if isinstance(c.get("task"), dict) else {}
    return {"run_dir": str(run_dir), "model": model.get("name_or_path", "unknown"),
            "task": task.get("name", "unknown"), "config_hash": cfg.get("config_hash")}


def figure_md(figures: dict[str, str], *names: str) -> list[str]:
    out = []
    for name in names:
        if name in figures:
            out += ["", f"![{figures[name]}]({name}.png)"]
    return out
