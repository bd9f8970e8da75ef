"""The runner: a model over a task with the refinement loop, into a crash-safe run directory.

``run(cfg)`` loads the task and the model, skips the problems the run directory already holds,
runs the rest in batches through :func:`tje_hf.refinement.refine` on the model's backend, grades
every step, and appends one record per finished problem (``tje_hf.records`` owns the format).
Running the same config again continues where it stopped; a different config in the same
directory is an error unless told to start over. With ``shard=(i, n)`` the process runs every
n-th problem into its own records shard (data parallel over GPUs: one process per GPU);
:func:`merge_shards` joins them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .columns import signal_columns
from .config import RunConfig, config_hash, to_dict
from .errors import ConfigError, ModelLoadError, RunDirError
from .models.families import make_family
from .models.loading import LoadedModel, load_backend, rank_device
from .records import (
    TASK_HASH_KEY,
    RunDir,
    clear_shard_failure,
    environment_info,
    load_config,
    mark_shard_failed,
    problem_record,
    read_records,
    shard_failure,
    shard_records_name,
    step_record,
    step_trace,
)
from .refinement import RefineResult, refine
from .tasks import Problem, Task, load_task

log = logging.getLogger(__name__)

@dataclass
class RunSummary:
    """What a finished run holds: per step, problems, accuracy and tokens."""

    run_dir: Path
    n_problems: int
    n_new: int
    counts: list[int]  # per step: problems that ran it
    accuracy: list[float]  # per step, over problems that ran it (unparseable answers count wrong)
    unparseable: list[int]
    mean_tokens: list[float]
    wall_time_s: float

    def table(self) -> str:
        lines = ["| step | problems | accuracy | unparseable | mean tokens |", "|---|---|---|---|---|"]
        for i, acc in enumerate(self.accuracy):
            lines.append(f"| {i + 1} | {self.counts[i]} | {acc:.3f} | {self.unparseable[i]} | "
                         f"{self.mean_tokens[i]:.1f} |")
        return "\n".join(lines)


def summarize(run_dir: str | Path, records: list[dict] | None = None, wall: float = 0.0, n_new: int = 0) -> RunSummary:
    records = read_records(run_dir) if records is None else records
    n_steps = max((len(r["steps"]) for r in records), default=0)
    acc, unp, toks, counts = [], [], [], []
    for k in range(n_steps):
        steps = [r["steps"][k] for r in records if len(r["steps"]) > k]
        counts.append(len(steps))
        acc.append(sum(bool(s["correct"]) for s in steps) / len(steps))
        unp.append(sum(s["correct"] is None for s in steps))
        toks.append(sum(s["n_generated"] for s in steps) / len(steps))
    return RunSummary(Path(run_dir), len(records), n_new, counts, acc, unp, toks, wall)


def _messages(cfg: RunConfig, problem: Problem) -> list[dict]:
    msgs = []
    if cfg.system_prompt:
        msgs.append({"role": "system", "content": cfg.system_prompt})
    msgs.append({"role": "user", "content": problem.question})
    return msgs


def task_problems_hash(task: Task) -> str:
    """A content hash of the task's problems, in order: ids, questions, gold answers, answer
    types and choices (what the prompts and the grading depend on)."""
    rows = [[p.id, p.question, p.gold, p.answer_type, list(p.choices) if p.choices is not None else None]
            for p in task.problems]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def _check_signals(cfg: RunConfig, lm: LoadedModel) -> None:
    """A top-k larger than the model's vocabulary is an error (its column would equal the full
    entropy)."""
    vocab = getattr(lm.backend, "vocab_size", None) or len(lm.backend.tokenizer)
    cfg.decode.signals.check_vocabulary(vocab, "decode.signals.ks")


def _check_logits(batch, results: list[RefineResult]) -> None:
    """Fail when a step's logits were invalid (NaN, or no finite entry) at every token; warn
    per problem and step where only some were."""
    dead, partial = [], []
    for (_, problem), result in zip(batch, results, strict=True):
        for step in result.steps:
            gen = step.generation
            if gen.n_invalid and gen.n_invalid >= gen.n_generated:
                dead.append(f"{problem.id} step {step.step}")
            elif gen.n_invalid:
                partial.append(f"{problem.id} step {step.step} ({gen.n_invalid}/{gen.n_generated} tokens)")
    for where in partial:
        log.warning("invalid (NaN or non-finite) logits at some tokens of problem %s; their signals are "
                    "left out of the means", where)
    if dead:
        raise ModelLoadError(f"the model's logits were invalid (NaN or no finite value) at every token of: "
                             f"{', '.join(dead)}; check the model's dtype and quantization (float16 overflow?)")


def _record(cfg: RunConfig, chash: str, lm: LoadedModel, task: Task, problem: Problem, index: int,
            result: RefineResult, run: RunDir, columns: tuple[str, ...]) -> dict:
    """Grade every step of ``result``, append the traces, and build the problem's record."""
    steps = []
    for step in result.steps:
        grade = task.grade(problem, step.answer_text)
        trace = step_trace(step.generation, columns) if cfg.decode.signals.trace else None
        ref = run.append_trace(trace, columns) if trace is not None else None
        steps.append(step_record(step, grade, ref))
    record = problem_record(result, steps, problem=problem, index=index, task=task.name, config_hash=chash,
                          model=cfg.model.name_or_path, model_revision=lm.revision, family=lm.family,
                          policy=cfg.refine.policy, prompt=lm.tokenizer.decode(result.prompt_ids))
    record["stopped"] = result.stopped  # why it ran fewer than refine.steps steps (None: it ran them all)
    return record


