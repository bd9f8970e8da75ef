"""The Hugging Face Transformers backend: one ``model.generate`` call with the signal tracker attached.

This is the only module that calls ``model.generate``. It turns prompts into a left-padded
batch, places the :class:`~tje_hf.generation.tracker.EntropyTracker` first in the processor chain, adds the
stop rules and the per-row seeded sampler, runs ``generate`` once, and reads the tracker's device
state back to the host once, after decoding.

:func:`generate_with_entropy` is the public one-call entry point (strings, chat messages or token
ids); :func:`generate_batch` runs a prepared batch; :class:`HfBackend` is the
:class:`~tje_hf.generation.backend.Backend` the refinement loop drives, holding the KV cache of
the previous step (``tje_hf.generation.kvcache``) between its calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar

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

from ..config import DecodeConfig
from ..models.memory import model_context, prefill_chunk
from ..models.segments import GENERIC, SegmentRules
from .kvcache import CachedPrefix, ReusePlan, new_cache, plan_reuse
from .outputs import (
    GenerationOutput,
    ReuseStats,
    SequenceResult,
    check_prompts_fit,
    end_of_turn_ids,
    left_pad,
    length_stop,
    pad_token_id,
    row_seeds,
    sequence_result,
    tokens_per_second,
)
from .sampling import SeededSampler
from .tracker import (
    STOP_CONTEXT,
    STOP_REASONS,
    EntropyTracker,
    ProgressReport,
    TokenBudgetStop,
    WindowMeanStop,
)

__all__ = ["HfBackend", "encode_prompts", "generate_batch", "generate_with_entropy"]

Prompt = str | Sequence[dict] | Sequence[int]


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


# --------------------------------------------------------------------------------------------
# Transformers plumbing


def eos_token_ids(model, tokenizer) -> tuple[int, ...]:
    """Every id that ends a generation: the model's generation config's and the tokenizer's EOS
    (:func:`~tje_hf.generation.outputs.end_of_turn_ids`)."""
    return end_of_turn_ids(model.generation_config.eos_token_id, tokenizer)


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


@contextlib.contextmanager
def own_cache(model, gen_config: GenerationConfig, passed: bool) -> Iterator[None]:
    """Within the block, when ``passed`` (tje_hf hands ``generate`` its own cache), neither the
    call's config ``gen_config`` nor the model's generation config names a cache implementation:
    a checkpoint may (Gemma's "static"), and ``generate`` refuses one beside a cache. It fills
    every unset field of the call's config from the model's, so the model's own is cleared for
    the call and restored after."""
    config = model.generation_config
    named = getattr(config, "cache_implementation", None)
    if passed:
        gen_config.cache_implementation = None
    if not passed or named is None:
        yield
        return
    config.cache_implementation = None
    try:
        yield
    finally:
        config.cache_implementation = named


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


def vocab_size(model) -> int:
    """The width of the model's logits (the vocabulary every top-k is taken over)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


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
            A row's sampling noise depends on its seed only, not on the rest of the batch. Its
            tokens are batch-independent where its logits are (float32 on a CPU, tested); on a GPU
            in bf16 the batch changes the logits' last bits, and so can change the tokens from the
            first near-tie on (:mod:`tje_hf.generation.sampling`).
        segment_rules: where reasoning ends and the answer begins (``tje_hf.models.families``).
        template_kwargs: extra chat-template arguments (e.g. ``reasoning_effort``).
        token_budget: per-row token budgets (overrides ``config.token_budget``).
        logits_processor: extra processors, run after the observer and before sampling.

    Raises:
        ConfigError: a top-k size of ``config.signals.ks`` exceeds the model's vocabulary (its
            column would equal the full entropy).

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
    progress: Callable[[int], None] | None = None,
    progress_interval: float = 1.0,
    prefill_chunk: int | None = None,
) -> GenerationOutput:
    """The one ``model.generate`` call, on a prepared left-padded batch ``(B, L)``. A top-k size
    of ``config.signals`` over the model's vocabulary is a ConfigError, before anything runs.

    ``cache`` must hold exactly the first ``cache.get_seq_length() < L`` columns of
    ``input_ids`` (build it with :func:`tje_hf.generation.kvcache.plan_reuse`); it is extended in place and
    returned in ``GenerationOutput.cache`` (the model's cache is turned on for the call, whatever
    its generation config says).

    No row runs past the model's context: the call generates at most ``context - shortest
    prompt`` tokens, and a row whose own prompt leaves less room stops there with the stop reason
    ``context_full``.

    ``progress``: called with the tokens generated so far in this call, at most once per
    ``progress_interval`` seconds (:class:`~tje_hf.generation.tracker.ProgressReport`: one host
    read per report, none per step).

    ``prefill_chunk``: prefill at most this many positions a forward pass (Transformers' chunked
    prefill), which bounds eager attention's scores (:func:`tje_hf.models.memory.prefill_chunk`).
    """
    device = model.device
    B, L = input_ids.shape
    held = cache.get_seq_length() if cache is not None else 0
    if cache is not None and not 0 <= held < L:
        raise ValueError(f"the cache holds {held} positions; it must hold fewer than the "
                         f"{L} input positions (generate would silently recompute on top of it)")
    config.signals.check_vocabulary(vocab_size(model))  # a top-k over it would read as the full entropy
    prompt_lengths = attention_mask.sum(-1).tolist()
    context = model_context(model.config)
    check_prompts_fit(prompt_lengths, context)
    max_new, room = context_room(prompt_lengths, config.max_new_tokens, context)
    seeds = row_seeds(seeds, config, B)

    sig = config.signals
    tracker = EntropyTracker(B, max_new, sig.ks, eos_token_ids(model, tokenizer), device,
                             segment_rules=segment_rules, trace=sig.trace,
                             trace_alternatives=sig.trace_alternatives, full_vocab=sig.full_vocab,
                             # tje_hf's warpers and sampler never write into the raw logits; a caller's might
                             copy_logits=bool(logits_processor))
    processors = _processors(config, seeds, device, logits_processor)
    criteria = _criteria(config, tracker, token_budget, device)
    if room is not None:  # after the caller's budget: a row stopped by both keeps "token_budget"
        criteria.append(TokenBudgetStop(tracker, torch.as_tensor(room, device=device), code=STOP_CONTEXT))
    if progress is not None:
        criteria.append(ProgressReport(tracker, progress, progress_interval))
    gen_config = build_generation_config(model, config, max_new, pad_token_id(tokenizer))
    kwargs = {cache_kwarg(model): cache} if cache is not None else {}
    if prefill_chunk is not None and prefill_chunk < L - held:
        gen_config.prefill_chunk_size = prefill_chunk
        gen_config.use_cache = True  # chunks extend a cache
    if cache is not None:
        gen_config.use_cache = True  # a checkpoint may ship use_cache: false; reuse needs the cache filled
    sync_device(device)
    start = time.perf_counter()
    tracker.start_clock()
    with observer_first(model, tracker), own_cache(model, gen_config, cache is not None), torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config,
                             logits_processor=processors, stopping_criteria=criteria, **kwargs)
    tracker.finalize(out.sequences, L)
    sync_device(device)
    wall = time.perf_counter() - start
    rooms = [context - n for n in prompt_lengths] if context is not None else [None] * B
    results = _collect(tracker, tokenizer, out.sequences, L, prompt_lengths, config.max_new_tokens, rooms)
    reused = attention_mask[:, :held].sum(-1).tolist()
    reuse = [ReuseStats("reused" if held else "none", int(r), int(n - r), int(r))
             for r, n in zip(reused, prompt_lengths, strict=True)]
    return GenerationOutput(results=results, columns=tracker.columns, wall_time_s=wall,
                            tokens_per_s=tokens_per_second(results, wall),
                            sequences=out.sequences, prompt_length=L, cache=output_cache(out),
                            prefill_time_s=tracker.prefill_seconds(), reuse=reuse)


