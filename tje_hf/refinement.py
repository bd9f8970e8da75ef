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

This module decides what to generate; ``tje_hf.generation.hf`` generates and ``tje_hf.generation.kvcache`` owns
the cache rules. It knows nothing about tasks, grading or the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import DecodeConfig, RefineConfig
from .generation.hf import SequenceResult, generate_batch, pad_token_id
from .generation.kvcache import CachedPrefix, ReusePlan, new_cache, plan_reuse
from .models.families import Family, answer_text
from .seeds import derive_seed

_SENTINEL = "\u2063TJE-SENTINEL\u2063"


@dataclass
class StepResult:
    """One refinement step of one problem."""

    step: int
    seed: int
    text: str
    answer_text: str
    answer: str | None
    token_ids: list[int]
    n_generated: int
    prompt_tokens: int
    prefilled_tokens: int
    reused_tokens: int
    common_prefix: int
    cache: str  # "none" | "reused" | "fresh" | "prefix-cache" (a serving engine's own)
    stop_reason: str
    signals: dict[str, dict[str, float]]
    counts: dict[str, int]
    n_invalid: int
    wall_time_s: float
    prefill_time_s: float  # of the batched generate call this step ran in
    prompt_ids: list[int] = field(repr=False, default_factory=list)
    trace: np.ndarray | None = field(repr=False, default=None)
    segments: np.ndarray | None = field(repr=False, default=None)
    alt_ids: np.ndarray | None = field(repr=False, default=None)
    alt_logprobs: np.ndarray | None = field(repr=False, default=None)


@dataclass
class RefineResult:
    """All steps of one problem, and where the gate stopped it."""

    problem_id: str
    steps: list[StepResult]
    prompt_hash: str

    @property
    def final(self) -> StepResult:
        return self.steps[-1]


def gate_value(step: StepResult, column: str, segment: str) -> float:
    """The step's mean of the signal ``column`` over ``segment``, NaN if the segment is empty."""
    return step.signals[segment][column]


def prompt_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def continuation_suffix(family: Family, tokenizer, instruction: str, ended: bool) -> list[int]:
    """Tokens that follow a finished assistant turn to open the next user turn and the next
    assistant turn, as the family's template renders them. ``ended``: the generation's last token
    already closed the turn (an EOS), so the template's own end-of-turn token is not repeated."""
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL},
            {"role": "user", "content": instruction}]
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **family.template_kwargs)
    if _SENTINEL not in text:
        raise ValueError(f"family {family.name!r}: the chat template does not render assistant content verbatim")
    tail = text.split(_SENTINEL, 1)[1]
    ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if ended and ids and ids[0] in special:
        ids = ids[1:]
    return ids


