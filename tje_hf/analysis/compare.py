"""Several runs side by side (``tje compare``): ``compare.md``, ``compare.json``, ``compare.png``.

``policy="all"`` runs get their step-1 calibration and in-sample gate (:func:`evaluate_run`);
``policy="gate"`` runs what they did with the tau they used (:func:`evaluate_gate_run`); and each
gate run is set against every all-steps run of the same task in the comparison, matched by problem
id (:func:`compare_gate_to_all`: gate minus all-steps final accuracy with a paired bootstrap CI).
Also importable as ``tje_hf.analysis.report.compare_runs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..columns import DEFAULT_COLUMN, unit_of
from ..records import load_config, read_records, with_steps
from .calibration import step_values
from .evaluation import RunEvaluation, Separation, evaluate_run, separation
from .figures import compare_figure
from .fmt import (
    SMALL_N_NOTE,
    auroc_ci,
    frac,
    num,
    pct,
    pval,
    rate,
    reconstruction_notes,
    run_meta,
    short_name,
    table,
    tokens,
    unparseable_by_step,
)
from .gate_run import GateRunEvaluation, PairedComparison, compare_gate_to_all, evaluate_gate_run, run_policy
from .table import jsonable


@dataclass(frozen=True, eq=False)
class _Compared:
    """One run of a comparison: metadata, records, and its evaluation (``res`` for a policy-all run,
    ``gate`` for a policy-gate run); ``step1``: the step-1 separation on the comparison's signal."""

    meta: dict
    records: list[dict]
    res: RunEvaluation | None
    gate: GateRunEvaluation | None
    step1: Separation

    @property
    def name(self) -> str:
        return Path(self.meta["run_dir"]).name

    @property
    def label(self) -> str:
        """The run's row label in ``compare.png``: directory name, then model and task (and policy)."""
        policy = " · gate" if self.gate is not None else ""
        return f"{self.name}\n{self.meta['model']} · {self.meta['task']}{policy}"

    def best(self) -> str | None:
        return None if self.res is None else _best_no_loss(self.res)

    def to_json(self) -> dict:
        """The run's entry of ``compare.json``."""
        if self.gate is not None:
            return {**self.meta, **self.gate.to_json(), "step1_separation": jsonable(self.step1)}
        js, best = self.res.to_json(), self.best()
        return {**self.meta, "policy": "all", "n_problems": js["n_problems"], "n_steps": js["n_steps"],
                "step1_accuracy": js["step1_accuracy"], "n_step_accuracy": js["n_step_accuracy"],
                "separation": js["separation"], "oracle_no_loss": js["oracle"]["no_loss"],
                "best_no_loss_method": best,
                "best_no_loss_savings": None if best is None else js["gate"][best]["savings"],
                "gate": js["gate"], "reconstructed": js["calibration"]["reconstructed"], "steps": js["steps"]}

    def md_row(self) -> list:
        """The run's row of the table of policy-all runs."""
        res, sep, oracle, best = self.res, self.res.separation, self.res.oracle.no_loss, self.best()
        q = res.n_problems
        return [self.name, f"`{self.meta['model']}`", self.meta["task"], q, res.n_steps,
                rate(res.step1_accuracy, q), rate(res.n_step_accuracy, q), unparseable_by_step(res.steps),
                f"{sep.n_c}/{sep.n_i}", num(sep.cohens_d), pval(sep.welch_p), auroc_ci(sep),
                f"{pct(oracle.savings)} (tau {num(oracle.tau)})",
                "none" if best is None else f"{short_name(best)}: {pct(res.gate[best].savings)}"]

    def gate_md_row(self) -> list:
        """The run's row of the table of policy-gate runs."""
        g, st = self.gate, self.gate.settings
        saved = "n/a" if g.tokens_saved_at_most is None else f"at most {tokens(g.tokens_saved_at_most)}"
        return [self.name, f"`{self.meta['model']}`", self.meta["task"], f"{num(st.tau)} (`{st.column}`, {st.segment})",
                st.n_steps, g.n_problems, frac(g.n_stopped, g.n_problems), rate(g.step1_accuracy, g.n_problems),
                frac(g.n_gated_correct, g.n_problems), unparseable_by_step(g.steps),
                f"{g.calls_made} / {g.calls_all_steps}", tokens(g.tokens_spent), saved,
                f"{self.step1.n_c}/{self.step1.n_i}", auroc_ci(self.step1)]


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, signal: str = DEFAULT_COLUMN,
                 segment: str = "all") -> Path:
    """Several runs side by side; returns the path of ``compare.md``.

    For each ``policy="all"`` run: model and task (from its ``config.json``), accuracies with their
    counts, unparseable answers per step, Cohen's d, Welch p, AUROC with its bootstrap 95% CI (and
    the class sizes), the oracle's savings at no accuracy loss, and the in-sample ``tau_*`` with
    the most savings among those that lose no accuracy (none when every one loses some; ties go
    to the higher Thresh Acc, then to the method registered first). For each ``policy="gate"`` run:
    the tau, column and segment it used, the problems it stopped, step-1 and gated final accuracy,
    unparseable answers per step, calls and tokens spent and saved. For each gate run and each
    all-steps run of the same task: :func:`compare_gate_to_all`. Writes ``compare.md``,
    ``compare.json`` and, with matplotlib, ``compare.png`` (step-1 AUROC with CI per run) into ``out_dir``.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory, got none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_load(Path(rd), signal, segment) for rd in run_dirs]
    paired = _pairs(runs)
    (out / "compare.json").write_text(json.dumps(
        {"signal": signal, "segment": segment, "runs": [r.to_json() for r in runs],
         "paired": [{"gate_run": g.meta["run_dir"], "all_run": a.meta["run_dir"], **p.to_json()}
                    for g, a, p in paired]}, indent=1, allow_nan=False))
    drawn, skipped = compare_figure([r.label for r in runs], [r.step1 for r in runs], out)
    md = _compare_md(runs, paired, signal, segment)
    if drawn:
        md += ["", "![step-1 AUROC per run](compare.png)"]
    if skipped:
        md += ["", f"_Plot skipped: {skipped}._"]
    path = out / "compare.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _load(rd: Path, signal: str, segment: str) -> _Compared:
    records = with_steps(read_records(rd))
    if not records:
        raise ValueError(f"{rd} holds no records")
    cfg = load_config(rd)
    meta = run_meta(rd, cfg)
    if run_policy(cfg.get("config", {}), records) == "gate":
        g = evaluate_gate_run(records, cfg.get("config", {}))
        values, correct, _ = step_values(records, signal, segment, 1)
        return _Compared(meta, records, None, g, separation(values, correct))
    res = evaluate_run(records, signal, segment)
    return _Compared(meta, records, res, None, res.separation)


def _pairs(runs: list[_Compared]) -> list[tuple[_Compared, _Compared, PairedComparison]]:
    """Every (gate run, all-steps run) of the same task with a problem id in common."""
    out = []
    for g in runs:
        if g.gate is None:
            continue
        gate_ids = {str(r["problem_id"]) for r in g.records}
        for a in runs:
            if a.res is None or a.meta["task"] != g.meta["task"]:
                continue
            if gate_ids & {str(r["problem_id"]) for r in a.records}:
                out.append((g, a, compare_gate_to_all(a.records, g.records, g.gate.settings)))
    return out


def _compare_md(runs: list[_Compared], paired: list, signal: str, segment: str) -> list[str]:
    alls = [r for r in runs if r.res is not None]
    gates = [r for r in runs if r.gate is not None]
    md = [f"# Comparison of {len(runs)} runs", "",
          (f"Signal `{signal}` ({unit_of(signal)}), segment `{segment}`, step 1. AUROC: the signal as "
           "a predictor of an incorrect answer (0.5 = no separation), with the class sizes n (correct/incorrect). "
           "Rates show their counts (k/n); unparseable answers (`correct: null`) count as incorrect and are listed "
           "per step (unparseable/problems that reached the step).")]
    if alls:
        md += ["", "## Runs that ran every step (policy `all`)", "",
               ("Savings are in-sample (thresholds from all of a run's problems); the oracle chooses tau with the "
               "answers."), "",
               table(["run", "model", "task", "problems", "N", "step-1 acc.", "N-step acc.", "unparseable by step",
                      "n (correct/incorrect)", "Cohen's d", "Welch p", "AUROC [95% CI]", "oracle savings, no loss",
                      "best tau_* without loss"], [r.md_row() for r in alls])]
        recon = {m: note for r in alls for m, note in r.res.calibration.reconstructed.items()}
        md += [""] + reconstruction_notes(recon) if recon else []
    if gates:
        md += ["", "## Gate runs (policy `gate`)", "",
               ("What each run did with the tau it used (config.json `refine.tau`, on its gate column and segment): "
                "a stopped problem answers with step 1, the others with step N. Calls not made are exact; tokens "
                "saved are bounded by decode.max_new_tokens per call not made (the steps were never run)."), "",
               table(["run", "model", "task", "tau (column, segment)", "N", "problems", "stopped after step 1",
                      "step-1 acc.", "gated final acc.", "unparseable by step", "calls made / all steps",
                      "tokens spent", "tokens saved", "n (correct/incorrect)", "step-1 AUROC [95% CI]"],
                     [r.gate_md_row() for r in gates])]
        md += _paired_md(gates, paired)
    if any(r.step1.warning for r in runs):
        md += ["", SMALL_N_NOTE]
    return md


def _paired_md(gates: list[_Compared], paired: list) -> list[str]:
    md = ["", "## Gate runs against all-steps runs of the same problems", ""]
    if not paired:
        return md + [("No `policy: all` run of the same task with a problem in common is part of this comparison: "
                     "add one (`tje compare ALL_RUN GATE_RUN`) for the accuracy difference.")]
    rows = []
    for g, a, p in paired:
        off = "n/a (column not recorded)" if p.offline is None else (
            f"Thresh Acc {rate(p.offline.thresh_acc, p.n)}, stops {frac(p.offline.n_stopped, p.n)}, "
            f"savings {pct(p.offline.savings)}")
        diff = f"{100 * p.diff:+.1f} pp [{100 * p.ci_low:+.1f}, {100 * p.ci_high:+.1f}]"
        rows.append([g.name, a.name, p.n, frac(round(p.gate_accuracy * p.n), p.n),
                     frac(round(p.all_accuracy * p.n), p.n), diff + (" \u26a0 n too small" if p.warning else ""),
                     f"{p.n_gate_only_right} / {p.n_all_only_right}", f"{p.calls_gate} / {p.calls_all}",
                     f"{tokens(p.tokens_gate)} / {tokens(p.tokens_all)}", off])
    unmatched = [g.name for g in gates if g not in {pg for pg, _, _ in paired}]
    md += [("Matched by problem id (runs of the same task). Difference: gate run's final accuracy (each problem's "
            "last step) minus the all-steps run's step-N accuracy on the same n problems, with a 95% paired "
            f"bootstrap CI ({paired[0][2].n_boot} resamples of the problems). Discordant: problems only the gate run "
            "got right / only the all-steps run got right. Calls and tokens: what each run spent on these problems "
            "(two samples of the model). Offline: the all-steps run gated at the gate run's tau, where the later "
            "steps' tokens were measured."), "",
           table(["gate run", "all-steps run", "n (paired)", "gate final acc.", "all-steps final acc.",
                  "gate − all [95% CI]", "discordant (gate / all)", "calls (gate / all)", "tokens (gate / all)",
                  "all-steps run gated offline at that tau"], rows)]
    if unmatched:
        md += ["", f"No all-steps run of the same problems for: {', '.join(unmatched)}."]
    return md


def _best_no_loss(res: RunEvaluation) -> str | None:
    """The in-sample ``tau_*`` with the most savings among those with ``acc_diff >= 0`` (None: every one
    loses accuracy). Ties go to the higher Thresh Acc, then to the method registered first."""
    order = list(res.gate)
    no_loss = [m for m in order if res.gate[m].acc_diff >= 0]
    return max(no_loss, key=lambda m: (res.gate[m].savings, res.gate[m].thresh_acc, -order.index(m)), default=None)
