"""KV-cache reuse between refinement steps: a cache always travels with the tokens it holds.

Transformers does not check that a cache passed to ``generate`` holds a prefix of the new input:
a cache that covers all of the input, or more, or one already extended by another branch,
silently gives wrong logits. So a cache here is only ever used through :class:`CachedPrefix`,
which keeps beside it the ``(B, P)`` token layout (ids and padding mask) whose keys and values it
holds, and :func:`plan_reuse`, which builds the next step's input from it.

The plan for a batch of next prompts ``new[b]`` (unpadded token lists):

1. per row, the longest common prefix ``lcp[b]`` of the row's cached tokens and ``new[b]``;
2. the shared prefill width ``R = max_b (len(new[b]) - lcp[b])`` (at least 1: ``generate`` must
   always see one new token), and ``T = max_b len(new[b])``;
3. every row is laid out left-padded to ``T`` exactly as a fresh batch would be; the cache is
   rebuilt (:func:`compact`) to hold, per row, its first ``len(new[b]) - R`` tokens, right-aligned
   in ``T - R`` columns. Keys keep the rotary positions they were computed at (their token index),
   and the layout has no padding in the middle, so sliding-window layers see the same window as
   a fresh prefill.

Rows whose reusable prefix is longer than the batch needs recompute ``R - (len(new[b]) - lcp[b])``
tokens; with a batch of one, or equal remainders, ``prefilled = len(new) - lcp`` exactly.
Where a needed state is gone, or a layer is not a plain key/value layer (linear-attention layers
hold a recurrent state that cannot be cut back), the plan says ``fresh`` and nothing is reused.

Sliding-window layers attend over their last ``window - 1`` tokens only, but a cut can fall
anywhere in a row's conversation (inside the previous prompt with template history, at each
row's own end with continuation history), and a cut at position p needs the window before p.
:func:`new_cache` therefore gives them :class:`RecordingSlidingLayer`, which attends exactly as
Transformers' layer does and also keeps every token's keys and values in preallocated blocks:
a decoding step writes its one new token there. (Transformers' own ``activate_past_recording``
keeps the past by concatenating the whole of it at every step, which costs a copy of every
sliding layer's history per token: ``scripts/bench_sliding_cache.py`` measures both.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # the cache classes moved between releases; 5.x keeps them here
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
except ImportError:  # pragma: no cover - very old transformers
    from transformers import Cache, DynamicCache
    DynamicLayer = DynamicSlidingWindowLayer = None

try:
    from transformers.cache_utils import DummyLayer
except ImportError:  # pragma: no cover - releases without shared/attention-free layers
    DummyLayer = None

from ..models.memory import RECORD_BLOCK
from .outputs import left_pad


class RecordingSlidingLayer(DynamicSlidingWindowLayer):
    """Transformers' dynamic sliding-window layer (the same window, the same attention inputs)
    that also keeps the keys and values of every token it was given, for :func:`compact`.

    The past lives in preallocated blocks ``(B, H, n, D)``: the first as long as what the layer is
    first given (the prefill), then blocks of :attr:`BLOCK` positions as decoding fills them, so
    that appending ``n`` tokens copies ``n`` tokens, whatever the length of the past, and at most
    ``BLOCK - 1`` positions are allocated ahead. :meth:`past` returns it as one ``(B, H, n, D)``
    tensor (a copy, made at a cut only).
    """

    BLOCK = RECORD_BLOCK  # what the memory estimate counts

    def __init__(self, sliding_window: int, **kwargs):
        super().__init__(sliding_window=sliding_window, **kwargs)
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._free = 0  # unwritten positions at the end of the last block
        self.recorded = 0  # positions held in the blocks

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self._record(key_states, value_states)
        return super().update(key_states, value_states, *args, **kwargs)

    def _record(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n, done = keys.shape[-2], 0
        while done < n:
            if self._free == 0:
                size = n - done if not self._blocks else self.BLOCK
                shape = (*keys.shape[:2], size, keys.shape[-1])
                self._blocks.append((keys.new_empty(shape), values.new_empty(shape)))
                self._free = size
            k_block, v_block = self._blocks[-1]
            at = k_block.shape[-2] - self._free
            take = min(self._free, n - done)
            k_block[:, :, at:at + take].copy_(keys[:, :, done:done + take])
            v_block[:, :, at:at + take].copy_(values[:, :, done:done + take])
            self._free -= take
            self.recorded += take
            done += take

    def past(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Keys and values ``(B, H, recorded, D)`` of every position recorded (None before any)."""
        if not self._blocks:
            return None, None
        keys = torch.cat([k for k, _ in self._blocks], dim=-2)[:, :, :self.recorded]
        values = torch.cat([v for _, v in self._blocks], dim=-2)[:, :, :self.recorded]
        return keys, values

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the layer holds: the window and the recorded blocks."""
        held = [t for t in (self.keys, self.values) if torch.is_tensor(t)]
        return held + [t for block in self._blocks for t in block]

    def restart(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Hold ``keys``/``values`` ``(B, H, n, D)`` as both the window and the whole past, at
        sequence length ``length`` (what :func:`compact` leaves)."""
        self._blocks, self._free, self.recorded = [], 0, 0
        self._record(keys, values)
        self.keys, self.values = keys, values
        self.cumulative_length = length


