"""``tje export`` and ``tje_hf.to_dataframe``: a run's records as one row per problem and step.

The runs are hand-built (tests/test_evaluation.py works out the numbers of the six-problem run,
tests/test_viewer.py writes one through ``tje_hf.records`` with traces), so every cell is known.
"""

from __future__ import annotations

import copy
import math
import sys

import pandas as pd
import pytest
from synthetic_runs import GATE_REFINE, HAND, build_run, gate_records, hand_records, write_run

import tje_hf
from tje_hf.cli import main
from tje_hf.export import fixed_columns, to_dataframe

SIGNALS = ("topk_entropy@5", "topk_entropy@20", "full_entropy", "deepconf_confidence", "self_certainty",
           "token_logprob")
SIGNAL_COLUMNS = [f"{seg}/{col}" for seg in ("all", "reasoning", "answer") for col in SIGNALS]
COUNT_COLUMNS = ["n_tokens/all", "n_tokens/reasoning", "n_tokens/answer"]


@pytest.fixture
def hand_run(tmp_path):
    return write_run(tmp_path / "run", hand_records())


def row(df: pd.DataFrame, pid: str, step: int) -> pd.Series:
    match = df[(df.problem_id == pid) & (df.step == step)]
    assert len(match) == 1
    return match.iloc[0]


def test_one_row_per_problem_and_step_with_every_signal(hand_run):
    df = to_dataframe(hand_run)
    assert list(df.columns) == [*fixed_columns(), *SIGNAL_COLUMNS, *COUNT_COLUMNS]
    assert len(df) == 6 * 3
    assert list(zip(df.problem_id, df.step, strict=True)) == [(pid, k) for pid in HAND for k in (1, 2, 3)]
    # c: H (1.5, 2.0, 1.0), correct (T, F, F), 100 tokens a step, top-5 entropy 0.9 at step 1 (test_evaluation)
    c2 = row(df, "c", 2)
    assert c2["all/topk_entropy@20"] == 2.0 and c2["all/full_entropy"] == 4.0 and c2["all/topk_entropy@5"] == 1.0
    assert c2["answer/deepconf_confidence"] == 8.0 and c2["reasoning/token_logprob"] == -2.0
    assert c2.correct is not pd.NA and not c2.correct
    assert (c2.problem_id, c2["index"], c2.task, c2.model, c2.n_steps, c2.seed) == ("c", 2, "arith", "test/model-a",
                                                                                   3, 2002)
    assert (c2.answer, c2.grade_reason, c2.n_generated, c2.prompt_tokens, c2.stop_reason) == ("42", "mismatch", 100,
                                                                                            50, "eos")
    assert (c2["n_tokens/all"], c2["n_tokens/reasoning"], c2["n_tokens/answer"]) == (100, 95, 5)
    assert row(df, "c", 1)["all/topk_entropy@5"] == 0.9
    # the run: policy "all", no tau
    assert set(df.policy) == {"all"} and df.tau.isna().all() and df.gate_signal.isna().all()
    # f's step-1 answer is unparseable: correct is missing (NA), never False; its answer is missing
    f1 = row(df, "f", 1)
    assert f1.correct is pd.NA and pd.isna(f1.answer)
    assert df.correct.dtype == "boolean" and df.correct.isna().sum() == 1
    assert df[df.step == 1].correct.sum() == 3  # step-1 accuracy 3/6
    assert str(df["index"].dtype) == "Int64" and df["all/topk_entropy@20"].dtype == "float64"
    assert df.prefill_time_s.isna().all()  # not in these records: NaN, not an error


def test_step_one_means_by_correctness(hand_run):
    """The docstring's example: step-1 mean entropy of correct answers 1.0, of incorrect ones (d, e) 2.25."""
    df = to_dataframe(hand_run)
    means = df[df.step == 1].groupby("correct")["all/topk_entropy@20"].mean()
    assert means[True] == pytest.approx(1.0) and means[False] == pytest.approx(2.25)