def run(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True, lm: LoadedModel | None = None,
        shard: tuple[int, int] | None = None, task: Task | None = None, device: str | None = None,
        on_problem: Callable[[dict], None] | None = None) -> RunSummary:
    """Run ``cfg`` into ``cfg.out_dir`` (resuming), and return the run's summary.

    Args:
        overwrite: start an existing run directory over instead of resuming it.
        progress: show a progress bar (problems, tokens/s, time left) on stderr.
        lm: an already loaded model, left as it is (default: load ``cfg.model``, not loaded if
            nothing is left, and shut down (``Backend.shutdown``) before returning, so that the
            next run in this process finds the device free).
        shard: ``(index, count)``: run every ``count``-th problem from ``index`` into
            ``shards/records-{index}.jsonl`` (see :func:`merge_shards`).
        task: the task (default: ``load_task(cfg.task)``).
        device: where to load the model when ``cfg.model.device_map`` is unset.
        on_problem: called with each record after it is durably written.
    """
    start = time.perf_counter()
    task = task or load_task(cfg.task)
    chash = config_hash(cfg)
    records_name = "records.jsonl" if shard is None else shard_records_name(shard[0])
    task_hash = task_problems_hash(task)
    opening_over = overwrite and (shard is None or shard[0] == 0)
    run_dir = RunDir.open(cfg.out_dir, {**to_dict(cfg), TASK_HASH_KEY: task_hash}, chash, overwrite=opening_over,
                          records_name=records_name)
    owned = None  # the model this call loads, and so releases
    try:
        indexed = list(enumerate(task.problems))
        if shard is not None:
            indexed = [(i, p) for i, p in indexed if i % shard[1] == shard[0]]
        done = run_dir.finished_ids()
        todo = [(i, p) for i, p in indexed if p.id not in done]
        if todo:
            if lm is None:
                lm = owned = load_backend(cfg.model, cfg.backend, signals=cfg.decode.signals, device=device,
                                          batch_size=cfg.batch_size, context_tokens=longest_conversation(cfg))
            _check_signals(cfg, lm)
            env = environment_info({
                "model_revision": lm.revision, "model_source": lm.source, "family": lm.family, "backend": cfg.backend,
                **lm.backend.describe(), "task_source": task.source, "n_problems": len(task.problems)})
            if shard is None:
                run_dir.write_environment(env)
            elif shard[0] == 0:
                run_dir.write_environment({**env, "shards": shard[1]})
            _run_batches(cfg, chash, lm, task, todo, run_dir, progress, on_problem)
        records = run_dir.records()
    finally:
        run_dir.close()  # releases the run directory's lock
        if owned is not None:
            owned.backend.shutdown()
    summary = summarize(run_dir.path, records, time.perf_counter() - start, len(todo))
    return summary


#: Tokens the memory check allows for a problem's first prompt (chat template, system message and
#: question) on top of the generated ones: more than any packaged task's prompt needs.
PROMPT_ALLOWANCE = 2048


def longest_conversation(cfg: RunConfig) -> int:
    """Tokens of the longest sequence a run can build, prompt allowance plus every step's new tokens:
    the memory check before loading sizes the KV cache of each of ``cfg.batch_size`` sequences for
    it (an upper bound: template history drops earlier reasoning from the prompt)."""
    return PROMPT_ALLOWANCE + cfg.refine.steps * cfg.decode.max_new_tokens


