"""The sequential self-refinement loop (docs/method.md section 2), batched, with KV-cache reuse.

Step 1 answers the question; steps 2..N continue the conversation with the refinement
instruction. Under the ``all`` policy every step of every problem runs (calibration and
evaluation runs: any threshold can be evaluated later from the records); under ``gate`` a problem
stops after step 1 when its step-1 signal is at or below ``tau``.

History modes:

* ``template``: the conversation is re-rendered by the chat template at every step, as the
  model was trained to see it (gpt-oss and Qwen3 drop earlier reasoning); the cache is reused up
  to where the re-rendered prompt departs from the tokens it holds.
* ``continuation``: the exact previous tokens (reasoning included) stay in context and the next
  user turn is appended; everything already computed is reused.

This module decides what to generate; a :class:`~tje_hf.generation.backend.Backend` generates,
and keeps (or lets its engine keep) what can be reused between the steps. It knows nothing about
engines, tasks, grading or the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .columns import uncertainty
from .config import DecodeConfig, RefineConfig
from .generation.backend import Backend
from .generation.outputs import ReuseStats, SequenceResult
from .models.families import Family, answer_text
from .seeds import derive_seed


@dataclass
class StepResult:
    """One refinement step of one problem: the step's prompt, how much of it came from a cache
    (``reuse``), what was generated (``generation``: tokens, text, stop reason, per-segment
    signal means, trace), the answer segment's text, and the step's share of its batched call's
    time (``wall_time_s``: the call's wall time divided over its rows by tokens;
    ``prefill_time_s``: the call's time to its first logits)."""

    step: int
    seed: int
    prompt_ids: list[int] = field(repr=False)
    reuse: ReuseStats
    generation: SequenceResult = field(repr=False)
    answer_text: str
    wall_time_s: float
    prefill_time_s: float


#: ``RefineResult.stopped``: why a problem ran fewer than ``steps`` steps. ``gate``: its step-1
#: signal was at or below tau; ``context_full``: its next prompt leaves no room in the model's
#: context (the steps it finished are kept; none when its step-1 prompt already does not fit).
STOPPED = ("gate", "context_full")


@dataclass
class RefineResult:
    """All steps of one problem, and why it stopped early (``stopped``: one of :data:`STOPPED`,
    None when it ran every step). ``prompt_ids``: its step-1 prompt (kept also when no step ran)."""

    problem_id: str
    steps: list[StepResult]
    prompt_hash: str
    stopped: str | None = None
    prompt_ids: list[int] = field(default_factory=list, repr=False)


def gate_value(step: StepResult, column: str, segment: str) -> float:
    """The step's mean of the signal ``column`` over ``segment``, NaN if the segment is empty."""
    return step.generation.means[segment][column]


def prompt_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def refine(
    backend: Backend,
    family: Family,
    conversations: Sequence[list[dict]],
    problem_ids: Sequence[str],
    config: RefineConfig,
    decode: DecodeConfig,
    *,
    run_seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
    on_tokens: Callable[[int, int], None] | None = None,
) -> list[RefineResult]:
    """Run the refinement loop over a batch of problems.

    Args:
        backend: the generation engine (``LoadedModel.backend``, or e.g.
            ``HfBackend(model, tokenizer)``); its tokenizer renders the prompts.
        family: the model family's profile (chat template use, segments, answer extraction).
        conversations: per problem, the step-1 messages (system and user turns).
        problem_ids: per problem, its id (seeds derive from ``(run_seed, id, step)``).
        config: steps N, instruction, policy (``all`` | ``gate`` with ``tau``), history mode,
            cache reuse on/off.
        decode: sampling settings and signals of every step.
        on_step: called with (step, tokens generated in it) after each batched step.
        on_tokens: called with (step, tokens generated so far in it) while a step runs, at most
            about once a second, by a backend with ``reports_progress`` (one host read each).

    A problem whose next prompt leaves no room in ``backend.context_length`` stops before that
    step (``stopped="context_full"``), its finished steps kept; the others go on. At step 1 that
    leaves it with no step at all: one problem that cannot fit never blocks its batch.

    Returns:
        One :class:`RefineResult` per problem, in order.
    """
    if len(conversations) != len(problem_ids):
        raise ValueError(f"{len(conversations)} conversations but {len(problem_ids)} problem ids")
    tokenizer = backend.tokenizer
    rules = family.segment_rules(tokenizer)
    messages = [list(c) for c in conversations]
    prompts = [family.render(tokenizer, m) for m in messages]
    results = [RefineResult(str(pid), [], prompt_hash(p), prompt_ids=list(p))
               for pid, p in zip(problem_ids, prompts, strict=True)]
    active = list(range(len(conversations)))
    backend.drop_cache()  # conversations are numbered per call: nothing may carry over
    try:
        for step in range(1, config.steps + 1):
            # 1) the prompt of this step for every active problem
            if step > 1:
                for i in active:
                    messages[i], prompts[i] = _next_prompt(family, tokenizer, config, messages[i],
                                                           results[i].steps[-1])
            active = _fitting(active, prompts, results, backend.context_length)
            if not active:
                break
            batch = [prompts[i] for i in active]
            seeds = [derive_seed(run_seed, results[i].problem_id, step) for i in active]
            # 2-3) generate; the backend reuses what it kept of each conversation (config.reuse_cache)
            extra = {}
            if on_tokens is not None and getattr(backend, "reports_progress", False):
                extra["progress"] = lambda n, _step=step: on_tokens(_step, n)
            out = backend.generate(batch, decode, seeds=seeds, segment_rules=rules, conversation_ids=active,
                                   reuse_cache=config.reuse_cache, **extra)
            total = sum(r.n_generated for r in out.results) or 1
            for row, (i, res) in enumerate(zip(active, out.results, strict=True)):
                seg = res.segments.tolist() if res.segments is not None else None
                results[i].steps.append(StepResult(
                    step=step, seed=seeds[row], prompt_ids=list(batch[row]), reuse=out.reuse[row], generation=res,
                    answer_text=answer_text(tokenizer, res.token_ids, seg, family),
                    wall_time_s=out.wall_time_s * res.n_generated / total, prefill_time_s=out.prefill_time_s))
            if on_step is not None:
                on_step(step, sum(r.n_generated for r in out.results))
            # 4) the gate: a problem whose step-1 uncertainty is at or below tau stops here (a
            #    confidence column is negated first, as calibration and evaluation do)
            if step == 1 and config.policy == "gate":
                h1 = {i: uncertainty(gate_value(results[i].steps[0], config.gate_column, config.gate_segment),
                                     config.gate_column) for i in active}
                for i in active:
                    if h1[i] <= config.tau:
                        results[i].stopped = "gate"
                active = [i for i in active if not h1[i] <= config.tau]
            if not active:
                break
    finally:
        backend.drop_cache()
    return results


def _fitting(active: list[int], prompts: list[list[int]], results: list[RefineResult],
             context: int | None) -> list[int]:
    """The active problems whose next prompt leaves room for a token in ``context``; the others
    stop here (``context_full``)."""
    if context is None:
        return active
    keep = []
    for i in active:
        if len(prompts[i]) < context:
            keep.append(i)
        else:
            results[i].stopped = "context_full"
    return keep


def _next_prompt(family: Family, tokenizer, config: RefineConfig, messages: list[dict], prev: StepResult
                 ) -> tuple[list[dict], list[int]]:
    """The conversation and prompt of the step after ``prev``, in the configured history mode."""
    if config.history == "template":
        messages = messages + [family.history_turn(tokenizer, prev.generation.token_ids, prev.generation.segments),
                               {"role": "user", "content": config.instruction}]
        return messages, family.render(tokenizer, messages)
    return messages, prev.prompt_ids + family.continuation(tokenizer, prev.generation.token_ids, config.instruction)
