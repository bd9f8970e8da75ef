"""The report and the run comparison, from hand-built run directories (tests/test_evaluation.py
works out every number of that run; here they must show up in the tables)."""

from __future__ import annotations

import json
import sys

import pytest
from test_evaluation import HAND, hand_records, make_record, write_run

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
    assert "| 50.0% | 66.7% |" in md  # step-1 accuracy 3/6, 3-step accuracy 4/6
    # mu_c 1, sigma_c 0.5, n_c 3, mu_i 2.5, sigma_i 0.5, n_i 3, d 3
    assert "| 1.000 | 0.500 | 3 | 2.500 | 0.500 | 3 | 3.000 |" in md
    # tau, stopped, acc. of stopped, Thresh Acc, vs 3-step, savings (test_evaluation: the gate by hand)
    assert "| tau_mean (entropy mean) | 1.000 | 33.3% | 100.0% | 66.7% | +0.0 pp | 15.0% |" in md
    assert "| tau_info (information-theoretic) | 1.693 | 50.0% | 100.0% | 83.3% | +16.7 pp | 25.0% |" in md
    assert "| tau_bayes (Bayes optimal) | 1.750 | 50.0% | 100.0% | 83.3% | +16.7 pp | 25.0% |" in md
    assert "| tau_universal (scale-invariant) | 1.475 | 33.3% | 100.0% | 66.7% | +0.0 pp | 15.0% |" in md
    assert "| oracle: most savings, no loss | 2.000 | 66.7% | 75.0% | 66.7% | +0.0 pp | 35.0% |" in md
    # separation at step 1: d 3, Welch t 3.67, exact Mann-Whitney p 0.1, AUROC 1 with a degenerate CI
    assert "| 3 | 3 | 1.000 | 2.500 | 3.000 | 3.67 |" in md and "| 0.1 | 1.000 [1.000, 1.000] |" in md
    assert "| 5 | 3 | 3 | 0.867 | 0.833 |" in md  # top-5 entropy: correct mean (0.5+1.2+0.9)/3, incorrect 2.5/3
    assert "0.444 [" in md  # top-5 AUROC 4/9
    assert "| 2 | 3 | 3 |" in md and "0.778 [" in md  # persistence at step 2: AUROC 7/9
    # budget alpha 10 (1.67 calls a problem): uniform 1 step (3/6); every gated threshold 4/6
    assert "| 10 | 1.67 | 50.0% | 66.7% | 66.7% | 66.7% | 66.7% |" in md
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
    # listed first.
    assert ("| reasoner | `org/reasoner-20b` | arith | 6 | 50.0% | 66.7% | 3.000 | 0.021 | 1.000 [1.000, 1.000] "
            "| 35.0% (tau 2.000) | tau_info: 25.0% |") in md
    # instruct: H1 reversed (a 3.0 .. f 0.5): correct [3, 2.5, 2], incorrect [1.5, 1, 0.5], d = -3, AUROC 0.
    # Stopping f (H 0.5) alone loses nothing (f is wrong at step 3 too): cost 2000 - 300 + 100, savings 10%.
    # Every tau_* stops e or d (right at step 3, wrong at step 1): none loses no accuracy.
    assert ("| instruct | `org/instruct-70b` | arith | 6 | 50.0% | 66.7% | -3.000 | 0.021 | 0.000 [0.000, 0.000] "
            "| 10.0% (tau 0.500) | none |") in md
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["org/reasoner-20b", "org/instruct-70b"]
    assert runs[0]["best_no_loss_method"] == "info" and runs[1]["best_no_loss_method"] is None
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
    assert "| tau_bayes (Bayes optimal) | -inf (never stop) | 0.0% | n/a | 57.1% | +0.0 pp | 0.0% |" in md
    assert "| oracle: best Thresh Acc | -inf (never stop) | 0.0% | n/a | 57.1% | +0.0 pp | 0.0% |" in md
    assert "| 0 | 7 | n/a | 1.250 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "| 5 | 2 | tau_mean | n/a ± n/a | 0/50 | 0.0% ± 0.0% |" in md
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibration"]["tau_mean"] is None and summary["gate"]["mean"]["stopped_acc"] is None