class ProgressMeter:
    """Moves a problems bar with the tokens of a batch: ``on_tokens`` (a step's tokens so far,
    reported by the backend about once a second) within a step, ``on_step`` exactly at each
    step's end. The postfix shows the step, its tokens, the tokens per second of the run and an
    upper bound on the step's time left (every row running to ``max_new_tokens``)."""

    def __init__(self, bar, steps: int, max_new_tokens: int, clock=time.perf_counter):
        self.bar, self.steps, self.max_new, self.clock = bar, steps, max_new_tokens, clock
        self.tokens, self.t0 = 0, clock()
        self.rows, self.base = 0, 0.0
        self.reports = 0

    def start_batch(self, rows: int) -> None:
        self.rows, self.base = rows, float(self.bar.n)

    def _move_to(self, target: float) -> None:
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def on_tokens(self, step: int, n_tokens: int) -> None:
        self.reports += 1
        fraction = min(n_tokens / max(self.rows * self.max_new, 1), 0.99)
        self._move_to(self.base + self.rows * (step - 1 + fraction) / self.steps)
        rate = (self.tokens + n_tokens) / max(self.clock() - self.t0, 1e-9)
        left = max(self.rows * self.max_new - n_tokens, 0) / max(rate, 1e-9)
        self.bar.set_postfix_str(f"step {step}/{self.steps}: {n_tokens} tok, {rate:.1f} tok/s, "
                                 f"step <= {left:.0f}s left")

    def on_step(self, step: int, n_tokens: int) -> None:
        self.tokens += n_tokens
        self._move_to(self.base + self.rows * step / self.steps)
        rate = self.tokens / max(self.clock() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"step {step}/{self.steps}, {rate:.1f} tok/s")


def _run_batches(cfg, chash, lm, task, todo, run_dir, progress, on_problem) -> None:
    from tqdm.auto import tqdm

    family = make_family(lm.family, cfg.model.reasoning_effort, cfg.model.template_date,
                         enable_thinking=cfg.model.enable_thinking)
    columns = signal_columns(cfg.decode.signals.ks)
    steps = cfg.refine.steps
    # The bar counts problems, advancing by a fraction at each refinement step of a batch and,
    # within a step, with the tokens generated so far, so that its rate and time left are
    # meaningful long before the first batch ends.
    bar = tqdm(total=len(todo), desc="problems", unit="problem", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}{postfix}]")
    meter = ProgressMeter(bar, steps, cfg.decode.max_new_tokens)
    try:
        for b in range(0, len(todo), cfg.batch_size):
            batch = todo[b:b + cfg.batch_size]
            meter.start_batch(len(batch))
            start_n = bar.n
            # a problem whose prompt cannot fit comes back with no steps (stopped: context_full) and
            # is recorded as such: its batch-mates go on, and a resume does not meet it again
            results = refine(lm.backend, family, [_messages(cfg, p) for _, p in batch],
                             [p.id for _, p in batch], cfg.refine, cfg.decode, run_seed=cfg.seed,
                             on_step=meter.on_step, on_tokens=meter.on_tokens if progress else None)
            _check_logits(batch, results)
            for (index, problem), result in zip(batch, results, strict=True):
                record = _record(cfg, chash, lm, task, problem, index, result, run_dir, columns)
                run_dir.append(record)
                if on_problem is not None:
                    on_problem(record)
            bar.update(start_n + len(batch) - bar.n)  # exact once the batch is on disk (gated steps)
    finally:
        bar.close()


def merge_shards(out_dir: str | Path) -> int:
    """Join ``shards/records-*.jsonl`` (and their traces) into ``records.jsonl``, ordered by
    problem index, skipping problems the main records already hold; the number of records joined.
    Safe to run again."""
    out = Path(out_dir)
    cfg = load_config(out)
    main = RunDir.open(out, cfg["config"], cfg["config_hash"])
    have = main.finished_ids()
    gathered = []
    for shard_file in sorted((out / "shards").glob("records-*.jsonl")):
        shard_run = RunDir(out, records_name=f"shards/{shard_file.name}")
        gathered += [(rec, shard_run) for rec in shard_run.records() if rec["problem_id"] not in have]
    gathered.sort(key=lambda item: item[0]["index"])
    for rec, shard_run in gathered:
        steps = []
        for step in rec["steps"]:
            if step.get("trace"):
                arr = shard_run.read_trace(step["trace"])
                step = {**step, "trace": main.append_trace(arr, tuple(step["trace"]["columns"])).to_json()}
            steps.append(step)
        main.append({**rec, "steps": steps})
        have.add(rec["problem_id"])
    return len(gathered)


