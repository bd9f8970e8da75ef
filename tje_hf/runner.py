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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .columns import signal_columns
from .config import RunConfig, config_hash, to_dict
from .errors import PromptTooLongError
from .models.families import make_family
from .models.loading import LoadedModel, load_backend
from .records import (
    RunDir,
    environment_info,
    load_config,
    problem_record,
    read_records,
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


def _record(cfg: RunConfig, chash: str, lm: LoadedModel, task: Task, problem: Problem, index: int,
            result: RefineResult, run: RunDir, columns: tuple[str, ...]) -> dict:
    """Grade every step of ``result``, append the traces, and build the problem's record."""
    steps = []
    for step in result.steps:
        grade = task.grade(problem, step.answer_text)
        trace = step_trace(step.generation, columns) if cfg.decode.signals.trace else None
        ref = run.append_trace(trace, columns) if trace is not None else None
        steps.append(step_record(step, grade, ref))
    return problem_record(result, steps, problem=problem, index=index, task=task.name, config_hash=chash,
                          model=cfg.model.name_or_path, model_revision=lm.revision, family=lm.family,
                          policy=cfg.refine.policy)


def run(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True, lm: LoadedModel | None = None,
        shard: tuple[int, int] | None = None, task: Task | None = None, device: str | None = None,
        on_problem: Callable[[dict], None] | None = None) -> RunSummary:
    """Run ``cfg`` into ``cfg.out_dir`` (resuming), and return the run's summary.

    Args:
        overwrite: start an existing run directory over instead of resuming it.
        progress: show a progress bar (problems, tokens/s, time left) on stderr.
        lm: an already loaded model (default: load ``cfg.model``; not loaded if nothing is left).
        shard: ``(index, count)``: run every ``count``-th problem from ``index`` into
            ``shards/records-{index}.jsonl`` (see :func:`merge_shards`).
        task: the task (default: ``load_task(cfg.task)``).
        device: where to load the model when ``cfg.model.device_map`` is unset.
        on_problem: called with each record after it is durably written.
    """
    start = time.perf_counter()
    task = task or load_task(cfg.task)
    chash = config_hash(cfg)
    records_name = "records.jsonl" if shard is None else f"shards/records-{shard[0]}.jsonl"
    if shard is not None:
        (Path(cfg.out_dir) / "shards").mkdir(parents=True, exist_ok=True)
    run_dir = RunDir.open(cfg.out_dir, to_dict(cfg), chash, overwrite=overwrite and (shard is None or shard[0] == 0),
                          records_name=records_name)
    indexed = list(enumerate(task.problems))
    if shard is not None:
        indexed = [(i, p) for i, p in indexed if i % shard[1] == shard[0]]
    done = run_dir.finished_ids()
    todo = [(i, p) for i, p in indexed if p.id not in done]
    if todo:
        # The memory check before loading sizes the KV cache for this run's batch and for the
        # longest conversation it can build (a prompt allowance plus every step's tokens).
        context = 2048 + cfg.refine.steps * cfg.decode.max_new_tokens
        lm = lm or load_backend(cfg.model, cfg.backend, device=device, batch_size=cfg.batch_size,
                                context_tokens=context)
        env = environment_info({
            "model_revision": lm.revision, "model_source": lm.source, "family": lm.family, "backend": cfg.backend,
            **lm.backend.describe(), "task_source": task.source, "n_problems": len(task.problems)})
        if shard is None:
            run_dir.write_environment(env)
        elif shard[0] == 0:
            run_dir.write_environment({**env, "shards": shard[1]})
        _run_batches(cfg, chash, lm, task, todo, run_dir, progress, on_problem)
    records = run_dir.records()
    summary = summarize(run_dir.path, records, time.perf_counter() - start, len(todo))
    return summary


def _run_batches(cfg, chash, lm, task, todo, run_dir, progress, on_problem) -> None:
    from tqdm.auto import tqdm

    family = make_family(lm.family, cfg.model.reasoning_effort, cfg.model.template_date,
                         enable_thinking=cfg.model.enable_thinking)
    columns = signal_columns(cfg.decode.signals.ks)
    steps = cfg.refine.steps
    # The bar counts problems, advancing by a fraction at each refinement step of a batch, so that
    # its rate and time left are meaningful long before the first batch ends.
    bar = tqdm(total=len(todo), desc="problems", unit="problem", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}{postfix}]")
    tokens, t0 = 0, time.perf_counter()
    batch_size = 0

    def on_step(step: int, n_tokens: int) -> None:
        nonlocal tokens
        tokens += n_tokens
        bar.update(batch_size / steps)
        bar.set_postfix_str(f"step {step}/{steps}, {tokens / max(time.perf_counter() - t0, 1e-9):.1f} tok/s")

    try:
        for b in range(0, len(todo), cfg.batch_size):
            batch = todo[b:b + cfg.batch_size]
            batch_size = len(batch)
            start_n = bar.n
            try:
                results = refine(lm.backend, family, [_messages(cfg, p) for _, p in batch],
                                 [p.id for _, p in batch], cfg.refine, cfg.decode, run_seed=cfg.seed,
                                 on_step=on_step)
            except PromptTooLongError as exc:
                ids = ", ".join(p.id for _, p in batch)
                raise PromptTooLongError(f"problems {ids}: {exc}") from None
            for (index, problem), result in zip(batch, results, strict=True):
                record = _record(cfg, chash, lm, task, problem, index, result, run_dir, columns)
                run_dir.append(record)
                if on_problem is not None:
                    on_problem(record)
            bar.update(start_n + len(batch) - bar.n)  # exact once the batch is on disk (gated steps)
    finally:
        bar.close()


def merge_shards(out_dir: str | Path) -> Path:
    """Join ``shards/records-*.jsonl`` (and their traces) into ``records.jsonl``, ordered by
    problem index, skipping problems the main records already hold. Safe to run again."""
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
    return out
