"""A run's records as a table: one row per problem and refinement step (``tje export``).

:func:`to_dataframe` flattens ``records.jsonl`` (docs/FORMAT.md) into a pandas DataFrame:

- the problem: ``problem_id``, ``index``, ``task``, ``model``, ``model_revision``, ``family``,
  ``gold``, ``n_steps`` (steps run for the problem: fewer than ``refine.steps`` when the gate
  stopped it);
- the run (from ``config.json``): ``policy`` (``all`` or ``gate``), ``tau`` (the gate threshold,
  NaN when the run has none) and ``gate_signal`` (``<segment>/<column>`` that tau applies to,
  None without a tau);
- the step: ``step``, ``seed``, ``answer``, ``correct`` (pandas' nullable ``boolean``: NA when
  the answer was unparseable), ``grade_reason``, ``n_generated``, ``prompt_tokens``,
  ``prefilled_tokens``, ``reused_tokens``, ``cache``, ``stop_reason``, ``wall_time_s``,
  ``prefill_time_s``, ``n_invalid``; ``text`` and ``answer_text`` with ``text=True``;
- every step mean as a float column ``<segment>/<column>`` (``all/topk_entropy@20``,
  ``answer/full_entropy``, ...; NaN where a segment was empty or the backend could not compute
  the signal) and the token count of each segment as ``n_tokens/<segment>``.

Records are read with :func:`tje_hf.records.read_records` (a torn last line is dropped; NaN may
be written as ``NaN`` or ``null``). Rows are ordered by problem index, then step. pandas is
imported when a table is built, not with this module.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .columns import SEGMENTS, SIGNAL_NAMES
from .records import CONFIG, load_config, read_records, writing

if TYPE_CHECKING:
    import pandas as pd

PROBLEM_FIELDS = ("problem_id", "index", "task", "model", "model_revision", "family", "gold", "n_steps")
RUN_FIELDS = ("policy", "tau", "gate_signal")
STEP_FIELDS = ("step", "seed", "answer", "correct", "grade_reason", "n_generated", "prompt_tokens",
               "prefilled_tokens", "reused_tokens", "cache", "stop_reason", "wall_time_s", "prefill_time_s",
               "n_invalid")
TEXT_FIELDS = ("text", "answer_text")
# pandas dtypes of the fixed columns that are not plain objects: nullable ones keep a missing
# value missing (never a silent False or 0).
INT_FIELDS = ("index", "n_steps", "step", "seed", "n_generated", "prompt_tokens", "prefilled_tokens",
              "reused_tokens", "n_invalid")
FLOAT_FIELDS = ("tau", "wall_time_s", "prefill_time_s")


def fixed_columns(text: bool = False) -> tuple[str, ...]:
    """The columns of :func:`to_dataframe` before the signal columns, in order."""
    return PROBLEM_FIELDS + RUN_FIELDS + STEP_FIELDS + (TEXT_FIELDS if text else ())


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """``policy``, ``tau`` and ``gate_signal`` from the run's ``config.json`` (absent: unknown;
    damaged: RunDirError naming it)."""
    refine = {}
    if (run_dir / CONFIG).is_file():
        refine = load_config(run_dir).get("config", {}).get("refine", {}) or {}
    tau = refine.get("tau")
    signal = None
    if tau is not None:
        signal = f"{refine.get('gate_segment', 'all')}/{refine.get('gate_column', 'topk_entropy@20')}"
    return {"policy": refine.get("policy"), "tau": math.nan if tau is None else float(tau),
            "gate_signal": signal}


def _column_key(name: str) -> tuple:
    """``<segment>/<column>`` in reading order: segments as in SEGMENTS, top-k entropies by k,
    then the other signals in SIGNAL_NAMES order, then anything else by name."""
    segment, _, column = name.partition("/")
    seg_rank = SEGMENTS.index(segment) if segment in SEGMENTS else len(SEGMENTS)
    base, _, k = column.partition("@")
    if base == "topk_entropy" and k.isdigit():
        return seg_rank, segment, 0, int(k), column
    rank = SIGNAL_NAMES.index(base) if base in SIGNAL_NAMES else len(SIGNAL_NAMES)
    return seg_rank, segment, 1, rank, column


def _segment_key(name: str) -> tuple:
    return (SEGMENTS.index(name) if name in SEGMENTS else len(SEGMENTS), name)


def _float(value: Any) -> float:
    """A step mean as a float: None (JSON null) and NaN are NaN."""
    return math.nan if value is None else float(value)


def _step_row(record: dict, step: dict, run: dict[str, Any], text: bool) -> dict[str, Any]:
    row: dict[str, Any] = {name: record.get(name) for name in PROBLEM_FIELDS}
    if row["n_steps"] is None:
        row["n_steps"] = len(record.get("steps", ()))
    row.update(run)
    if run["policy"] is None:
        row["policy"] = record.get("policy")
    row.update({name: step.get(name) for name in STEP_FIELDS + (TEXT_FIELDS if text else ())})
    for segment, means in (step.get("signals") or {}).items():
        for column, value in (means or {}).items():
            row[f"{segment}/{column}"] = _float(value)
    for segment, count in (step.get("counts") or {}).items():
        row[f"n_tokens/{segment}"] = count
    return row


def _rows(records: Iterable[dict], run: dict[str, Any], text: bool) -> list[dict[str, Any]]:
    ordered = sorted(records, key=lambda r: (r.get("index", 0), str(r.get("problem_id"))))
    return [_step_row(record, step, run, text) for record in ordered
            for step in sorted(record.get("steps", ()), key=lambda s: s.get("step", 0))]


def to_dataframe(run_dir: str | Path, *, text: bool = False) -> pd.DataFrame:
    """The run's records as a DataFrame, one row per problem and step (see the module docstring
    for the columns).

    Args:
        run_dir: a run directory (its ``records.jsonl`` and ``config.json``).
        text: also the generated ``text`` and ``answer_text`` of every step (large).

    Example::

        >>> df = tje_hf.to_dataframe("runs/demo")
        >>> df[df.step == 1].groupby("correct")["all/topk_entropy@20"].mean()

    A run without records gives an empty DataFrame with the fixed columns.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    rows = _rows(read_records(run_dir), _run_settings(run_dir), text)
    fixed = fixed_columns(text)
    extra = {name for row in rows for name in row} - set(fixed)
    counts = sorted((n for n in extra if n.startswith("n_tokens/")), key=lambda n: _segment_key(n[9:]))
    signals = sorted(extra - set(counts), key=_column_key)
    df = pd.DataFrame(rows, columns=[*fixed, *signals, *counts])
    for name in INT_FIELDS + tuple(counts):
        df[name] = df[name].astype("Int64")
    for name in FLOAT_FIELDS + tuple(signals):
        df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
    df["correct"] = df["correct"].astype("boolean")
    return df


def write_csv(df: pd.DataFrame, path: str | Path) -> Path | None:
    """``df`` as CSV at ``path`` (``-``: standard output; returns None then). Missing values are
    empty cells."""
    if str(path) == "-":
        df.to_csv(sys.stdout, index=False)
        return None
    path = Path(path)
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """``df`` as a parquet file at ``path`` (needs pyarrow, a dependency of ``datasets``)."""
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError("writing parquet needs pyarrow: pip install pyarrow (or export with --csv)")
    return _atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False, engine="pyarrow"))


def _atomic(path: Path, write) -> Path:
    """Write through a temporary file next to ``path`` and rename: no half-written table. A path
    that exists and is no regular file (``/dev/stdout``, a named pipe, a link to a device) is
    written to directly: renaming over it would replace the device or the link."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give the path of the file to write")
    if path.exists() and not path.is_file():
        with writing(path):
            write(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path):
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["fixed_columns", "to_dataframe", "write_csv", "write_parquet"]