# --------------------------------------------------------------------------------------------
# Data parallel: one process per GPU, each on its own shard


def launch_id() -> str:
    """What the processes of one launch share and a later launch does not: the launcher's PID on
    this host (``accelerate launch`` and ``torchrun`` start every rank of a machine as its
    children) and the rendezvous port."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getppid()}:{os.environ.get('MASTER_PORT', '')}"


def run_data_parallel(cfg: RunConfig, rank: int, world: int, local_rank: int, *, overwrite: bool = False,
                      progress: bool = True, poll_s: float = 5.0) -> RunSummary | None:
    """Run rank ``rank``'s shard of ``cfg`` (every ``world``-th problem) on the GPU ``local_rank``
    of this machine; on rank 0, then wait for every other shard and merge them into
    ``records.jsonl``. Returns the merged run's summary on rank 0, None on the others.

    The rank's GPU becomes the current CUDA device before anything touches CUDA, so that what
    Transformers places on "the current device" (gpt-oss's MXFP4 expert blocks, FP8 kernel
    launches, CUDA events) lands on this rank's GPU. ``model.device_map`` (one model spread over
    every GPU) is refused: each rank would spread a whole copy over every GPU.

    No collective operation at the end: shards can end hours apart when steps are long, and a
    barrier's timeout would kill the ranks still running. Rank 0 polls the shards' records files
    instead (every ``poll_s`` seconds) until each holds all its problems. A rank that fails says
    so on disk (``shards/records-R.failed.json``) and rank 0 stops with its error; the launcher
    also stops every rank when one dies.
    """
    if cfg.model.device_map and world > 1:
        raise ConfigError(f"model.device_map = {cfg.model.device_map!r} with {world} processes: each process would "
                          "spread a whole copy of the model over every GPU; run one process with device_map "
                          "(no accelerate launch), or data parallel without it (one GPU per process)")
    device = rank_device(local_rank)
    launch = launch_id()
    task = load_task(cfg.task)
    clear_shard_failure(cfg.out_dir, rank)
    try:
        summary = run(cfg, overwrite=overwrite, progress=progress, shard=(rank, world), task=task, device=device)
    except BaseException as exc:  # Ctrl-C included: rank 0 must not wait for this shard
        mark_shard_failed(cfg.out_dir, rank, launch, " ".join(str(exc).split()) or type(exc).__name__)
        raise
    if rank != 0:
        return None
    wait_for_shards(cfg.out_dir, task, world, launch=launch, poll_s=poll_s)
    # every shard's new records are new in records.jsonl; the wall time is rank 0's (all ran together)
    return summarize(cfg.out_dir, wall=summary.wall_time_s, n_new=merge_shards(cfg.out_dir))


def wait_for_shards(out_dir: str | Path, task: Task, world: int, *, launch: str, poll_s: float = 5.0,
                    report_every_s: float = 600.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once the shard of every rank ``1..world-1`` holds a record of each of its problems
    (those at indices ``i`` with ``i % world == rank``); :class:`RunDirError` naming the rank and
    its error as soon as one marks its shard failed in ``launch``. Reads a shard again only when
    its file has grown; says every ``report_every_s`` seconds which ranks it still waits for."""
    ids = [str(p.id) for p in task.problems]
    pending = {r: set(ids[r::world]) for r in range(1, world)}
    sizes: dict[int, int] = {}
    last_report = -math.inf  # the first wait is reported at once
    while True:
        for r in list(pending):
            error = shard_failure(out_dir, r, launch)
            if error is not None:
                raise RunDirError(f"rank {r} stopped: {error}; the other shards are kept, run the same command "
                                  "again to resume")
            path = Path(out_dir) / shard_records_name(r)
            size = path.stat().st_size if path.exists() else 0
            if size != sizes.get(r):
                sizes[r] = size
                pending[r] -= {str(rec["problem_id"]) for rec in read_records(path, regrades=False)}
            if not pending[r]:
                del pending[r]
        if not pending:
            return
        if time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            left = ", ".join(f"rank {r}: {len(p)}" for r, p in sorted(pending.items()))
            log.warning("rank 0's shard is done; waiting for the other shards (problems left: %s)", left)
        sleep(poll_s)
