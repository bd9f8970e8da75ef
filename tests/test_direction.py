"""One direction rule, live and offline: for every signal column (entropies, where higher is more
uncertain, and confidences, where higher is more confident), the live gate of ``policy: gate``
stops exactly the problems that :func:`tje_hf.analysis.table.gate` stops on the records of a
``policy: all`` run with the same seeds, at a tau calibrated from that run; and the window stop
takes its direction from the column."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tje_hf.analysis.table import gate, run_table
from tje_hf.columns import higher_is_uncertain
from tje_hf.config import (
    DecodeConfig,
    ModelSpec,
    RefineConfig,
    RunConfig,
    TaskConfig,
    WindowStopConfig,
    from_dict,
)
from tje_hf.errors import ConfigError
from tje_hf.records import read_records
from tje_hf.runner import run

COLUMNS = ("topk_entropy@20", "full_entropy", "deepconf_confidence", "self_certainty", "token_logprob")


def config(tmp_path, name: str, refine: RefineConfig) -> RunConfig:
    return RunConfig(model=ModelSpec(name_or_path="builtin:smollm2"), task=TaskConfig(name="arith", size=6, seed=3),
                     decode=DecodeConfig(max_new_tokens=8, temperature=0.7), refine=refine,
                     batch_size=6, seed=11, out_dir=str(tmp_path / name))


@pytest.fixture(scope="module")
def all_records(tmp_path_factory, smollm2):
    cfg = config(tmp_path_factory.mktemp("direction"), "all", RefineConfig(steps=2, policy="all"))
    run(cfg, lm=smollm2, progress=False)
    return read_records(cfg.out_dir)


def per_problem_stops(records: list[dict], column: str, tau: float) -> dict[str, bool]:
    """Which problems ``evaluation.gate`` stops at ``tau``: the gate on each problem alone."""
    table = run_table(records, signal=column)
    stops = {}
    for i, pid in enumerate(table.problem_ids):
        one = type(table)(problem_ids=(pid,), values=table.values[i:i + 1], correct=table.correct[i:i + 1],
                          tokens=table.tokens[i:i + 1], signal=table.signal, segment=table.segment)
        stops[pid] = gate(one, tau).n_stopped == 1
    assert sum(stops.values()) == gate(table, tau).n_stopped
    return stops


def split_tau(records: list[dict], column: str) -> float:
    """A tau halfway between two neighbouring step-1 values (oriented: higher = more uncertain),
    near the middle, so that some problems stop and some go on."""
    h1 = np.sort(run_table(records, signal=column).h1)
    h1 = h1[np.isfinite(h1)]
    assert len(np.unique(h1)) >= 2, f"{column}: step-1 values all equal: {h1}"
    uniq = np.unique(h1)
    mid = len(uniq) // 2
    return float((uniq[mid - 1] + uniq[mid]) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("column", COLUMNS)
def test_live_gate_stops_what_the_offline_gate_stops(column, all_records, smollm2, tmp_path):
    table = run_table(all_records, signal=column)
    raw = np.array([r["steps"][0]["signals"]["all"][column] for r in all_records], dtype=float)
    # the table is oriented: a confidence is negated, an entropy is not
    assert np.allclose(table.h1, raw if higher_is_uncertain(column) else -raw, equal_nan=True)
    for tau in (split_tau(all_records, column),):  # between two step-1 values: some stop, some go on
        if not math.isfinite(tau):
            continue
        expected = per_problem_stops(all_records, column, tau)
        cfg = config(tmp_path, f"gate-{tau:.6g}", RefineConfig(steps=2, policy="gate", tau=tau, gate_column=column))
        run(cfg, lm=smollm2, progress=False)
        live = {r["problem_id"]: r for r in read_records(cfg.out_dir)}
        stopped = {pid: len(r["steps"]) == 1 for pid, r in live.items()}
        assert stopped == expected, (column, tau, table.h1)
        # same seeds: the live step 1 is the step 1 the gate was evaluated on
        for rec in all_records:
            assert live[rec["problem_id"]]["steps"][0]["text"] == rec["steps"][0]["text"]
    # the split tau stops some and lets others go on
    split = per_problem_stops(all_records, column, split_tau(all_records, column))
    assert 0 < sum(split.values()) < len(split)


@pytest.mark.parametrize("column", COLUMNS)
def test_window_stop_direction_follows_the_column(column):
    ws = WindowStopConfig(column=column, window=4, min_tokens=4)
    assert ws.direction == ("above" if higher_is_uncertain(column) else "below")
    assert "direction" not in {f for f in WindowStopConfig.__dataclass_fields__}


def test_window_stop_direction_key_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        from_dict(DecodeConfig, {"window_stop": {"column": "deepconf_confidence", "direction": "below"}})
    message = str(err.value)
    assert "\n" not in message and "window_stop.direction" in message
    with pytest.raises(TypeError):
        WindowStopConfig(direction="above")  # type: ignore[call-arg]
