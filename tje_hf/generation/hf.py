"""``generate_with_entropy``: one ``model.generate`` call with the signal tracker attached.

This is the only module that calls ``model.generate``. It turns prompts into a left-padded
batch, places the :class:`~tje_hf.generation.tracker.EntropyTracker` first in the processor chain, adds the
stop rules and the per-row seeded sampler, runs ``generate`` once, and reads the tracker's device
state back to the host once, after decoding.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..columns import SEGMENTS
from ..config import DecodeConfig
from ..errors import PromptTooLongError
from ..models.segments import GENERIC, SegmentRules
from ..seeds import derive_seed
from .sampling import SeededSampler
from .tracker import (
    STOP_REASONS,
    EntropyTracker,
    TokenBudgetStop,
    WindowMeanStop,
)

Prompt = str | Sequence[dict] | Sequence[int]



@dataclass
class SequenceResult:
    """One generated sequence.

    ``means[segment][column]`` is the mean of a signal over the segment's tokens (segments
    ``all``, ``reasoning``, ``answer``; columns as :func:`tje_hf.generation.tracker.signal_columns`, e.g.
    ``topk_entropy@20`` in bits). NaN where a segment has no token. ``trace`` is ``(n, S)``
    float32 per generated token, ``segments`` ``(n,)`` int8 (0 reasoning, 1 answer, 2 header),
    ``alt_ids``/``alt_logprobs`` ``(n, a)`` the top-a alternatives, when asked.
    """

    token_ids: list[int]
    text: str
    n_generated: int
    stop_reason: str
    means: dict[str, dict[str, float]]
    counts: dict[str, int]
    prompt_tokens: int
    n_invalid: int = 0
    trace: np.ndarray | None = None
    segments: np.ndarray | None = None
    alt_ids: np.ndarray | None = None
    alt_logprobs: np.ndarray | None = None


@dataclass
class GenerationOutput:
    """What one ``generate_with_entropy`` call returns."""

    results: list[SequenceResult]
    columns: tuple[str, ...]
    wall_time_s: float
    tokens_per_s: float
    sequences: torch.Tensor  # (B, L + n) including left padding
    prompt_length: int  # L, the padded prompt length
    cache: Any = None  # the KV cache generate returns (holds L + n - 1 positions)
    prefill_time_s: float = float("nan")  # until the first step's logits: prefill + first forward
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Prompts


def encode_prompts(tokenizer, prompts: Sequence[Prompt], template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids of each prompt: a string is tokenized as plain text (no chat template); a list of
    ``{"role", "content"}`` messages goes through the tokenizer's chat template with the generation
    prompt added; a list of ints is taken as token ids."""
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            out.append(list(tokenizer(prompt, add_special_tokens=True)["input_ids"]))
        elif len(prompt) > 0 and isinstance(prompt[0], dict):
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(f"prompt {i} is a chat message list, but the tokenizer "
                                 f"{type(tokenizer).__name__} has no chat template")
            ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True,
                                                **(template_kwargs or {}))
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out.append([int(t) for t in ids])
        elif all(isinstance(t, (int, np.integer)) for t in prompt) and len(prompt) > 0:
            out.append([int(t) for t in prompt])
        else:
            raise ValueError(f"prompt {i}: expected a string, a chat message list or token ids, "
                             f"got {type(prompt).__name__}")
    return out


def left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L)`` input ids and attention mask, left-padded to the longest prompt."""
    L = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, L - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, L - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Transformers plumbing


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: the model's generation config and the tokenizer's EOS."""
    ids: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.extend([source] if isinstance(source, int) else list(source))
    return sorted({int(i) for i in ids})