def context_room(prompt_lengths: Sequence[int], max_new_tokens: int, context: int | None
                 ) -> tuple[int, list[int] | None]:
    """``(max_new, room)``: the call's token limit, ``max_new_tokens`` cut to what the shortest
    prompt leaves in ``context``, and per row the tokens its own prompt leaves (None when every
    row has room for ``max_new``, or the context is unknown)."""
    if context is None:
        return max_new_tokens, None
    max_new = max(min(max_new_tokens, context - min(prompt_lengths)), 1)
    room = [context - n for n in prompt_lengths]
    return max_new, (room if min(room) < max_new else None)


def _processors(config: DecodeConfig, seeds: Sequence[int], device, extra: Sequence) -> LogitsProcessorList:
    """The caller's processors, then (when sampling) temperature, top-k, top-p and the per-row
    seeded sampler. ``generate`` itself runs greedy: with the sampler last, its argmax is the sample."""
    processors = LogitsProcessorList(list(extra))
    if config.temperature > 0:
        processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        processors.append(SeededSampler(torch.tensor(seeds, dtype=torch.long, device=device)))
    return processors


def _criteria(config: DecodeConfig, tracker: EntropyTracker, token_budget: Sequence[int] | None,
              device) -> StoppingCriteriaList:
    """The in-step stop rules: the window-mean stop and the per-row token budget."""
    criteria = StoppingCriteriaList()
    ws = config.window_stop
    if ws is not None:
        criteria.append(WindowMeanStop(tracker, ws.column, ws.threshold, ws.window, ws.min_tokens))
    budget = token_budget if token_budget is not None else config.token_budget
    if budget is not None:
        criteria.append(TokenBudgetStop(tracker, torch.as_tensor(budget, device=device)))
    return criteria