def test_gate_run_carries_policy_and_tau(tmp_path):
    """a, b, c stopped after step 1 (H1 <= 1.5): 3 x 1 + 3 x 3 rows."""
    df = to_dataframe(write_run(tmp_path / "gate", gate_records(), refine=GATE_REFINE))
    assert len(df) == 12
    assert set(df.policy) == {"gate"} and set(df.tau) == {1.5} and set(df.gate_signal) == {"all/topk_entropy@20"}
    assert df.groupby("problem_id").n_steps.first().to_dict() == {"a": 1, "b": 1, "c": 1, "d": 3, "e": 3, "f": 3}
    assert (df.groupby("problem_id").step.max() == df.groupby("problem_id").n_steps.first()).all()


def _with_a_missing_mean(records: list[dict], value) -> list[dict]:
    records = copy.deepcopy(records)
    step = records[0]["steps"][1]
    step["signals"]["answer"] = dict.fromkeys(step["signals"]["answer"], value)  # an empty answer segment
    step["counts"]["answer"] = 0
    step["signals"]["all"]["full_entropy"] = value  # a signal the backend could not compute (vLLM)
    return records


def test_bare_nan_and_null_both_read_as_missing(tmp_path):
    """Records written with bare ``NaN`` (the writer today) and with ``null`` give the same table."""
    nan_run = write_run(tmp_path / "nan", _with_a_missing_mean(hand_records(), math.nan))
    null_run = write_run(tmp_path / "null", _with_a_missing_mean(hand_records(), None))
    assert "NaN" in (nan_run / "records.jsonl").read_text()
    assert "NaN" not in (null_run / "records.jsonl").read_text() and "null" in (null_run / "records.jsonl").read_text()
    df = to_dataframe(nan_run)
    pd.testing.assert_frame_equal(df, to_dataframe(null_run))
    a2 = row(df, "a", 2)
    assert all(math.isnan(a2[f"answer/{col}"]) for col in SIGNALS) and a2["n_tokens/answer"] == 0
    assert math.isnan(a2["all/full_entropy"]) and a2["all/topk_entropy@20"] == 0.4
    assert df[f"answer/{SIGNALS[0]}"].isna().sum() == 1


def test_a_signal_only_some_steps_have_is_nan_elsewhere(tmp_path):
    records = hand_records()
    records[2]["steps"][0]["signals"]["all"]["topk_entropy@10"] = 0.75
    df = to_dataframe(write_run(tmp_path / "run", records))
    assert list(df.columns).index("all/topk_entropy@10") == list(df.columns).index("all/topk_entropy@5") + 1
    assert row(df, "c", 1)["all/topk_entropy@10"] == 0.75 and df["all/topk_entropy@10"].isna().sum() == 17


def test_run_written_through_records_with_traces(tmp_path):
    """tests/test_viewer.py's run (RunDir.append, traces.bin): 7 problems x 3 steps, 8 signal columns."""
    run = build_run(tmp_path / "run")
    df = to_dataframe(run)
    records = tje_hf.read_records(run)
    assert len(df) == 21 and df.problem_id.nunique() == 7
    assert [c for c in df.columns if c.startswith("all/")] == [
        "all/topk_entropy@5", "all/topk_entropy@10", "all/topk_entropy@15", "all/topk_entropy@20", "all/full_entropy",
        "all/deepconf_confidence", "all/self_certainty", "all/token_logprob"]
    step = records[3]["steps"][0]
    got = row(df, records[3]["problem_id"], 1)
    assert got["reasoning/topk_entropy@20"] == step["signals"]["reasoning"]["topk_entropy@20"]
    assert got.correct is pd.NA and got["n_tokens/answer"] == step["counts"]["answer"]
    assert df.policy.unique().tolist() == ["all"]  # the config names no policy: the records' own


def test_text_columns_on_request(hand_run):
    assert "text" not in to_dataframe(hand_run).columns
    df = to_dataframe(hand_run, text=True)
    assert list(df.columns[len(fixed_columns()):len(fixed_columns(text=True))]) == ["text", "answer_text"]
    assert set(df.text) == {"..."} and set(df.answer_text) == {"..."}


