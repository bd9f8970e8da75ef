"""The vLLM backend: ``VllmBackend.generate`` returns the HF path's result types from a vLLM engine.

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

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..columns import SEGMENTS, signal_columns
from ..config import DecodeConfig
from ..models.segments import ANSWER, GENERIC, REASONING, SegmentRules, segment_labels
from ..seeds import derive_seed
from .hf import GenerationOutput, PromptTooLongError, SequenceResult
from .signals import deepconf_from_top_logprobs, topk_entropies_from_sorted

#: Columns that need the full vocabulary, which vLLM's top-n log-probabilities do not give.
UNAVAILABLE_SIGNALS = ("full_entropy", "self_certainty")
#: DeepConf's k, as in :class:`tje_hf.generation.tracker.EntropyTracker` (``deepconf_k=20``).
DEEPCONF_K = 20
#: vLLM ``finish_reason`` -> tje_hf stop reason (``tje_hf.generation.tracker.STOP_REASONS`` names).
_FINISH_REASONS = {"stop": "eos", "length": "max_new_tokens"}


class VllmBackend:
    """A vLLM engine for one model, generating with the HF path's result types.

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
            ``extras["cached_prompt_tokens"]``. This replaces the HF path's explicit ``cache``.
        seed: the engine's global seed (per-request sampling seeds are given to :meth:`generate`).
        num_logprobs: log-probabilities returned per token (``SamplingParams.logprobs``): at least
            20 (DeepConf's k) and at least every k of ``decode.signals.ks``.
        **engine_kwargs: passed to ``vllm.LLM`` unchanged (e.g. ``skip_tokenizer_init=True``,
            ``enforce_eager=True``, ``gpu_memory_utilization``, ``block_size``).

    The engine is built on first use of :attr:`llm` (tens of seconds even for a tiny model).
    ``logprobs_mode`` is always ``"raw_logprobs"``; ``max_logprobs`` defaults to ``num_logprobs``.
    """

    #: ``tje_hf.refinement`` hands whole prompts to a serving engine and lets it reuse prefixes itself.
    is_serving_engine = True

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
        self._tokenizer = None

    # -- engine --------------------------------------------------------------------------------

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
        """The engine's tokenizer, or None with ``skip_tokenizer_init=True``."""
        if self._tokenizer is None and self.has_tokenizer:
            self._tokenizer = self.llm.get_tokenizer()
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        """The engine's context length in tokens (prompt plus generated)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def pad_token_id(self) -> int:
        """The id that pads ``GenerationOutput.sequences``: the tokenizer's pad, else its EOS, else
        the model config's ``pad_token_id`` / first ``eos_token_id``, else 0."""
        tok = self.tokenizer
        if tok is not None:
            for value in (tok.pad_token_id, tok.eos_token_id):
                if value is not None:
                    return int(value)
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

    def shutdown(self) -> None:
        """Stop the engine's background processes (if any) and drop the engine."""
        if self._llm is not None:
            core = getattr(self._llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        self._llm = None
        self._tokenizer = None

    # -- generation ----------------------------------------------------------------------------

    def sampling_params(self, decode: DecodeConfig, seed: int, max_tokens: int):
        """The ``vllm.SamplingParams`` of one row: ``decode``'s settings, the row's seed, the
        row's token limit, ``logprobs=num_logprobs`` in vLLM's flat format (a constant number of
        Python objects per request instead of a dict per token), and no detokenisation (text is
        decoded here with the tokenizer, as the HF path does)."""
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
                rest of the batch. The same seed does **not** give the HF path's sample: the two
                engines draw differently.
            segment_rules: where reasoning ends and the answer begins (``tje_hf.models.families``).
            detokenize: fill ``SequenceResult.text`` (``tokenizer.decode(ids,
                skip_special_tokens=True)``); default: when the engine has a tokenizer. True with
                ``skip_tokenizer_init=True`` raises ValueError.
            token_budget: per-row (or one) token limit below ``max_new_tokens``; a row that hits
                it stops with ``"token_budget"`` (default ``decode.token_budget``).

        Returns:
            A :class:`~tje_hf.generation.hf.GenerationOutput` with one
            :class:`~tje_hf.generation.hf.SequenceResult` per prompt, in order. ``means[segment][column]``
            averages each column over the segment's generated tokens (``all``: every generated
            token, the EOS included; ``reasoning`` / ``answer``: tokens of that class), NaN for an
            empty segment and for the unavailable columns; ``trace`` ``(n, S)`` float32 and
            ``segments`` ``(n,)`` int8 when ``decode.signals.trace``; ``alt_ids`` ``(n, a)`` int32
            / ``alt_logprobs`` ``(n, a)`` float16 (nats) with ``trace_alternatives = a``.
            ``sequences`` is ``(B, L + n_max)``: prompts left-padded to ``L``, generations
            right-padded, with :meth:`pad_token_id`. ``cache`` is None (vLLM's prefix cache is
            internal). ``extras``: ``backend``, ``unavailable_signals``, ``num_logprobs``,
            ``cached_prompt_tokens`` (per row, from the prefix cache), ``finish_reasons`` (vLLM's).
        """
        decode = decode or DecodeConfig()
        prompts = [[int(t) for t in ids] for ids in prompt_token_ids]
        if not prompts:
            raise ValueError("VllmBackend.generate: no prompts")
        for i, ids in enumerate(prompts):
            if not ids:
                raise ValueError(f"VllmBackend.generate: prompt {i} is empty")
        B = len(prompts)
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
        if seeds is None:
            seeds = [derive_seed(decode.seed, row) for row in range(B)]
        if len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} prompts")
        if detokenize is None:
            detokenize = self.has_tokenizer
        if detokenize and not self.has_tokenizer:
            raise ValueError("detokenize = True, but the engine was built with skip_tokenizer_init=True")

        budget = token_budget if token_budget is not None else decode.token_budget
        budgets = self._row_budgets(budget, B)
        context = self.max_model_len
        params = []
        for row, ids in enumerate(prompts):
            if len(ids) >= context:
                raise PromptTooLongError(f"prompt {row} of {len(ids)} tokens does not fit the engine's "
                                         f"context of {context} tokens")
            limit = min(decode.max_new_tokens, budgets[row], context - len(ids))
            params.append(self.sampling_params(decode, seeds[row], limit))

        from vllm.inputs import TokensPrompt

        llm = self.llm
        start = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - start

        columns = signal_columns(ks)
        tokenizer = self.tokenizer if detokenize else None
        results, finish, cached = [], [], []
        for row, request in enumerate(outputs):
            if len(request.outputs) != 1:
                raise RuntimeError(f"vLLM returned {len(request.outputs)} completions for prompt {row}; expected 1")
            completion = request.outputs[0]
            ids = [int(t) for t in completion.token_ids]
            if completion.logprobs is None or len(completion.logprobs) != len(ids):
                got = None if completion.logprobs is None else len(completion.logprobs)
                raise RuntimeError(f"vLLM returned {got} logprob entries for {len(ids)} tokens of prompt {row}")
            values, alt_ids, alt_lp = token_signals(completion.logprobs, ids, ks, self.num_logprobs, n_alt)
            labels = np.asarray(segment_labels(segment_rules, ids), dtype=np.int8)
            means, counts, n_invalid = segment_means(values, labels, columns)
            reason = completion.finish_reason
            if reason not in _FINISH_REASONS:
                raise RuntimeError(f"vLLM finished prompt {row} with finish_reason={reason!r} "
                                   f"(stop_reason={completion.stop_reason!r})")
            stop = _FINISH_REASONS[reason]
            if stop == "max_new_tokens" and budgets[row] < decode.max_new_tokens and len(ids) >= budgets[row]:
                stop = "token_budget"
            results.append(SequenceResult(
                token_ids=ids,
                text=tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else "",
                n_generated=len(ids),
                stop_reason=stop,
                means=means,
                counts=counts,
                prompt_tokens=len(prompts[row]),
                n_invalid=n_invalid,
                trace=values if sig.trace else None,
                segments=labels if sig.trace else None,
                alt_ids=alt_ids if n_alt else None,
                alt_logprobs=alt_lp if n_alt else None,
            ))
            finish.append(reason)
            cached.append(getattr(request, "num_cached_tokens", None))

        total = sum(r.n_generated for r in results)
        sequences, L = _pack(prompts, [r.token_ids for r in results], self.pad_token_id())
        extras = {
            "backend": "vllm",
            "unavailable_signals": list(UNAVAILABLE_SIGNALS),
            "num_logprobs": self.num_logprobs,
            "cached_prompt_tokens": cached,
            "finish_reasons": finish,
        }
        return GenerationOutput(results=results, columns=columns, wall_time_s=wall,
                                tokens_per_s=total / wall if wall > 0 else float("nan"),
                                sequences=sequences, prompt_length=L, cache=None, extras=extras)

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


def segment_means(values: np.ndarray, labels: np.ndarray, columns: Sequence[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, int], int]:
    """``means[segment][column]``, ``counts[segment]`` and the number of invalid tokens.

    As :class:`tje_hf.generation.tracker.EntropyTracker`: a token whose first column is NaN (invalid logits)
    counts nowhere; ``all`` averages every other token, ``reasoning`` / ``answer`` those whose
    label (``tje_hf.models.segments``) is ``REASONING`` / ``ANSWER``. An empty segment gives NaN; an
    unavailable (all-NaN) column gives NaN.
    """
    valid = ~np.isnan(values[:, 0]) if len(values) else np.zeros(0, dtype=bool)
    masks = {"all": valid, "reasoning": valid & (labels == REASONING), "answer": valid & (labels == ANSWER)}
    means: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for seg in SEGMENTS:
        m = masks[seg]
        c = int(m.sum())
        counts[seg] = c
        sums = values[m].astype(np.float64).sum(0) if c else None
        means[seg] = {col: (float(sums[j] / c) if c else math.nan) for j, col in enumerate(columns)}
    return means, counts, int((~valid).sum())


def _pack(prompts: list[list[int]], generated: list[list[int]], pad: int) -> tuple[torch.Tensor, int]:
    """``(B, L + n_max)`` long: prompts left-padded to ``L``, generations right-padded."""
    L = max(len(p) for p in prompts)
    n_max = max((len(g) for g in generated), default=0)
    out = torch.full((len(prompts), L + n_max), pad, dtype=torch.long)
    for row, (p, g) in enumerate(zip(prompts, generated, strict=True)):
        out[row, L - len(p): L] = torch.tensor(p, dtype=torch.long)
        if g:
            out[row, L: L + len(g)] = torch.tensor(g, dtype=torch.long)
    return out, L
