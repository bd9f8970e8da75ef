"""The report and the run comparison, from hand-built run directories (tests/test_evaluation.py
works out every number of that run; here they must show up in the tables)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from synthetic_runs import GATE_REFINE, HAND, gate_records, hand_records, make_record, write_run

from tje_hf.analysis.report import compare_runs, signal_axis_label, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("hist", "sweep", "few_shot", "topk", "persistence", "budget")


def reversed_records() -> list[dict]:
    """The hand run with step-1 entropies reversed (f lowest, a highest): no separation, AUROC 0."""
    rows = list(HAND.values())
    h1s = [row[0][0] for row in rows][::-1]
    return [make_record(j, pid, (h1, *row[0][1:]), *row[1:3]) for j, ((pid, row), h1)
            in enumerate(zip(HAND.items(), h1s, strict=True))]


def test_write_report_tables_and_files(tmp_path):
    run = write_run(tmp_path / "run", hand_records())
    path = write_report(run)
    assert path == run / "report" / "report.md"
    for name in FIGURES:
        data = (run / "report" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    md = path.read_text()
    assert "# Calibration report: test/model-a on arith" in md
    assert "| 50.0% (3/6) | 66.7% (4/6) |" in md  # step-1 accuracy 3/6, 3-step accuracy 4/6
    # per step: accuracy and unparseable answers (f's step-1 answer is null), tokens
    assert "| 1 | 6 | 50.0% (3/6) | 16.7% (1/6) | 900 |" in md and "| 3 | 6 | 66.7% (4/6) | 0.0% (0/6) | 550 |" in md
    # mu_c 1, sigma_c 0.5, n_c 3, mu_i 2.5, sigma_i 0.5, n_i 3, d 3
    assert "| 1.000 | 0.500 | 3 | 2.500 | 0.500 | 3 | 3.000 |" in md
    # tau, stopped, acc. of stopped, Thresh Acc, vs 3-step, savings (test_evaluation: the gate by hand)
    assert "| tau_mean (entropy mean) | 1.000 | 33.3% (2/6) | 100.0% (2/2) | 66.7% (4/6) | +0.0 pp | 15.0% |" in md
    assert ("| tau_info (information-theoretic) | 1.693 | 50.0% (3/6) | 100.0% (3/3) | 83.3% (5/6) | +16.7 pp "
            "| 25.0% |") in md
    assert "| tau_bayes (Bayes optimal) | 1.750 | 50.0% (3/6) | 100.0% (3/3) | 83.3% (5/6) | +16.7 pp | 25.0% |" in md
    # tau_universal is labelled a reconstruction wherever it appears, with the reason
    assert ("| tau_universal (scale-invariant; reconstruction) | 1.475 | 33.3% (2/6) | 100.0% (2/2) | 66.7% (4/6) "
            "| +0.0 pp | 15.0% |") in md
    assert "is a reconstruction, not the paper's formula: the paper names a scale-invariant threshold" in md
    assert "| 5 | 1 | tau_universal (reconstruction) |" in md and "gated tau_universal (reconstruction) |" in md
    assert "| oracle: most savings, no loss | 2.000 | 66.7% (4/6) | 75.0% (3/4) | 66.7% (4/6) | +0.0 pp | 35.0% |" in md
    # separation at step 1: d 3, Welch t 3.67, exact Mann-Whitney p 0.1, AUROC 1 with a degenerate CI from 3 + 3
    # examples: flagged
    assert "| 3 | 3 | 1.000 | 2.500 | 3.000 | 3.67 |" in md
    assert "| 0.1 | 1.000 [1.000, 1.000] \u26a0 n too small |" in md and "1.000 [1.000, 1.000] |" not in md
    assert "\u26a0 n too small: fewer than 5 examples in a class" in md
    assert "| 5 | 3 | 3 | 0.867 | 0.833 |" in md  # top-5 entropy: correct mean (0.5+1.2+0.9)/3, incorrect 2.5/3
    assert "0.444 [" in md  # top-5 AUROC 4/9
    assert "| 2 | 3 | 3 |" in md and "0.778 [" in md  # persistence at step 2: AUROC 7/9
    # budget alpha 10 (1.67 calls a problem): equal cap 1 step (3/6, 6 calls); equal spend 10 calls, 3/6 expected
    # (test_evaluation); every gated threshold 4/6 with its 10 calls
    assert ("| 10 | 1.67 | 50.0% (6 calls) | 50.0% (10 calls) | 66.7% (10 calls) | 66.7% (10 calls) | 66.7% (10 calls) "
            "| 66.7% (10 calls) |") in md
    # alpha 14: equal spend 5/9 with 14 calls, 1633.3 expected tokens; tau_info stops a, b, c and spends 12 calls
    assert "| 14 | 2.33 | 50.0% (12 calls) | 55.6% (14 calls) | 66.7% (14 calls) | 83.3% (12 calls) |" in md
    assert "| 14 | 4,200 | 1,450 | 1,633.3 | 1,700 | 1,500 | 1,500 | 1,700 |" in md
    for name in FIGURES:
        assert f"({name}.png)" in md
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["model"] == "test/model-a" and summary["config_hash"] == "0123456789abcdef"
    assert summary["calibration"]["tau_bayes"] == pytest.approx(1.75)


def test_report_without_matplotlib_keeps_the_tables(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    run = write_run(tmp_path / "run", hand_records())
    path = write_report(run, out_dir=tmp_path / "out")
    assert path == tmp_path / "out" / "report.md"
    assert not list((tmp_path / "out").glob("*.png"))
    md = path.read_text()
    assert "_Plots skipped: matplotlib is not installed" in md and ".png)" not in md
    assert "| tau_bayes (Bayes optimal) | 1.750 |" in md


def test_report_of_an_empty_run_is_an_error(tmp_path):
    run = write_run(tmp_path / "run", [])
    with pytest.raises(ValueError, match="holds no records"):
        write_report(run)


def test_compare_runs(tmp_path):
    a = write_run(tmp_path / "reasoner", hand_records(), model="org/reasoner-20b")
    b = write_run(tmp_path / "instruct", reversed_records(), model="org/instruct-70b")
    path = compare_runs([a, b], tmp_path / "cmp")
    assert path == tmp_path / "cmp" / "compare.md"
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG_MAGIC)
    md = path.read_text()
    # reasoner: d 3, AUROC 1; oracle 35.0% at tau 2; tau_info and tau_bayes tie (25.0%, 5/6): tau_info is
    # listed first. Unparseable answers per step: f at step 1.
    assert ("| reasoner | `org/reasoner-20b` | arith | 6 | 3 | 50.0% (3/6) | 66.7% (4/6) | 1/6 · 0/6 · 0/6 | 3/3 "
            "| 3.000 | 0.021 | 1.000 [1.000, 1.000] \u26a0 n too small | 35.0% (tau 2.000) | tau_info: 25.0% |") in md
    # instruct: H1 reversed (a 3.0 .. f 0.5): correct [3, 2.5, 2], incorrect [1.5, 1, 0.5], d = -3, AUROC 0.
    # Stopping f (H 0.5) alone loses nothing (f is wrong at step 3 too): cost 2000 - 300 + 100, savings 10%.
    # Every tau_* stops e or d (right at step 3, wrong at step 1): none loses no accuracy.
    assert ("| instruct | `org/instruct-70b` | arith | 6 | 3 | 50.0% (3/6) | 66.7% (4/6) | 1/6 · 0/6 · 0/6 | 3/3 "
            "| -3.000 | 0.021 | 0.000 [0.000, 0.000] \u26a0 n too small | 10.0% (tau 0.500) | none |") in md
    assert "**tau_universal (scale-invariant; reconstruction)** is a reconstruction" in md
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["org/reasoner-20b", "org/instruct-70b"]
    assert runs[0]["best_no_loss_method"] == "info" and runs[1]["best_no_loss_method"] is None
    assert list(runs[0]["reconstructed"]) == ["universal"] and runs[0]["steps"][0]["n_unparseable"] == 1
    with pytest.raises(ValueError, match="at least one run directory"):
        compare_runs([], tmp_path / "cmp")


def test_axis_labels_carry_units_and_sign():
    assert signal_axis_label("topk_entropy@20") == "step-1 mean top-20 entropy (bits)"
    assert signal_axis_label("full_entropy", prefix="") == "full-vocabulary entropy (bits)"
    assert signal_axis_label("deepconf_confidence") == "step-1 mean \u2212deepconf_confidence (nats)"


def test_undefined_numbers_read_n_a_and_minus_inf_never_stops(tmp_path):
    # Every step-1 answer wrong: no correct example, so every tau is -inf (never stop), mu_c, d, the
    # accuracy of the stopped problems and the AUROC are undefined; the few-shot tau has no finite draw.
    recs = [make_record(j, f"p{j}", (0.5 + 0.25 * j, 1.0), (False, j % 2 == 0), (10, 20)) for j in range(7)]
    md = write_report(write_run(tmp_path / "run", recs), out_dir=tmp_path / "out").read_text()
    assert "| n/a | n/a | 0 | 1.250 | 0.540 | 7 | n/a |" in md
    assert ("| tau_bayes (Bayes optimal) | -inf (never stop) | 0.0% (0/7) | n/a (0/0) | 57.1% (4/7) | +0.0 pp "
            "| 0.0% |") in md
    assert ("| oracle: best Thresh Acc | -inf (never stop) | 0.0% (0/7) | n/a (0/0) | 57.1% (4/7) | +0.0 pp "
            "| 0.0% |") in md
    assert "| 0 | 7 | n/a | 1.250 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "| 5 | 2 | tau_mean | n/a ± n/a | 0/50 | 0.0% ± 0.0% |" in md
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibration"]["tau_mean"] is None and summary["gate"]["mean"]["stopped_acc"] is None


# --------------------------------------------------------------------------------------------
# Gate runs (test_evaluation.gate_records: tau 1.5, N 3; a, b, c stopped after step 1)


def write_gate_run(path, **kw):
    return write_run(path, gate_records(), refine=GATE_REFINE, decode={"max_new_tokens": 512}, **kw)


def test_report_of_a_gate_run(tmp_path):
    path = write_report(write_gate_run(tmp_path / "gate"))
    md = path.read_text()
    assert "# Gate run report: test/model-a on arith" in md
    # the tau, column, segment and policy the run used; its own decisions
    assert "| gate | 1.500 | `topk_entropy@20` | all | 3 | 50.0% (3/6) | 50.0% (3/6) | 0 |" in md
    assert "| stopped problems (their step-1 answer) | 100.0% (3/3) |" in md
    assert "| continued problems (their step-3 answer) | 66.7% (2/3) |" in md
    assert "| **gated final** (each problem's last step) | 83.3% (5/6) |" in md
    # per step over the problems that reached it
    assert "| 1 | 6 | 50.0% (3/6) | 16.7% (1/6) | 900 |" in md and "| 2 | 3 | 33.3% (1/3) | 0.0% (0/3) | 300 |" in md
    # calls exact, tokens bounded and estimated, never claimed as measured
    assert "| 12 | 18 | 6 | 1,500 | at most 3,072 (6 × 512) | ~600 (estimate) |" in md
    assert "Tokens saved are not measured" in md
    assert "1.000 [1.000, 1.000] \u26a0 n too small" in md
    assert (tmp_path / "gate" / "report" / "hist.png").read_bytes().startswith(PNG_MAGIC)
    summary = json.loads((tmp_path / "gate" / "report" / "summary.json").read_text())
    assert summary["policy"] == "gate" and summary["settings"]["tau"] == 1.5 and summary["gated_accuracy"] == 5 / 6
    assert summary["tokens_saved_at_most"] == 3072 and summary["calls_not_made"] == 6


def test_cli_report_and_compare_on_a_gate_run(tmp_path, capsys):
    from tje_hf.cli import main

    a = write_run(tmp_path / "all-steps", hand_records())
    g = write_gate_run(tmp_path / "gated")
    assert main(["report", str(g)]) == 0
    assert main(["compare", str(a), str(g), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().out.strip().endswith("compare.md")


def test_compare_an_all_steps_run_with_a_gate_run(tmp_path, monkeypatch):
    import tje_hf.analysis.compare as cmp_mod

    labels = []
    draw = cmp_mod.compare_figure
    monkeypatch.setattr(cmp_mod, "compare_figure", lambda ls, seps, out: (labels.extend(ls), draw(ls, seps, out))[1])
    a = write_run(tmp_path / "all-steps", hand_records())
    g = write_gate_run(tmp_path / "gated")
    b = write_run(tmp_path / "all-steps-again", reversed_records())  # the same model and task: told apart by name
    md = compare_runs([a, g, b], tmp_path / "cmp").read_text()
    assert labels == ["all-steps\ntest/model-a · arith", "gated\ntest/model-a · arith · gate",
                      "all-steps-again\ntest/model-a · arith"]
    assert ("| gated | `test/model-a` | arith | 1.500 (`topk_entropy@20`, all) | 3 | 6 | 50.0% (3/6) | 50.0% (3/6) "
            "| 83.3% (5/6) | 1/6 · 0/3 · 0/3 | 12 / 18 | 1,500 | at most 3,072 | 3/3 | 1.000 [1.000, 1.000] "
            "\u26a0 n too small |") in md
    # gate minus all-steps final: 5/6 - 4/6 with the paired bootstrap CI of test_evaluation; offline gate of the
    # all-steps run at tau 1.5: 5/6, 3 stopped, 25% savings
    assert ("| gated | all-steps | 6 | 83.3% (5/6) | 66.7% (4/6) | +16.7 pp [+0.0, +50.0] | 1 / 0 | 12 / 18 "
            "| 1,500 / 2,000 | Thresh Acc 83.3% (5/6), stops 50.0% (3/6), savings 25.0% |") in md
    # the second all-steps run (reversed entropies, same problems): offline at 1.5 stops d, e, f
    assert "| gated | all-steps-again | 6 | 83.3% (5/6) | 66.7% (4/6) |" in md
    js = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["policy"] for r in js["runs"]] == ["all", "gate", "all"]
    assert js["paired"][0]["diff"] == pytest.approx(1 / 6) and js["paired"][0]["n"] == 6
    assert js["paired"][0]["ci_low"] == 0.0 and js["paired"][0]["ci_high"] == 0.5
    # A gate run alone: no pairing, and the comparison says how to get one
    md = compare_runs([g], tmp_path / "cmp2").read_text()
    assert "add one (`tje compare ALL_RUN GATE_RUN`)" in md


# --------------------------------------------------------------------------------------------
# Figures: one colour per method everywhere, legends off the data


def _has_colour(png, hex_colour: str) -> bool:
    import matplotlib.image

    rgb = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    want = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return bool((np.abs(rgb - want).max(axis=-1) <= 2).any())


def test_figures_use_the_palette_of_the_viewer(tmp_path):
    from tje_hf.analysis.style import METHOD_COLORS, palette

    run = write_run(tmp_path / "run", hand_records())
    write_report(run)
    assert palette(METHOD_COLORS) == METHOD_COLORS
    assert METHOD_COLORS == {"mean": "#0072B2", "info": "#009E73", "bayes": "#D55E00", "universal": "#CC79A7"}
    for name in ("hist", "sweep", "few_shot", "budget"):
        for m, colour in METHOD_COLORS.items():
            assert _has_colour(run / "report" / f"{name}.png", colour), (name, m)
    assert not _has_colour(run / "report" / "hist.png", "#2ca02c")  # the old matplotlib green of tau_info


def test_sweep_legend_is_outside_the_axes(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tje_hf.analysis.evaluation import evaluate_run
    from tje_hf.analysis.figures import _plot_sweep

    fig = Figure(figsize=(10.5, 5))
    FigureCanvasAgg(fig)
    _plot_sweep(fig, evaluate_run(hand_records(), n_boot=20, n_draws=2))
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # right of the plot: the curve's start stays visible


def test_a_registered_method_appears_in_the_report(tmp_path):
    from tje_hf.analysis import calibration
    from tje_hf.analysis.style import EXTRA_COLORS

    calibration.register_threshold("midpoint", lambda s: (s.mu_c + s.mu_i) / 2, label="class midpoint")
    try:
        run = write_run(tmp_path / "run", hand_records())
        md = write_report(run).read_text()
    finally:
        calibration.unregister_threshold("midpoint")
    assert "| tau_midpoint (class midpoint) | 1.750 | 50.0% (3/6) | 100.0% (3/3) | 83.3% (5/6) |" in md
    assert "gated tau_midpoint |" in md
    assert _has_colour(run / "report" / "hist.png", EXTRA_COLORS[0])