def new_cache(model) -> Cache:
    """An empty dynamic cache for ``model`` whose sliding-window layers keep their past
    (:class:`RecordingSlidingLayer`), so that the cache can later be cut back to any prefix."""
    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(getattr(cache, "layers", ())):
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = RecordingSlidingLayer(sliding_window=layer.sliding_window)
    return cache


@dataclass
class CachedPrefix:
    """A KV cache and the ``(B, P)`` layout of the tokens it holds (``P`` = cache length).

    ``ids`` are token ids (padding included), ``mask`` is 1 for real tokens and 0 for padding.
    """

    cache: Cache
    ids: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.ids.shape != self.mask.shape:
            raise ValueError(f"ids {tuple(self.ids.shape)} and mask {tuple(self.mask.shape)} differ in shape")
        held = self.cache.get_seq_length()
        if held != self.ids.shape[1]:
            raise ValueError(f"the cache holds {held} positions but the layout has {self.ids.shape[1]}")

    def row_tokens(self, row: int) -> list[int]:
        return self.ids[row][self.mask[row].bool()].tolist()

    @staticmethod
    def after_generate(cache: Cache, sequences: torch.Tensor, prompt_mask: torch.Tensor,
                       n_generated: list[int]) -> CachedPrefix:
        """The prefix a ``generate`` call leaves: ``sequences`` ``(B, L + n)`` minus the last token,
        which was sampled but never fed through the model. Tokens after a row's end (padding
        after its EOS) are masked out."""
        B, total = sequences.shape
        L = prompt_mask.shape[1]
        gen_mask = torch.zeros(B, total - L, dtype=prompt_mask.dtype, device=prompt_mask.device)
        for row, n in enumerate(n_generated):
            gen_mask[row, :n] = 1
        mask = torch.cat([prompt_mask, gen_mask], dim=1)
        P = cache.get_seq_length()
        return CachedPrefix(cache, sequences[:, :P], mask[:, :P])


@dataclass
class ReusePlan:
    """How to run the next step. ``input_ids``/``attention_mask`` ``(B, T)`` left-padded;
    ``cache`` holds the first ``T - prefill_width`` columns (None: prefill everything)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Cache | None
    reused: list[int]  # tokens per row taken from the cache
    prefilled: list[int]  # tokens per row computed now (= len(new) - reused)
    common_prefix: list[int]  # the LCP of each row's cached tokens and its new prompt
    mode: str  # "reused" | "fresh" | "none"


def longest_common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_reuse(prefix: CachedPrefix | None, new: list[list[int]], pad_id: int, device,
               rows: list[int] | None = None) -> ReusePlan:
    """Plan the next step for prompts ``new`` (row ``b`` continues ``prefix`` row ``rows[b]``).

    ``prefix`` is consumed: its cache is rebuilt in place of the old one. ``prefix=None`` plans a
    plain prefill with no cache.
    """
    T = max(len(x) for x in new)
    ids, mask = left_pad(new, pad_id, device, width=T)
    if prefix is None:
        return ReusePlan(ids, mask, None, [0] * len(new), [len(x) for x in new], [0] * len(new), "none")
    rows = list(range(len(new))) if rows is None else rows
    if len(rows) != len(new):
        raise ValueError(f"{len(new)} new prompts but {len(rows)} source rows")
    lcp = [longest_common_prefix(prefix.row_tokens(r), x) for r, x in zip(rows, new, strict=True)]
    R = max(max(len(x) - c for x, c in zip(new, lcp, strict=True)), 1)
    keep = [max(len(x) - R, 0) for x in new]
    if T - R == 0 or not any(keep):
        return ReusePlan(ids, mask, None, [0] * len(new), [len(x) for x in new], lcp, "fresh")
    cache = compact(prefix, rows, keep, T - R)
    if cache is None:
        return ReusePlan(ids, mask, None, [0] * len(new), [len(x) for x in new], lcp, "fresh")
    return ReusePlan(ids, mask, cache, keep, [len(x) - k for x, k in zip(new, keep, strict=True)], lcp, "reused")


#: Layer classes :func:`compact` can cut back (exactly these: a subclass may hold more state, e.g.
#: an indexer's keys or a linear-attention layer's recurrent state, that a cut would leave stale).
#: A plain sliding-window layer can be cut only within the window it still holds.
CUTTABLE_LAYERS = tuple(c for c in (DynamicLayer, DynamicSlidingWindowLayer, RecordingSlidingLayer)
                        if c is not None)


def cuttable(cache: Cache) -> bool:
    """Whether every layer of ``cache`` is a plain key/value layer (or holds nothing) that
    :func:`compact` can cut back to a prefix. A linear-attention layer (Qwen3-Next, hybrid
    models) keeps a recurrent state of the whole past instead: it cannot be cut, only recomputed."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return False
    for layer in layers:
        if DummyLayer is not None and type(layer) is DummyLayer:
            continue
        if type(layer) not in CUTTABLE_LAYERS:
            return False
    return True