def refine(
    model,
    tokenizer,
    family: Family,
    conversations: Sequence[list[dict]],
    problem_ids: Sequence[str],
    config: RefineConfig,
    decode: DecodeConfig,
    *,
    run_seed: int = 0,
    extractor: Callable[[str], str | None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[RefineResult]:
    """Run the refinement loop over a batch of problems.

    Args:
        model, tokenizer, family: the loaded model (a Transformers model, or a
            ``tje_hf.generation.VllmBackend``) and its family profile.
        conversations: per problem, the step-1 messages (system and user turns).
        problem_ids: per problem, its id (seeds derive from ``(run_seed, id, step)``).
        config: steps N, instruction, policy (``all`` | ``gate`` with ``tau``), history mode,
            cache reuse on/off.
        decode: sampling settings and signals of every step.
        extractor: answer text -> extracted answer (None when unparseable); default: none.
        on_step: called with (step, tokens generated in it) after each batched step.

    Returns:
        One :class:`RefineResult` per problem, in order.
    """
    if len(conversations) != len(problem_ids):
        raise ValueError(f"{len(conversations)} conversations but {len(problem_ids)} problem ids")
    rules = family.segment_rules(tokenizer)
    pad = pad_token_id(tokenizer)
    # A serving engine (the vLLM backend) generates from token ids and manages its own cache.
    engine = getattr(model, "is_serving_engine", False)
    device = None if engine else model.device
    eos = {tokenizer.eos_token_id} if engine else set(_eos_ids(model, tokenizer))
    n = len(conversations)
    messages = [list(c) for c in conversations]
    prompts = [family.render(tokenizer, m) for m in messages]
    results = [RefineResult(str(pid), [], prompt_hash(p)) for pid, p in zip(problem_ids, prompts, strict=True)]
    active = list(range(n))
    prefix: CachedPrefix | None = None
    prefix_rows: list[int] = []  # problem index of each row of `prefix`

    for step in range(1, config.steps + 1):
        # 1) the prompt of this step for every active problem
        if step > 1:
            for i in active:
                prev = results[i].steps[-1]
                if config.history == "template":
                    messages[i] = messages[i] + [family.history_message(prev.answer_text),
                                                 {"role": "user", "content": config.instruction}]
                    prompts[i] = family.render(tokenizer, messages[i])
                else:
                    ended = bool(prev.token_ids) and prev.token_ids[-1] in eos
                    prompts[i] = prev.prompt_ids + prev.token_ids + continuation_suffix(
                        family, tokenizer, config.instruction, ended)
        batch = [prompts[i] for i in active]
        seeds = [derive_seed(run_seed, results[i].problem_id, step) for i in active]
        if engine:
            # 2-3) a serving engine reuses prompt prefixes by itself (vLLM prefix caching)
            out = model.generate(batch, decode, seeds=seeds, segment_rules=rules)
            cached = out.extras.get("cached_prompt_tokens") or [0] * len(batch)
            plan = ReusePlan(None, None, None, list(cached), [len(x) - c for x, c in zip(batch, cached, strict=True)],
                             list(cached), "prefix-cache" if step > 1 else "none")
        else:
            # 2) reuse what the cache holds, prefill the rest
            if config.reuse_cache and prefix is not None:
                rows = [prefix_rows.index(i) for i in active]
                plan = plan_reuse(prefix, batch, pad, device, rows=rows)
            else:
                plan = plan_reuse(None, batch, pad, device)
            cache = plan.cache
            if config.reuse_cache and cache is None:
                cache = new_cache(model)
            # 3) generate
            out = generate_batch(model, tokenizer, plan.input_ids, plan.attention_mask, decode, seeds=seeds,
                                 segment_rules=rules, cache=cache)
        total = sum(r.n_generated for r in out.results) or 1
        for row, (i, res) in enumerate(zip(active, out.results, strict=True)):
            results[i].steps.append(_step_result(step, seeds[row], res, plan, row, tokenizer, family, rules,
                                                 extractor, out.wall_time_s * res.n_generated / total, batch[row],
                                                 out.prefill_time_s))
        if on_step is not None:
            on_step(step, sum(r.n_generated for r in out.results))
        # 4) keep the cache and its layout for the next step
        if config.reuse_cache and not engine:
            prefix = CachedPrefix.after_generate(out.cache, out.sequences, plan.attention_mask,
                                                 [r.n_generated for r in out.results])
            prefix_rows = list(active)
        # 5) the gate: a problem whose step-1 signal is at or below tau stops here
        if step == 1 and config.policy == "gate":
            active = [i for i in active
                      if not gate_value(results[i].steps[0], config.gate_column, config.gate_segment) <= config.tau]
        if not active:
            break
    return results


def _step_result(step: int, seed: int, res: SequenceResult, plan: ReusePlan, row: int, tokenizer, family: Family,
                 rules, extractor, wall: float, prompt_ids: list[int], prefill: float) -> StepResult:
    seg = res.segments.tolist() if res.segments is not None else None
    ans = answer_text(tokenizer, res.token_ids, seg, family)
    return StepResult(
        step=step, seed=seed, text=res.text, answer_text=ans, answer=extractor(ans) if extractor else None,
        token_ids=res.token_ids, n_generated=res.n_generated, prompt_tokens=res.prompt_tokens,
        prefilled_tokens=plan.prefilled[row], reused_tokens=plan.reused[row], common_prefix=plan.common_prefix[row],
        cache=plan.mode, stop_reason=res.stop_reason, signals=res.means, counts=res.counts,
        n_invalid=res.n_invalid, wall_time_s=wall, prefill_time_s=prefill, prompt_ids=list(prompt_ids), trace=res.trace,
        segments=res.segments, alt_ids=res.alt_ids, alt_logprobs=res.alt_logprobs)


def _eos_ids(model, tokenizer) -> list[int]:
    from .generation.hf import eos_token_ids

    return eos_token_ids(model, tokenizer)