def test_a_run_without_records_is_an_empty_table(tmp_path):
    df = to_dataframe(tmp_path)
    assert df.empty and list(df.columns) == list(fixed_columns())


def test_public_names():
    assert {"to_dataframe", "read_records"} <= set(tje_hf.__all__)
    assert tje_hf.to_dataframe is to_dataframe
    assert tje_hf.read_records.__module__ == "tje_hf.records"


# --------------------------------------------------------------------------------------------
# tje export


def test_export_csv_round_trip(hand_run, tmp_path, capsys):
    out = tmp_path / "tables" / "run.csv"
    assert main(["export", str(hand_run), "--csv", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: 18 rows (problem x step), 46 columns\n"
    back = pd.read_csv(out, keep_default_na=False, na_values=[""])
    df = to_dataframe(hand_run)
    assert list(back.columns) == list(df.columns) and len(back) == 18
    assert back["all/topk_entropy@20"].tolist() == df["all/topk_entropy@20"].tolist()
    f1 = back[(back.problem_id == "f") & (back.step == 1)].iloc[0]
    assert pd.isna(f1.correct) and pd.isna(f1.answer)  # empty cells
    assert back.correct.dropna().map(str).isin(["True", "False"]).all()
    assert not list(out.parent.glob(".*.tmp"))


def test_export_parquet_round_trip(hand_run, tmp_path, capsys):
    out = tmp_path / "run.parquet"
    assert main(["export", str(hand_run), "--parquet", str(out), "--csv", str(tmp_path / "run.csv")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path / 'run.csv'}: 18 rows (problem x step), 46 columns",
                                                    f"{out}: 18 rows (problem x step), 46 columns"]
    back = pd.read_parquet(out)
    df = to_dataframe(hand_run)
    assert list(back.columns) == list(df.columns)
    assert back.correct.dtype == "boolean" and back.correct.isna().sum() == 1
    for name in ("index", "step", "n_generated", "n_tokens/all"):
        assert back[name].tolist() == df[name].tolist()
    pd.testing.assert_frame_equal(back[SIGNAL_COLUMNS], df[SIGNAL_COLUMNS])


def test_export_defaults_to_a_csv_in_the_run_directory(hand_run, capsys):
    assert main(["export", str(hand_run)]) == 0
    assert capsys.readouterr().out.startswith(f"{hand_run / 'records.csv'}: 18 rows")
    assert len(pd.read_csv(hand_run / "records.csv")) == 18


def test_export_csv_to_standard_output(hand_run, capsys):
    assert main(["export", str(hand_run), "--csv", "-"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("problem_id,index,task,model,") and len(lines) == 19
    assert captured.err == ""


def test_parquet_without_pyarrow_is_one_line(hand_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # find_spec("pyarrow") is None: not installed
    assert main(["export", str(hand_run), "--parquet", str(tmp_path / "run.parquet")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["tje: error: writing parquet needs pyarrow: pip install pyarrow (or export with --csv)"]
    assert not (tmp_path / "run.parquet").exists()


@pytest.mark.parametrize("target", ["dir", "under-a-file"])
def test_export_to_a_bad_path_is_one_line(hand_run, tmp_path, target, capsys):
    (tmp_path / "afile").write_text("x")
    path = tmp_path if target == "dir" else tmp_path / "afile" / "run.csv"
    assert main(["export", str(hand_run), "--csv", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tje: error: ") and str(path.parent if target != "dir" else path) \
        in err[0]


def test_exported_csv_holds_no_json(tmp_path):
    """No nested objects in any cell (every signal is its own column); missing values are empty cells,
    never NaN, null or None."""
    run = write_run(tmp_path / "run", _with_a_missing_mean(hand_records(), math.nan))
    main(["export", str(run), "--csv", str(tmp_path / "run.csv")])
    text = (tmp_path / "run.csv").read_text()
    for token in ("{", "NaN", "nan", "null", "None", "<NA>"):
        assert token not in text