def _collect(tracker: EntropyTracker, tokenizer, sequences: torch.Tensor, L: int, prompt_lengths: list[int],
             max_new_tokens: int, rooms: list[int | None]) -> list[SequenceResult]:
    """Read the tracker's state to the host, once, and build the per-sequence results (a row cut
    at the room its prompt left is ``context_full`` even when the call's own limit stopped it)."""
    sums = tracker.sums.cpu().numpy()
    counts = tracker.counts.cpu().numpy()
    n_gen = tracker.n_generated.cpu().tolist()
    codes = tracker.stop_code.cpu().tolist()
    invalid = tracker.n_invalid.cpu().tolist()
    gen = sequences[:, L:].cpu().tolist()
    per_token = {name: (value.cpu().numpy() if value is not None else None) for name, value in (
        ("trace", tracker.trace), ("segments", tracker.trace_segments), ("alt_ids", tracker.alt_ids),
        ("alt_logprobs", tracker.alt_logprobs))}
    results = []
    for row in range(sequences.shape[0]):
        n = n_gen[row]
        rows = {name: (arr[row, :n].copy() if arr is not None else None) for name, arr in per_token.items()}
        reason = length_stop(STOP_REASONS[codes[row]], n, max_new_tokens, None, rooms[row])
        results.append(sequence_result(gen[row][:n], tokenizer=tokenizer, stop_reason=reason,
                                       sums=sums[row], counts=counts[row], columns=tracker.columns,
                                       prompt_tokens=prompt_lengths[row], n_invalid=invalid[row], **rows))
    return results


# --------------------------------------------------------------------------------------------
# The backend


