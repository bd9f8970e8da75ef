"""Per-row seeded sampling that does not depend on what else is in the batch.

``torch.multinomial`` draws from one global generator, so a problem's sample depends on which
other problems share its batch, and a resumed or sharded run would not reproduce an
uninterrupted one. :class:`SeededSampler` instead draws each row's token by inverse transform
sampling with one uniform number per row and step, ``u = hash(row seed, step)``: the token ``i``
whose interval ``[c_{i-1}, c_i)`` of the cumulative weights ``c`` holds ``u * c_V``. The weights are
the processed distribution (after temperature, top-k and top-p) up to its normaliser,
``w_i = exp(s_i - max s)`` in float32, accumulated in float64, so the draw is exact up to the
float32 rounding of each weight (as ``torch.multinomial``'s is), and a masked token (``-inf``,
weight 0) is never drawn. ``generate`` runs greedy: the sampler, last in the chain, marks the
drawn token with ``+inf``.

The uniform is 53 bits from an integer hash (two MurmurHash3 finalisers of the seed and the step),
so it is the same on every device and for every batch composition. The weights, their
cumulative sum and the search are per row, and exact where the logits are: a row's token does not
depend on its batch for float32 logits on a CPU (tested). On a GPU in bf16, batch size, padding
and MoE grouping move the logits' last bits, so a resumed, re-batched or re-sharded run is an
equally valid sample, not the same tokens from the first near-tie on (bitwise equality needs
batch 1 with the same prompt on the same GPU and software).

Cost per step, against Transformers' own sampling (softmax then ``torch.multinomial`` on the
same logits): a maximum, one exponential and one cumulative sum over ``B x V``, a binary search
per row and a write per row; ``scripts/bench_sampling.py`` measures it. The sampler's name is
recorded in every run's config (``DecodeConfig.sampler``): tokens drawn by another sampler are
never mixed into a run (docs/method.md, "Sampling").
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

#: The sampler :class:`SeededSampler` implements (``DecodeConfig.sampler``). The earlier one,
#: "gumbel-hash" (Gumbel noise hashed per token), drew other tokens from the same seeds.
SAMPLER = "inverse-cdf"

_M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """``(a * c) mod 2**32`` for int64 tensors (or Python ints) holding 32-bit values, without int64
    overflow."""
    lo = (a & 0xFFFF) * c
    hi = (((a >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix32(h: torch.Tensor | int) -> torch.Tensor | int:
    """MurmurHash3's 32-bit finaliser on int64 tensors (or Python ints) holding 32-bit values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_uniforms(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """``(B,)`` float64 uniforms in (0, 1), 53 bits each, from row seeds ``(B,)`` and the step.

    Integer arithmetic on ``B`` values (the step's hash is a Python int: no host-to-device copy
    per step), so the same numbers on every device."""
    key = _fmix32((seeds.to(torch.int64) ^ _fmix32(_mul32(step, 0x632BE5AB))) & _M32)
    high = key >> 5  # 27 bits
    low = _fmix32(key ^ 0x5BD1E995) >> 6  # 26 bits of a second hash
    return ((high * (1 << 26) + low).double() + 0.5) / float(1 << 53)


def draw(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` token ids drawn from ``softmax(scores)`` ``(B, V)`` with the uniforms ``u`` ``(B,)``.

    Inverse transform: the first index whose cumulative weight exceeds ``u`` times the total. A
    row with a NaN, or with no finite score, has no distribution: it gets some index in range
    (the tracker flags such rows)."""
    z = scores.float()
    w = torch.exp(z - z.amax(-1, keepdim=True))  # (B, V) float32 in [0, 1]; -inf -> 0
    c = torch.cumsum(w, -1, dtype=torch.float64)  # (B, V) float64, nondecreasing
    target = u.to(c.device)[:, None] * c[:, -1:]  # (B, 1) in [0, c_V)
    return torch.searchsorted(c, target, right=True).clamp_(max=scores.shape[-1] - 1)


class SeededSampler(LogitsProcessor):
    """Last processor in the chain: draws each row's token with its own seed (module docstring)
    and returns the scores with ``+inf`` at the drawn token, so that greedy decoding picks it.

    It writes into the scores it is handed: they are the previous warper's output (temperature
    always precedes it when sampling), not the model's logits, which the tracker observed first.

    Args:
        seeds: ``(B,)`` 32-bit row seeds, one per sequence.
    """

    def __init__(self, seeds: torch.Tensor):
        self.seeds = seeds
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        u = row_uniforms(self.seeds.to(scores.device), self.step)
        self.step += 1
        return scores.scatter_(1, draw(scores, u), float("inf"))
