"""The vLLM backend: :class:`VllmBackend` is a :class:`~tje_hf.generation.backend.Backend` on a vLLM
engine, returning the shared result types of :mod:`tje_hf.generation.outputs`.

vLLM returns, per generated token, the full-vocabulary log-probabilities of its top-``n`` tokens
(``SamplingParams(logprobs=n)``) computed from the model's **raw** logits when the engine runs with
``logprobs_mode="raw_logprobs"`` (before penalties, temperature, top-k and top-p; an engine-level
setting, forced here). From those ``n`` values this module computes, per token:

=========================  ======  ==============================================================
column                      unit    from the top-n log-probabilities
=========================  ======  ==============================================================
``topk_entropy@k``          bits    exact: the top-k renormalisation cancels the full-vocabulary
                                    normaliser (docs/method.md section 1), computed by
                                    :func:`tje_hf.generation.signals.topk_entropies_from_sorted`, the
                                    function the HF path uses. Higher = more uncertain.
``deepconf_confidence``     nats    exact: ``-(1/20) * sum`` of the top-20 log-probabilities.
                                    Higher = more confident.
``token_logprob``           nats    exact: the sampled token's log-probability (vLLM always
                                    returns it). Higher = more confident.
``full_entropy``            bits    **unavailable**: needs the whole vocabulary. NaN.
``self_certainty``          nats    **unavailable**: needs the whole vocabulary. NaN.
=========================  ======  ==============================================================

"Exact" means equal to the HF path's value up to floating-point rounding and to the engines'
numerics (kernels, batching); ``tests_vllm/`` measures the difference on a tiny model. The
unavailable columns are kept (so that ``columns`` and the trace layout equal the HF path's) but hold
NaN, and ``GenerationOutput.extras["unavailable_signals"]`` names them: never invented.

vLLM itself is imported only when the engine is first built (``VllmBackend.llm``), so this module
imports without vLLM installed. Its CPU build, the tests and the install are described in
``docs/vllm.md``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..columns import SEGMENTS, signal_columns
from ..config import DecodeConfig, SignalConfig
from ..models.segments import ANSWER, GENERIC, REASONING, SegmentRules, segment_labels
from .outputs import (
    GenerationOutput,
    ReuseStats,
    SequenceResult,
    check_prompts_fit,
    end_of_turn_ids,
    left_pad,
    length_stop,
    means_from_sums,
    pad_token_id,
    row_seeds,
    sequence_result,
    tokens_per_second,
)
from .signals import DEEPCONF_K, deepconf_from_top_logprobs, topk_entropies_from_sorted

#: Columns that need the full vocabulary, which vLLM's top-n log-probabilities do not give.
UNAVAILABLE_SIGNALS = ("full_entropy", "self_certainty")


def logprobs_needed(signals: SignalConfig) -> int:
    """Log-probabilities a token the engine must return for ``signals``: DeepConf's 20, the largest
    top-k size, and the trace's alternatives, whichever is largest (``VllmBackend(num_logprobs=)``)."""
    return max(DEEPCONF_K, *signals.ks, signals.trace_alternatives if signals.trace else 0)


#: vLLM ``finish_reason`` -> tje_hf stop reason (``tje_hf.generation.tracker.STOP_REASONS`` names).
_FINISH_REASONS = {"stop": "eos", "length": "max_new_tokens"}