class HfBackend:
    """A Transformers causal LM and its tokenizer as a :class:`~tje_hf.generation.backend.Backend`.

    :meth:`generate` runs :func:`generate_batch`. With ``reuse_cache`` it keeps the call's KV
    cache as a :class:`~tje_hf.generation.kvcache.CachedPrefix` (the cache and the token layout it
    holds) together with the conversation of each of its rows; the next call's continuing rows
    are planned against it with :func:`~tje_hf.generation.kvcache.plan_reuse`, which cuts the
    cache back to each row's common prefix so that only the rest is prefilled.
    """

    name: ClassVar[str] = "hf"
    manages_prefix_cache: ClassVar[bool] = False
    #: :meth:`generate` takes ``progress`` (tokens so far, at a low rate); the refinement loop
    #: passes it only to a backend that says so.
    reports_progress: ClassVar[bool] = True

    def __init__(self, model, tokenizer, *, context_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        #: The longest context the run's memory check sized (``load_model``'s ``context_tokens``):
        #: with eager attention, prefills are chunked to keep the scores within what it counted.
        self.context_tokens = context_tokens
        self._prefix: CachedPrefix | None = None
        self._prefix_rows: list[Hashable] = []  # the conversation of each row of _prefix

    @property
    def pad_token_id(self) -> int:
        return pad_token_id(self.tokenizer)

    @property
    def context_length(self) -> int | None:
        return model_context(self.model.config)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return eos_token_ids(self.model, self.tokenizer)

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits (the vocabulary every top-k is taken over)."""
        return vocab_size(self.model)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        decode: DecodeConfig,
        *,
        seeds: Sequence[int] | None = None,
        segment_rules: SegmentRules = GENERIC,
        token_budget: Sequence[int] | None = None,
        conversation_ids: Sequence[Hashable] | None = None,
        reuse_cache: bool = False,
        progress: Callable[[int], None] | None = None,
        progress_interval: float = 1.0,
    ) -> GenerationOutput:
        """See :meth:`tje_hf.generation.backend.Backend.generate`. ``reuse`` modes: ``none``
        (nothing held for the row's conversation, or ``reuse_cache`` off), ``reused`` (the cache
        cut back to the common prefix), ``fresh`` (a needed state was gone, or a layer cannot be
        cut back, e.g. a linear-attention layer: a full prefill). ``progress``: see
        :func:`generate_batch`."""
        batch = [[int(t) for t in p] for p in prompts]
        if not batch or not all(batch):
            raise ValueError("HfBackend.generate: no prompts, or an empty one")
        keys = list(conversation_ids) if conversation_ids is not None else list(range(len(batch)))
        if len(keys) != len(batch):
            raise ValueError(f"{len(keys)} conversation ids for {len(batch)} prompts")
        plan = self._plan(batch, keys, reuse_cache)
        cache = plan.cache
        if reuse_cache and cache is None:
            cache = new_cache(self.model)  # sliding-window layers record their past, for the next cut
        out = generate_batch(self.model, self.tokenizer, plan.input_ids, plan.attention_mask, decode, seeds=seeds,
                             segment_rules=segment_rules, cache=cache, token_budget=token_budget,
                             progress=progress, progress_interval=progress_interval,
                             prefill_chunk=self._prefill_chunk(plan.input_ids.shape[1]))
        out.reuse = [ReuseStats(plan.mode, r, p, c)
                     for r, p, c in zip(plan.reused, plan.prefilled, plan.common_prefix, strict=True)]
        if reuse_cache:
            self._prefix = CachedPrefix.after_generate(out.cache, out.sequences, plan.attention_mask,
                                                       [r.n_generated for r in out.results])
            self._prefix_rows = keys
        else:
            self.drop_cache()  # what it held no longer follows the conversations
        return out

    def _plan(self, batch: list[list[int]], keys: list[Hashable], reuse_cache: bool) -> ReusePlan:
        device = self.model.device
        held = self._prefix is not None and all(k in self._prefix_rows for k in keys)
        if not (reuse_cache and held):
            return plan_reuse(None, batch, self.pad_token_id, device)
        rows = [self._prefix_rows.index(k) for k in keys]
        prefix, self._prefix = self._prefix, None  # consumed: plan_reuse rebuilds its cache
        return plan_reuse(prefix, batch, self.pad_token_id, device, rows=rows)

    def _prefill_chunk(self, width: int) -> int | None:
        """Positions a prefill chunk of an input ``width`` positions wide may hold (eager attention
        with a sized context only; None: one pass)."""
        if self.context_tokens is None or getattr(self.model.config, "_attn_implementation", None) != "eager":
            return None
        return prefill_chunk(self.model.config, width, self.context_tokens)

    def drop_cache(self) -> None:
        self._prefix = None
        self._prefix_rows = []

    def shutdown(self) -> None:
        """Drop the kept cache; the model's memory goes with the last reference to it."""
        self.drop_cache()

    def describe(self) -> dict:
        return {
            "model_class": type(self.model).__name__,
            "model_dtype": str(next(self.model.parameters()).dtype),
            "model_device": str(self.model.device),
            # the effective generation config: checkpoints may ship penalties or EOS ids
            "model_generation_config": self.model.generation_config.to_dict(),
            "engine_args": None,
        }