def cache_kwarg(model) -> str:
    """``generate``'s name for the KV cache argument: ``cache`` from Transformers 5.24 on (the old
    name still works there, with a deprecation warning), ``past_key_values`` before. ``generate``
    takes it through ``**kwargs``, so the version decides, not the signature."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def output_cache(out) -> Any:
    return getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)


@contextlib.contextmanager
def observer_first(model, observer) -> Iterator[None]:
    """Within the block, ``generate`` runs ``observer`` before every other logits processor.

    Transformers appends user processors after its built-ins (repetition penalty, min length,
    suppress tokens, ...), which change the logits; the only way to see the model's own output is
    to put the observer at the head of the list it builds. ``_get_logits_processor`` is that
    builder (5.0 - 5.24); the tests check the observed values against a teacher-forced forward.
    """
    builder = getattr(model, "_get_logits_processor", None)
    if builder is None:
        raise RuntimeError("this Transformers version has no GenerationMixin._get_logits_processor; "
                           "tje_hf cannot place its raw-logit observer first")

    def build_with_observer_first(*args, **kwargs):
        processors = builder(*args, **kwargs)
        processors.insert(0, observer)
        return processors

    model._get_logits_processor = build_with_observer_first
    try:
        yield
    finally:
        del model._get_logits_processor  # back to the class method


def build_generation_config(model, decode: DecodeConfig, max_new_tokens: int, pad_id: int) -> GenerationConfig:
    """The model's generation config with our decoding settings. Sampling itself is done by
    :class:`SeededSampler`, so ``generate`` always runs greedy (``do_sample=False``); the model's
    own temperature/top-k/top-p defaults are cleared, not silently applied."""
    gen = GenerationConfig.from_dict(model.generation_config.to_dict())
    gen.max_new_tokens = max_new_tokens
    gen.max_length = None
    # Explicit neutral values: generate fills every None from the model's own generation config.
    gen.min_new_tokens = decode.min_new_tokens or None
    gen.do_sample = False
    gen.temperature = 1.0
    gen.top_p = 1.0
    gen.top_k = None
    gen.min_p = None
    gen.repetition_penalty = decode.repetition_penalty
    gen.pad_token_id = pad_id
    gen.num_beams = 1
    gen.num_return_sequences = 1
    gen.return_dict_in_generate = True
    gen.output_logits = False
    gen.output_scores = False
    return gen


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op where kernels run synchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# The wrapper


def generate_with_entropy(
    model,
    tokenizer,
    prompts: Prompt | Sequence[Prompt],
    config: DecodeConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    segment_rules: SegmentRules = GENERIC,
    template_kwargs: dict | None = None,
    token_budget: Sequence[int] | None = None,
    logits_processor: Sequence = (),
) -> GenerationOutput:
    """Generate for a batch of prompts and measure every signal of every generated token.

    Args:
        model, tokenizer: a causal LM and its tokenizer (see :func:`tje_hf.load_model`).
        prompts: one prompt or a list: strings (plain text), chat message lists (chat template,
            generation prompt added) or token-id lists. Batched with left padding.
        config: max_new_tokens, min_new_tokens, temperature (0 = greedy), top_p, top_k,
            repetition_penalty, seed, signals (ks, trace, alternatives) and the stop rules.
        seeds: one 32-bit sampling seed per prompt; default ``derive_seed(config.seed, row)``.
            A row's tokens depend on its seed only, not on the rest of the batch.
        segment_rules: where reasoning ends and the answer begins (``tje_hf.models.families``).
        template_kwargs: extra chat-template arguments (e.g. ``reasoning_effort``).
        token_budget: per-row token budgets (overrides ``config.token_budget``).
        logits_processor: extra processors, run after the observer and before sampling.

    Returns:
        A :class:`GenerationOutput` with one :class:`SequenceResult` per prompt, in order.

    Example::

        lm = tje_hf.load_model()  # SmolLM2-135M-Instruct, the built-in default
        out = tje_hf.generate_with_entropy(lm.model, lm.tokenizer,
                                           [[{"role": "user", "content": "What is 3 + 4?"}]],
                                           tje_hf.DecodeConfig(max_new_tokens=32))
        out.results[0].means["all"]["topk_entropy@20"]  # bits; higher = more uncertain
    """
    config = config or DecodeConfig()
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (dict, int, np.integer))):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("generate_with_entropy: no prompts")
    batch_ids = encode_prompts(tokenizer, prompts, template_kwargs)
    input_ids, attention_mask = left_pad(batch_ids, pad_token_id(tokenizer), model.device)
    return generate_batch(model, tokenizer, input_ids, attention_mask, config, seeds=seeds,
                          segment_rules=segment_rules, token_budget=token_budget,
                          logits_processor=logits_processor)


def pad_token_id(tokenizer) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
    return int(pad_id)


def generate_batch(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: DecodeConfig,
    *,
    seeds: Sequence[int] | None = None,
    segment_rules: SegmentRules = GENERIC,
    cache: Any = None,
    token_budget: Sequence[int] | None = None,
    logits_processor: Sequence = (),
) -> GenerationOutput:
    """The one ``model.generate`` call, on a prepared left-padded batch ``(B, L)``.

    ``cache`` must hold exactly the first ``cache.get_seq_length() < L`` columns of
    ``input_ids`` (build it with :func:`tje_hf.generation.kvcache.plan_reuse`); it is extended in place and
    returned in ``GenerationOutput.cache``.
    """
    device = model.device
    B, L = input_ids.shape
    if cache is not None and not 0 <= cache.get_seq_length() < L:
        raise ValueError(f"the cache holds {cache.get_seq_length()} positions; it must hold fewer than the "
                         f"{L} input positions (generate would silently recompute on top of it)")
    prompt_lengths = attention_mask.sum(-1).tolist()
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(prompt_lengths)
    if context is not None and longest >= context:
        raise PromptTooLongError(f"prompt of {longest} tokens does not fit the model's context of {context} tokens")
    max_new = config.max_new_tokens
    if context is not None and longest + max_new > context:
        max_new = context - longest  # the context, not max_new_tokens, is the binding limit
    if seeds is None:
        seeds = [derive_seed(config.seed, row) for row in range(B)]
    if len(seeds) != B:
        raise ValueError(f"got {len(seeds)} seeds for {B} prompts")

    sig = config.signals
    tracker = EntropyTracker(B, max_new, sig.ks, eos_token_ids(model, tokenizer), device,
                             segment_rules=segment_rules, trace=sig.trace,
                             trace_alternatives=sig.trace_alternatives, full_vocab=sig.full_vocab)
    processors = LogitsProcessorList(list(logits_processor))
    if config.temperature > 0:
        processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        processors.append(SeededSampler(torch.tensor(seeds, dtype=torch.long, device=device)))
    criteria = StoppingCriteriaList()
    ws = config.window_stop
    if ws is not None:
        criteria.append(WindowMeanStop(tracker, ws.column, ws.threshold, ws.window, ws.min_tokens, ws.direction))
    budget = token_budget if token_budget is not None else config.token_budget
    if budget is not None:
        criteria.append(TokenBudgetStop(tracker, torch.as_tensor(budget, device=device)))

    gen_config = build_generation_config(model, config, max_new, pad_token_id(tokenizer))
    kwargs = {}
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    sync_device(device)
    start = time.perf_counter()
    tracker.start_clock()
    with observer_first(model, tracker), torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config,
                             logits_processor=processors, stopping_criteria=criteria, **kwargs)
    tracker.finalize(out.sequences, L)
    sync_device(device)
    wall = time.perf_counter() - start
    results = _collect(tracker, tokenizer, out.sequences, L, prompt_lengths)
    total = sum(r.n_generated for r in results)
    return GenerationOutput(results=results, columns=tracker.columns, wall_time_s=wall,
                            tokens_per_s=total / wall if wall > 0 else float("nan"),
                            sequences=out.sequences, prompt_length=L, cache=output_cache(out),
                            prefill_time_s=tracker.prefill_seconds())


def _collect(tracker: EntropyTracker, tokenizer, sequences: torch.Tensor, L: int,
             prompt_lengths: list[int]) -> list[SequenceResult]:
    """Read the tracker's state to the host, once, and build the per-sequence results."""
    sums = tracker.sums.cpu().numpy()
    counts = tracker.counts.cpu().numpy()
    n_gen = tracker.n_generated.cpu().tolist()
    codes = tracker.stop_code.cpu().tolist()
    invalid = tracker.n_invalid.cpu().tolist()
    gen = sequences[:, L:].cpu().tolist()
    trace = tracker.trace.cpu().numpy() if tracker.trace is not None else None
    segs = tracker.trace_segments.cpu().numpy() if tracker.trace_segments is not None else None
    alt_ids = tracker.alt_ids.cpu().numpy() if tracker.alt_ids is not None else None
    alt_lp = tracker.alt_logprobs.cpu().numpy() if tracker.alt_logprobs is not None else None
    results = []
    for row in range(sequences.shape[0]):
        n = n_gen[row]
        ids = gen[row][:n]
        means = {}
        for s, seg in enumerate(SEGMENTS):
            c = counts[row, s]
            means[seg] = {col: (float(sums[row, s, j] / c) if c > 0 else float("nan"))
                          for j, col in enumerate(tracker.columns)}
        results.append(SequenceResult(
            token_ids=ids,
            text=tokenizer.decode(ids, skip_special_tokens=True),
            n_generated=n,
            stop_reason=STOP_REASONS[codes[row]],
            means=means,
            counts={seg: int(counts[row, s]) for s, seg in enumerate(SEGMENTS)},
            prompt_tokens=int(prompt_lengths[row]),
            n_invalid=invalid[row],
            trace=trace[row, :n].copy() if trace is not None else None,
            segments=segs[row, :n].copy() if segs is not None else None,
            alt_ids=alt_ids[row, :n].copy() if alt_ids is not None else None,
            alt_logprobs=alt_lp[row, :n].copy() if alt_lp is not None else None,
        ))
    return results
