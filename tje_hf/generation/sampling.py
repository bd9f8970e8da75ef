"""Per-row seeded sampling whose noise does not depend on what else is in the batch.

``torch.multinomial`` draws from one global generator, so a problem's sample depends on which
other problems share its batch, and a resumed or sharded run would not reproduce an
uninterrupted one. :class:`SeededSampler` instead adds Gumbel noise computed from a counter-based
hash of ``(row seed, step, token id)`` to the final (temperature / top-k / top-p processed)
scores; ``argmax(scores + Gumbel)`` is an exact sample from ``softmax(scores)`` (the Gumbel-max
trick), and ``generate`` runs in greedy mode to take that argmax. The hash is integer arithmetic,
so the noise is the same on every device and for every batch composition.

The sampled tokens are batch-invariant only where the scores are. In float32 on a CPU the tests
find them so (a resumed or sharded run gives the tokens of an uninterrupted one). On a GPU in
bf16, the batch size, the padding width and MoE expert grouping change the logits' last bits, so a
row decoded in another batch is an equally valid sample that may differ from the first near-tie
on; batch 1 with the same prompt, on the same GPU and software versions, gives the same tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

_M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``(a * c) mod 2**32`` for int64 tensors (or Python ints) holding 32-bit values, without int64
    overflow."""
    lo = (a & 0xFFFF) * c
    hi = (((a >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors (or Python ints) holding 32-bit values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def token_hashes(vocab: int, device: torch.device | str) -> torch.Tensor:
    """``(V,)`` int64: a fixed 32-bit hash of every token id (computed once per vocabulary)."""
    return _fmix32(_mul32(torch.arange(vocab, dtype=torch.int64, device=device), 0x9E3779B1))


def uniform_noise(seeds: torch.Tensor, step: int, token_hash: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` float64 uniforms in (0, 1) from row seeds ``(B,)``, the step and ``token_hashes``."""
    # The step's hash is a Python int (the same arithmetic as on tensors): no host-to-device copy per step.
    key = _fmix32((seeds.to(torch.int64) ^ _fmix32(step * 0x632BE5AB & _M32)) & _M32)
    h = _fmix32(token_hash[None, :] ^ key[:, None])
    return (h.double() + 0.5) / 4294967296.0


class SeededSampler(LogitsProcessor):
    """Last processor in the chain: ``scores + Gumbel(seed, step)``; greedy argmax then samples.

    Args:
        seeds: ``(B,)`` 32-bit row seeds, one per sequence.
    """

    def __init__(self, seeds: torch.Tensor):
        self.seeds = seeds
        self.step = 0
        self._token_hash: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._token_hash is None or self._token_hash.shape[0] != scores.shape[-1]:
            self._token_hash = token_hashes(scores.shape[-1], scores.device)
        u = uniform_noise(self.seeds.to(scores.device), self.step, self._token_hash)
        self.step += 1
        gumbel = -torch.log(-torch.log(u))
        return scores + gumbel.to(scores.dtype)