class VllmBackend:
    """A vLLM engine for one model, as a :class:`~tje_hf.generation.backend.Backend`.

    Args:
        model_path: a local model directory (or a Hub id where the Hub is reachable), as for
            ``vllm.LLM(model=...)``.
        dtype: the engine's weight/activation dtype (``"auto"``, ``"float32"``, ``"bfloat16"``,
            ``"float16"``).
        tensor_parallel_size: GPUs to shard the model over (vLLM tensor parallelism).
        max_model_len: context length of the engine (default: the model's).
        enable_prefix_caching: vLLM's automatic prefix caching. On by default: a refinement step's
            prompt (the previous conversation) shares its prefix with the previous step's prompt
            and output, so the engine reuses those KV blocks without any code here; the number of
            prompt tokens served from the cache is reported per row in
            ``extras["cached_prompt_tokens"]`` and ``GenerationOutput.reuse``. This replaces the
            HF backend's explicit cache.
        seed: the engine's global seed (per-request sampling seeds are given to :meth:`generate`).
        num_logprobs: log-probabilities returned per token (``SamplingParams.logprobs``): at least
            20 (DeepConf's k) and at least every k of ``decode.signals.ks``.
        tokenizer: the Transformers tokenizer for chat templates and decoding (default: the
            engine's own, ``LLM.get_tokenizer()``).
        **engine_kwargs: passed to ``vllm.LLM`` unchanged (e.g. ``skip_tokenizer_init=True``,
            ``enforce_eager=True``, ``gpu_memory_utilization``, ``block_size``).

    The engine is built on first use of :attr:`llm` (tens of seconds even for a tiny model).
    ``logprobs_mode`` is always ``"raw_logprobs"``; ``max_logprobs`` defaults to ``num_logprobs``.
    """

    name: ClassVar[str] = "vllm"
    #: The engine reuses prompt prefixes by itself: the refinement loop hands it whole prompts.
    manages_prefix_cache: ClassVar[bool] = True

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        num_logprobs: int = 20,
        tokenizer: Any = None,
        **engine_kwargs: Any,
    ):
        if num_logprobs < DEEPCONF_K:
            raise ValueError(f"num_logprobs = {num_logprobs}: must be >= {DEEPCONF_K} (DeepConf's k)")
        mode = engine_kwargs.pop("logprobs_mode", "raw_logprobs")
        if mode != "raw_logprobs":
            raise ValueError(f"logprobs_mode = {mode!r}: the signals need the raw (pre-temperature, "
                             "pre-penalty) log-probabilities, 'raw_logprobs'")
        max_logprobs = engine_kwargs.pop("max_logprobs", num_logprobs)
        if max_logprobs != -1 and max_logprobs < num_logprobs:
            raise ValueError(f"max_logprobs = {max_logprobs}: must be -1 or >= num_logprobs ({num_logprobs})")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size = {tensor_parallel_size}: must be >= 1")
        self.model_path = str(model_path)
        self.num_logprobs = num_logprobs
        self.engine_args: dict[str, Any] = dict(
            model=self.model_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            logprobs_mode="raw_logprobs",
            max_logprobs=max_logprobs,
            **engine_kwargs,
        )
        self._llm = None
        self._given_tokenizer = tokenizer
        self._tokenizer = tokenizer
        self._eos: tuple[int, ...] | None = None
        self._seen: set[Hashable] = set()  # conversations generated for since drop_cache()

    # -- engine and model facts ----------------------------------------------------------------

    @property
    def llm(self):
        """The ``vllm.LLM`` engine, built on first access."""
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise ImportError("the vLLM backend needs vllm: `pip install vllm` on a GPU machine, "
                                  "or `bash scripts/setup_vllm_env.sh` for the CPU build (docs/vllm.md)") from exc
            self._llm = LLM(**self.engine_args)
        return self._llm

    @property
    def has_tokenizer(self) -> bool:
        """False when the engine runs with ``skip_tokenizer_init=True`` (token ids in and out only)."""
        return not bool(self.engine_args.get("skip_tokenizer_init", False))

    @property
    def tokenizer(self):
        """The tokenizer given to the constructor (or set here), else the engine's; None with
        ``skip_tokenizer_init=True`` and none given."""
        if self._tokenizer is None and self.has_tokenizer:
            self._tokenizer = self.llm.get_tokenizer()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._given_tokenizer = self._tokenizer = tokenizer
        self._eos = None

    @property
    def max_model_len(self) -> int:
        """The engine's context length in tokens (prompt plus generated)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def context_length(self) -> int:
        return self.max_model_len

    @property
    def pad_token_id(self) -> int:
        """The id that pads ``GenerationOutput.sequences``: the tokenizer's pad, else its EOS, else
        the model config's ``pad_token_id`` / first ``eos_token_id``, else 0."""
        return pad_token_id(self.tokenizer, fallback=self._config_pad_id)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The generation config's EOS ids and the tokenizer's EOS, as on the HF backend (the
        engine stops on the same ids: it reads ``generation_config.json`` too)."""
        if self._eos is None:
            self._eos = end_of_turn_ids(self._generation_eos(), self.tokenizer)
        return self._eos

    def _hub_kwargs(self) -> dict:
        kwargs = {"trust_remote_code": bool(self.engine_args.get("trust_remote_code", False))}
        if self.engine_args.get("revision"):
            kwargs["revision"] = self.engine_args["revision"]
        return kwargs

    def _generation_eos(self) -> int | list[int] | None:
        """``eos_token_id`` of the model's generation config, as Transformers builds it: from
        ``generation_config.json``, else from the model config."""
        from transformers import AutoConfig, GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.model_path, **self._hub_kwargs()).eos_token_id
        except OSError:
            pass
        try:
            return getattr(AutoConfig.from_pretrained(self.model_path, **self._hub_kwargs()), "eos_token_id", None)
        except (OSError, ValueError):
            return None

    @functools.cached_property
    def _config_pad_id(self) -> int:
        """Read once: the model directory does not change under the engine."""
        config_file = Path(self.model_path) / "config.json"
        if config_file.is_file():
            cfg = json.loads(config_file.read_text())
            for key in ("pad_token_id", "eos_token_id"):
                value = cfg.get(key)
                if isinstance(value, list) and value:
                    value = value[0]
                if isinstance(value, int):
                    return value
        return 0

    def describe(self) -> dict:
        return {"model_class": type(self).__name__, "model_dtype": None, "model_device": None,
                "model_generation_config": None, "engine_args": self.engine_args}

    def drop_cache(self) -> None:
        """Forget the conversations (the engine's prefix cache manages its own blocks)."""
        self._seen.clear()

    def shutdown(self) -> None:
        """Stop the engine's background processes (if any), drop the engine, and tear down the
        distributed state it set up in this process, so that another engine (another model) can
        be built in the same process. With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the model runs
        in this process and its parallel groups stay behind otherwise: a second engine would
        reuse them, and a mixture-of-experts model after a dense one fails to load ("expert
        parallel group is not initialized"). The next use of :attr:`llm` builds a fresh engine."""
        if self._llm is not None:
            core = getattr(self._llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self._llm = None
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        self._tokenizer = self._given_tokenizer

    # -- generation ----------------------------------------------------------------------------

    def sampling_params(self, decode: DecodeConfig, seed: int, max_tokens: int):
        """The ``vllm.SamplingParams`` of one row: ``decode``'s settings, the row's seed, the
        row's token limit, ``logprobs=num_logprobs`` in vLLM's flat format (a constant number of
        Python objects per request instead of a dict per token), and no detokenisation (text is
        decoded here with the tokenizer, as the HF backend does)."""
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            max_tokens=max_tokens,
            min_tokens=min(decode.min_new_tokens, max_tokens),
            temperature=decode.temperature,
            top_p=decode.top_p,
            top_k=decode.top_k if decode.top_k > 0 else -1,
            repetition_penalty=decode.repetition_penalty,
            seed=int(seed),
            logprobs=self.num_logprobs,
            flat_logprobs=True,
            detokenize=False,
        )

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        decode: DecodeConfig | None = None,
        seeds: Sequence[int] | None = None,
        segment_rules: SegmentRules = GENERIC,
        detokenize: bool | None = None,
        token_budget: Sequence[int] | int | None = None,
        *,
        conversation_ids: Sequence[Hashable] | None = None,
        reuse_cache: bool = False,
    ) -> GenerationOutput:
        """Generate for a batch of tokenized prompts and measure the signals of every generated token.

        Args:
            prompt_token_ids: B prompts as token-id lists (apply the chat template beforehand, e.g.
                with :func:`tje_hf.generation.hf.encode_prompts`).
            decode: max_new_tokens, min_new_tokens, temperature (0 = greedy), top_p, top_k
                (0 = off), repetition_penalty, seed, signals (ks, trace, trace_alternatives).
                ``window_stop`` is not supported (it needs a per-step hook in the engine) and
                raises ValueError.
            seeds: one sampling seed per prompt (vLLM's per-request seed); default
                ``derive_seed(decode.seed, row)``. A row's tokens depend on its seed, not on the
                rest of the batch. The same seed does **not** give the HF backend's sample: the two
                engines draw differently.
            segment_rules: where reasoning ends and the answer begins (``tje_hf.models.families``).
            detokenize: fill ``SequenceResult.text`` (``tokenizer.decode(ids,
                skip_special_tokens=True)``); default: when the engine has a tokenizer. True with
                ``skip_tokenizer_init=True`` raises ValueError.
            token_budget: per-row (or one) token limit below ``max_new_tokens``; a row that hits
                it stops with ``"token_budget"`` (default ``decode.token_budget``).
            conversation_ids: the conversation of each row; a row whose conversation was seen
                since :meth:`drop_cache` reports ``reuse`` mode ``prefix-cache``, others ``none``.
            reuse_cache: ignored: the engine's prefix caching reuses prefixes by itself
                (``manages_prefix_cache``).

        Returns:
            A :class:`~tje_hf.generation.outputs.GenerationOutput` with one
            :class:`~tje_hf.generation.outputs.SequenceResult` per prompt, in order. ``means[segment][column]``
            averages each column over the segment's generated tokens (``all``: every generated
            token, the EOS included; ``reasoning`` / ``answer``: tokens of that class), NaN for an
            empty segment and for the unavailable columns; ``trace`` ``(n, S)`` float32 and
            ``segments`` ``(n,)`` int8 when ``decode.signals.trace``; ``alt_ids`` ``(n, a)`` int32
            / ``alt_logprobs`` ``(n, a)`` float16 (nats) with ``trace_alternatives = a``.
            ``sequences`` is ``(B, L + n_max)``: prompts left-padded to ``L``, generations
            right-padded, with :attr:`pad_token_id`. ``cache`` is None (vLLM's prefix cache is
            internal). ``reuse[row]``: the prompt tokens served from the prefix cache.
            ``extras``: ``backend``, ``unavailable_signals``, ``num_logprobs``,
            ``cached_prompt_tokens`` (per row, from the prefix cache), ``finish_reasons`` (vLLM's).
        """
        decode = decode or DecodeConfig()
        prompts = _token_prompts(prompt_token_ids)
        n_alt = self._check_decode(decode)
        seeds = row_seeds(seeds, decode, len(prompts))
        if detokenize is None:
            detokenize = self.has_tokenizer
        if detokenize and not self.has_tokenizer:
            raise ValueError("detokenize = True, but the engine was built with skip_tokenizer_init=True")
        budget = token_budget if token_budget is not None else decode.token_budget
        budgets = self._row_budgets(budget, len(prompts))
        context = self.max_model_len
        check_prompts_fit([len(ids) for ids in prompts], context, owner="engine")
        limits = [min(decode.max_new_tokens, budgets[row], context - len(ids)) for row, ids in enumerate(prompts)]
        params = [self.sampling_params(decode, seed, limit) for seed, limit in zip(seeds, limits, strict=True)]

        from vllm.inputs import TokensPrompt

        llm = self.llm
        start = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - start

        columns = signal_columns(tuple(decode.signals.ks))
        tokenizer = self.tokenizer if detokenize else None
        results = [self._result(row, request, prompts[row], decode, budgets[row], columns, segment_rules,
                                n_alt, tokenizer) for row, request in enumerate(outputs)]
        cached = [getattr(request, "num_cached_tokens", None) for request in outputs]
        sequences, L = _pack(prompts, [r.token_ids for r in results], self.pad_token_id)
        extras = {
            "backend": "vllm",
            "unavailable_signals": list(UNAVAILABLE_SIGNALS),
            "num_logprobs": self.num_logprobs,
            "cached_prompt_tokens": cached,
            "finish_reasons": [request.outputs[0].finish_reason for request in outputs],
        }
        return GenerationOutput(results=results, columns=columns, wall_time_s=wall,
                                tokens_per_s=tokens_per_second(results, wall), sequences=sequences,
                                prompt_length=L, cache=None, extras=extras,
                                reuse=self._reuse(prompts, cached, conversation_ids))

    def _check_decode(self, decode: DecodeConfig) -> int:
        """Refuse what the engine cannot measure or honour; the number of alternatives to keep."""
        sig = decode.signals
        ks = tuple(sig.ks)
        if max(ks) > self.num_logprobs:
            raise ValueError(f"decode.signals.ks = {ks}: every k must be <= num_logprobs "
                             f"({self.num_logprobs}); build the backend with num_logprobs={max(ks)}")
        n_alt = sig.trace_alternatives if sig.trace else 0
        if n_alt > self.num_logprobs:
            raise ValueError(f"decode.signals.trace_alternatives = {n_alt}: must be <= num_logprobs "
                             f"({self.num_logprobs})")
        if decode.window_stop is not None:
            raise ValueError(f"decode.window_stop = {decode.window_stop}: not supported by the vLLM "
                             "backend (it needs a per-step hook); use the HF backend or disable it")
        return n_alt

    def _result(self, row: int, request, prompt: list[int], decode: DecodeConfig, budget: int,
                columns: tuple[str, ...], segment_rules: SegmentRules, n_alt: int, tokenizer) -> SequenceResult:
        """One row's result from vLLM's ``RequestOutput``."""
        if len(request.outputs) != 1:
            raise RuntimeError(f"vLLM returned {len(request.outputs)} completions for prompt {row}; expected 1")
        completion = request.outputs[0]
        ids = [int(t) for t in completion.token_ids]
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            got = None if completion.logprobs is None else len(completion.logprobs)
            raise RuntimeError(f"vLLM returned {got} logprob entries for {len(ids)} tokens of prompt {row}")
        ks = tuple(decode.signals.ks)
        values, alt_ids, alt_lp = token_signals(completion.logprobs, ids, ks, self.num_logprobs, n_alt)
        labels = np.asarray(segment_labels(segment_rules, ids), dtype=np.int8)
        sums, counts, n_invalid = segment_sums(values, labels)
        trace = decode.signals.trace
        return sequence_result(ids, tokenizer=tokenizer, stop_reason=_stop_reason(completion, row, budget, self.max_model_len - len(prompt), decode),
                               sums=sums, counts=counts, columns=columns, prompt_tokens=len(prompt),
                               n_invalid=n_invalid, trace=values if trace else None,
                               segments=labels if trace else None, alt_ids=alt_ids if n_alt else None,
                               alt_logprobs=alt_lp if n_alt else None)

    def _reuse(self, prompts: list[list[int]], cached: list[int | None],
               conversation_ids: Sequence[Hashable] | None) -> list[ReuseStats]:
        """Per row: the prompt tokens the prefix cache served; ``prefix-cache`` for a row that
        continues a conversation seen since :meth:`drop_cache`."""
        keys = list(conversation_ids) if conversation_ids is not None else [None] * len(prompts)
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} conversation ids for {len(prompts)} prompts")
        stats = []
        for ids, c, key in zip(prompts, cached, keys, strict=True):
            c = int(c or 0)
            mode = "prefix-cache" if key is not None and key in self._seen else "none"
            stats.append(ReuseStats(mode, c, len(ids) - c, c))
        self._seen.update(k for k in keys if k is not None)
        return stats

    @staticmethod
    def _row_budgets(budget: Sequence[int] | int | None, B: int) -> list[int]:
        if budget is None:
            return [2**62] * B
        rows = [int(budget)] * B if isinstance(budget, (int, np.integer)) else [int(b) for b in budget]
        if len(rows) != B:
            raise ValueError(f"token_budget has {len(rows)} entries for {B} prompts")
        if min(rows) < 1:
            raise ValueError(f"token budget must be >= 1 for every row, got {rows}")
        return rows


