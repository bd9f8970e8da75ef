"""What every generation backend returns, and the few rules they must all apply the same way.

:class:`SequenceResult` (one row), :class:`GenerationOutput` (one batched call) and
:class:`ReuseStats` (how much of a row's prompt came from a cache) are the result types of
:meth:`tje_hf.generation.backend.Backend.generate` and of
:func:`tje_hf.generation.hf.generate_with_entropy`. The helpers below are the single definition
of: the default per-row seeds, the prompt-fits-context check, left padding, the pad id, the
end-of-turn ids, step means from per-segment sums and counts, and the building of a
:class:`SequenceResult`. A backend uses them instead of re-implementing any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..columns import SEGMENTS
from ..config import DecodeConfig
from ..errors import PromptTooLongError
from ..seeds import derive_seed

#: ``ReuseStats.mode`` values: no cache (step 1, or reuse off), the KV cache cut back to the
#: common prefix and extended, a full prefill because a needed state was gone, and an engine's own
#: automatic prefix caching (vLLM).
REUSE_MODES = ("none", "reused", "fresh", "prefix-cache")


@dataclass(frozen=True)
class ReuseStats:
    """How one row's prompt was computed: ``reused`` tokens came from a cache, ``prefilled`` were
    computed in this call (``reused + prefilled`` = the prompt's length), ``common_prefix`` is the
    length of the prefix it shares with the tokens the cache held, ``mode`` one of
    :data:`REUSE_MODES`."""

    mode: str
    reused: int
    prefilled: int
    common_prefix: int

    @staticmethod
    def none(prompt_tokens: int) -> ReuseStats:
        """A prompt prefilled from scratch."""
        return ReuseStats("none", 0, int(prompt_tokens), 0)


@dataclass
class SequenceResult:
    """One generated sequence.

    ``means[segment][column]`` is the mean of a signal over the segment's tokens (segments
    ``all``, ``reasoning``, ``answer``; columns as :func:`tje_hf.columns.signal_columns`, e.g.
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
    """What one batched generate call returns (any backend)."""

    results: list[SequenceResult]
    columns: tuple[str, ...]
    wall_time_s: float
    tokens_per_s: float
    sequences: torch.Tensor  # (B, L + n) including left padding
    prompt_length: int  # L, the padded prompt length
    cache: Any = None  # the KV cache generate returns (holds L + n - 1 positions); None when internal
    prefill_time_s: float = float("nan")  # until the first step's logits: prefill + first forward
    extras: dict = field(default_factory=dict)
    reuse: list[ReuseStats] = field(default_factory=list)  # per row


# --------------------------------------------------------------------------------------------
# Rules every backend applies


def row_seeds(seeds: Sequence[int] | None, decode: DecodeConfig, n: int) -> list[int]:
    """One sampling seed per row: ``seeds`` as given (checked to be ``n``), or by default
    ``derive_seed(decode.seed, row)``."""
    if seeds is None:
        return [derive_seed(decode.seed, row) for row in range(n)]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
    return list(seeds)


def check_prompts_fit(lengths: Sequence[int], context: int | None, owner: str = "model") -> None:
    """Raise :class:`~tje_hf.errors.PromptTooLongError` when a prompt of ``lengths`` tokens leaves
    no room to generate in a context of ``context`` tokens (None: no known limit)."""
    if context is None:
        return
    for row, n in enumerate(lengths):
        if n >= context:
            raise PromptTooLongError(f"prompt {row} of {n} tokens does not fit the {owner}'s context of "
                                     f"{context} tokens")


def length_stop(reason: str, n_generated: int, max_new_tokens: int, budget: int | None, room: int | None) -> str:
    """The stop reason of a row, with a stop at a length limit named after the limit that bound
    the row itself: ``token_budget`` for its budget below ``max_new_tokens`` (the budget wins a
    tie), ``context_full`` for the ``room`` its prompt left in the context, else ``reason``. The
    same on every backend and for every batch (an engine may cut the whole call to the shortest
    room, and its own stop then reads ``max_new_tokens``)."""
    if reason != "max_new_tokens":
        return reason
    budget = budget if budget is not None else max_new_tokens
    room = room if room is not None else max_new_tokens
    limit = min(budget, room)
    if limit < max_new_tokens and n_generated >= limit:
        return "token_budget" if budget <= room else "context_full"
    return reason


def pad_token_id(tokenizer, fallback: int | None = None) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS; else ``fallback``
    (also when there is no tokenizer); else ``ValueError``."""
    if tokenizer is not None:
        for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if value is not None:
                return int(value)
    if fallback is not None:
        return int(fallback)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")


def end_of_turn_ids(generation_eos: int | Sequence[int] | None, tokenizer) -> tuple[int, ...]:
    """Every id that ends a turn, sorted: the generation config's ``eos_token_id`` (an id or a
    list) and the tokenizer's EOS. The one rule of both backends, for the tracker's stop and for
    the refinement loop's "did the turn already end"."""
    ids: list[int] = []
    for source in (generation_eos, getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        ids.extend([source] if isinstance(source, (int, np.integer)) else list(source))
    return tuple(sorted({int(i) for i in ids}))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, width)`` long input ids and attention mask, each row right-aligned (left padding);
    ``width`` defaults to the longest row. An empty row is all padding."""
    T = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, T - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            mask[b, T - len(row):] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def means_from_sums(sums: np.ndarray, counts: np.ndarray, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """``means[segment][column]`` from ``sums`` ``(len(SEGMENTS), S)`` and ``counts``
    ``(len(SEGMENTS),)``: sum over count in the arrays' own precision, NaN for an empty segment."""
    means = {}
    for s, seg in enumerate(SEGMENTS):
        c = counts[s]
        means[seg] = {col: (float(sums[s, j] / c) if c > 0 else float("nan")) for j, col in enumerate(columns)}
    return means


def sequence_result(token_ids: Sequence[int], *, tokenizer, stop_reason: str, sums: np.ndarray,
                    counts: np.ndarray, columns: Sequence[str], prompt_tokens: int, n_invalid: int,
                    trace: np.ndarray | None = None, segments: np.ndarray | None = None,
                    alt_ids: np.ndarray | None = None, alt_logprobs: np.ndarray | None = None) -> SequenceResult:
    """One row's :class:`SequenceResult`: the text decoded with ``tokenizer`` (special tokens
    skipped; empty without a tokenizer), the means from ``sums`` and ``counts`` (see
    :func:`means_from_sums`), the per-token arrays as given."""
    ids = [int(t) for t in token_ids]
    return SequenceResult(
        token_ids=ids,
        text=tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else "",
        n_generated=len(ids),
        stop_reason=stop_reason,
        means=means_from_sums(sums, counts, columns),
        counts={seg: int(counts[s]) for s, seg in enumerate(SEGMENTS)},
        prompt_tokens=int(prompt_tokens),
        n_invalid=int(n_invalid),
        trace=trace,
        segments=segments,
        alt_ids=alt_ids,
        alt_logprobs=alt_logprobs,
    )


def tokens_per_second(results: Sequence[SequenceResult], wall: float) -> float:
    """Generated tokens of a call over its wall time (NaN for a zero time)."""
    total = sum(r.n_generated for r in results)
    return total / wall if wall > 0 else float("nan")