def compact(prefix: CachedPrefix, rows: list[int], keep: list[int], width: int) -> Cache | None:
    """Rebuild ``prefix.cache`` so that row ``b`` holds the first ``keep[b]`` real tokens of source
    row ``rows[b]``, right-aligned in ``width`` columns (left padding, none in the middle).

    Works on every ``DynamicCache`` layer: full layers keep all columns; sliding-window layers
    keep the last ``window - 1`` (and, recording ones, start their past again from those).
    Returns None when a needed state is no longer held (a sliding layer that did not record its
    past), or when a layer is not a key/value layer that can be cut (:func:`cuttable`), so the
    caller must prefill from scratch.
    """
    cache = prefix.cache
    if not cuttable(cache):
        return None
    P = prefix.ids.shape[1]
    device = prefix.ids.device
    # Column (in the old layout) of each real token, per source row.
    src_cols = []
    for r, k in zip(rows, keep, strict=True):
        cols = torch.nonzero(prefix.mask[r].bool(), as_tuple=False).squeeze(-1)[:k]
        if len(cols) < k:
            raise ValueError(f"row {r} holds {len(cols)} cached tokens, {k} asked for")
        src_cols.append(cols)
    # gather[b, j] = old column for new column j (or -1 for padding)
    gather = torch.full((len(rows), width), -1, dtype=torch.long, device=device)
    for b, cols in enumerate(src_cols):
        if len(cols):
            gather[b, width - len(cols):] = cols.to(device)
    src_rows = torch.tensor(rows, dtype=torch.long, device=device)
    for layer in cache.layers:
        recording = isinstance(layer, RecordingSlidingLayer)
        keys, values = layer.past() if recording else (getattr(layer, "keys", None), getattr(layer, "values", None))
        # (B_old, H, held, D)
        if keys is None or not torch.is_tensor(keys) or keys.numel() == 0:
            continue
        held = keys.shape[-2]
        offset = P - held  # the layer holds old columns [offset, P)
        sliding = getattr(layer, "is_sliding", False)
        need = gather if not sliding else gather[:, max(width - (layer.sliding_window - 1), 0):]
        real = need >= 0
        if bool((real & (need < offset)).any()):
            return None  # a needed state was dropped by the sliding window
        idx = (need - offset).clamp(min=0)  # (B, w)
        k = keys.index_select(0, src_rows.to(keys.device))
        v = values.index_select(0, src_rows.to(values.device))
        idx4 = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1]).to(k.device)
        real4 = real[:, None, :, None].to(k.device)
        new_keys = torch.where(real4, k.gather(2, idx4), torch.zeros((), dtype=k.dtype, device=k.device))
        new_values = torch.where(real4, v.gather(2, idx4), torch.zeros((), dtype=v.dtype, device=v.device))
        if recording:
            layer.restart(new_keys, new_values, width)
            continue
        layer.keys, layer.values = new_keys, new_values
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    return cache