def _token_prompts(prompt_token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    prompts = [[int(t) for t in ids] for ids in prompt_token_ids]
    if not prompts:
        raise ValueError("VllmBackend.generate: no prompts")
    for i, ids in enumerate(prompts):
        if not ids:
            raise ValueError(f"VllmBackend.generate: prompt {i} is empty")
    return prompts


def _stop_reason(completion, row: int, budget: int, room: int, decode: DecodeConfig) -> str:
    """The tje_hf stop reason of one completion (:func:`~tje_hf.generation.outputs.length_stop`
    names a stop at the row's budget or at the ``room`` its prompt left in the context)."""
    reason = completion.finish_reason
    if reason not in _FINISH_REASONS:
        raise RuntimeError(f"vLLM finished prompt {row} with finish_reason={reason!r} "
                           f"(stop_reason={completion.stop_reason!r})")
    return length_stop(_FINISH_REASONS[reason], len(completion.token_ids), decode.max_new_tokens, budget, room)


# --------------------------------------------------------------------------------------------
# From vLLM's per-token log-probabilities to the signal columns (pure; tested without an engine)


def top_logprobs(entry: dict, n: int) -> list[tuple[int, float]]:
    """The ``n`` highest-ranked ``(token id, logprob)`` pairs of one token's vLLM logprobs dict,
    logprob descending.

    ``entry`` maps token id -> an object with ``.logprob`` (nats, full-vocabulary log-softmax) and
    ``.rank`` (1 = most likely). vLLM returns the top ``n`` plus the sampled token, which is an extra
    (``n+1``-th) entry when its rank is above ``n``: such an entry is excluded here.
    """
    pairs = [(int(tid), float(lp.logprob)) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= n]
    pairs.sort(key=lambda p: -p[1])
    if len(pairs) < n:
        raise ValueError(f"a logprobs entry holds {len(pairs)} tokens of rank <= {n}; expected {n} "
                         f"(ranks {sorted(lp.rank for lp in entry.values())})")
    return pairs[:n]


def _flat_top(flat, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Top-n arrays from vLLM's ``FlatLogprobs`` without building a dict per token, or None when
    its layout is not the one expected.

    vLLM 0.32 appends, per position, the sampled token (with its true rank) and then the top n in
    rank order 1..n, without de-duplicating: ``n + 1`` entries per position. Returns ``top``
    ``(T, n)`` float32 (rank order, i.e. descending), ``top_ids`` ``(T, n)``, ``sampled_lp``
    ``(T,)`` float32 and ``sampled_ids`` ``(T,)``.
    """
    starts = np.asarray(flat.start_indices, dtype=np.int64)
    ends = np.asarray(flat.end_indices, dtype=np.int64)
    if len(starts) == 0 or not np.all(ends - starts == n + 1) or any(r is None for r in flat.ranks):
        return None
    ranks = np.asarray(flat.ranks, dtype=np.int64)
    idx = starts[:, None] + 1 + np.arange(n)[None, :]
    if not np.array_equal(ranks[idx], np.broadcast_to(np.arange(1, n + 1), idx.shape)):
        return None
    lp = np.asarray(flat.logprobs, dtype=np.float32)
    ids = np.asarray(flat.token_ids, dtype=np.int64)
    return lp[idx], ids[idx], lp[starts], ids[starts]


def _dict_top(logprobs: Sequence[dict], token_ids: Sequence[int], n: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    T = len(token_ids)
    top = np.empty((T, n), dtype=np.float32)
    top_ids = np.empty((T, n), dtype=np.int64)
    sampled = np.empty(T, dtype=np.float32)
    for t, tok in enumerate(token_ids):
        entry = logprobs[t]
        pairs = top_logprobs(entry, n)
        top_ids[t] = [p[0] for p in pairs]
        top[t] = [p[1] for p in pairs]
        if tok not in entry:
            raise ValueError(f"token {t}: the sampled id {tok} is missing from its logprobs entry")
        sampled[t] = entry[tok].logprob
    return top, top_ids, sampled, np.asarray(token_ids, dtype=np.int64)


def token_signals(logprobs, token_ids: Sequence[int], ks: tuple[int, ...], n: int,
                  n_alt: int = 0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-token signal values of one sequence from vLLM's logprobs.

    Args:
        logprobs: vLLM's per-token logprobs of one completion: a list with one dict per generated
            token (see :func:`top_logprobs`), or a ``FlatLogprobs`` (read as arrays when its layout
            is the expected one, else one dict per position).
        token_ids: the generated tokens (the sampled one of each position).
        ks: top-k sizes; each <= n.
        n: the number of log-probabilities requested per token (>= 20).
        n_alt: keep the top-``n_alt`` alternatives.

    Returns:
        ``values`` ``(T, S)`` float32 in :func:`tje_hf.generation.tracker.signal_columns` order (NaN in the
        unavailable columns), and, with ``n_alt``, ``alt_ids`` ``(T, n_alt)`` int32 and
        ``alt_logprobs`` ``(T, n_alt)`` float16 (nats), else None.
    """
    T = len(token_ids)
    if len(logprobs) != T:
        raise ValueError(f"{len(logprobs)} logprob positions for {T} generated tokens")
    columns = signal_columns(ks)
    arrays = _flat_top(logprobs, n) if hasattr(logprobs, "start_indices") else None
    if arrays is None:
        arrays = _dict_top(logprobs, token_ids, n)
    top, top_ids, sampled, sampled_ids = arrays  # top in rank order: descending, as signals expect
    if not np.array_equal(sampled_ids, np.asarray(token_ids, dtype=np.int64)):
        t = int(np.flatnonzero(sampled_ids != np.asarray(token_ids))[0])
        raise ValueError(f"token {t}: logprobs name sampled id {sampled_ids[t]}, the output says {token_ids[t]}")
    values = np.full((T, len(columns)), np.nan, dtype=np.float32)
    if T:
        tv = torch.from_numpy(np.ascontiguousarray(top))
        values[:, : len(ks)] = topk_entropies_from_sorted(tv, ks).numpy()
        conf = deepconf_from_top_logprobs(tv[:, :DEEPCONF_K])
        values[:, columns.index("deepconf_confidence")] = conf.numpy()
        values[:, columns.index("token_logprob")] = sampled
    if not n_alt:
        return values, None, None
    return values, top_ids[:, :n_alt].astype(np.int32), top[:, :n_alt].astype(np.float16)


def segment_sums(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-segment sums ``(len(SEGMENTS), S)`` float64 and token counts ``(len(SEGMENTS),)`` of one
    sequence's per-token ``values`` ``(T, S)``, and its number of invalid tokens.

    As :class:`tje_hf.generation.tracker.EntropyTracker`: a token whose first column is NaN (invalid logits)
    counts nowhere; ``all`` sums every other token, ``reasoning`` / ``answer`` those whose
    label (``tje_hf.models.segments``) is ``REASONING`` / ``ANSWER``. An unavailable (all-NaN)
    column sums to NaN.
    """
    valid = ~np.isnan(values[:, 0]) if len(values) else np.zeros(0, dtype=bool)
    masks = {"all": valid, "reasoning": valid & (labels == REASONING), "answer": valid & (labels == ANSWER)}
    sums = np.zeros((len(SEGMENTS), values.shape[1]), dtype=np.float64)
    counts = np.zeros(len(SEGMENTS), dtype=np.int64)
    for s, seg in enumerate(SEGMENTS):
        m = masks[seg]
        counts[s] = int(m.sum())
        if counts[s]:
            sums[s] = values[m].astype(np.float64).sum(0)
    return sums, counts, int((~valid).sum())


def segment_means(values: np.ndarray, labels: np.ndarray, columns: Sequence[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, int], int]:
    """``means[segment][column]``, ``counts[segment]`` and the number of invalid tokens of one
    sequence (:func:`segment_sums`; NaN for an empty segment and for an unavailable column)."""
    sums, counts, n_invalid = segment_sums(values, labels)
    return (means_from_sums(sums, counts, columns), {seg: int(counts[s]) for s, seg in enumerate(SEGMENTS)},
            n_invalid)


def _pack(prompts: list[list[int]], generated: list[list[int]], pad: int) -> tuple[torch.Tensor, int]:
    """``(B, L + n_max)`` long: prompts left-padded to ``L``, generations right-padded."""
    ids, _ = left_pad(prompts, pad)
    L = ids.shape[1]
    n_max = max((len(g) for g in generated), default=0)
    out = torch.full((len(prompts), L + n_max), pad, dtype=torch.long)
    out[:, :L] = ids
    for row, g in enumerate(generated):
        if g:
            out[row, L: L + len(g)] = torch.tensor(g, dtype=torch.long)
    return out, L
