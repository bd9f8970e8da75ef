"""Per-token uncertainty signals from next-token logits (pure torch, no transformers).

Every function takes logits of shape ``(..., V)`` in any floating dtype, computes in float32 on the
logits' device, and returns float32 of shape ``(...)``. The signals, with their units and
directions (this is the one place where they are written down):

=========================  ======  ============================================================
name                        unit    meaning and direction
=========================  ======  ============================================================
``topk_entropy``            bits    Shannon entropy of the top-k logits renormalised over those k
                                    (docs/method.md section 1). 0 <= H <= log2 k. **Higher = more
                                    uncertain.** The TJE signal.
``full_entropy``            bits    Shannon entropy of the full-vocabulary softmax.
                                    **Higher = more uncertain.**
``deepconf_confidence``     nats    DeepConf token confidence C = -(1/k) * sum of the k largest
                                    full-vocabulary log-probabilities (arXiv 2508.15260).
                                    **Higher = more confident.**
``self_certainty``          nats    KL(U || p): divergence of the next-token distribution p from
                                    uniform over the finite logits (Kang et al. 2025).
                                    **Higher = more confident.**
``token_logprob``           nats    log-probability of the token actually generated, under the raw
                                    full-vocabulary softmax. **Higher = more confident.**
=========================  ======  ============================================================

Masked entries (``-inf``, as built-in processors write them) are excluded: a top-k entropy with
fewer than k finite logits uses only the finite ones. A row that is all ``-inf`` or holds a NaN has
no defined value: with ``check=True`` (the default) the functions raise ``ValueError``; with
``check=False`` (used inside decoding, where raising would need a host sync) such rows come back as
NaN and :func:`invalid_rows` flags them.
"""

from __future__ import annotations

import math

import torch

from ..columns import SIGNAL_UNITS

LOG2E = 1.0 / math.log(2.0)
UNITS = SIGNAL_UNITS  # directions: tje_hf.columns.HIGHER_IS_UNCERTAIN
DEFAULT_KS = (5, 10, 15, 20)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Float32 for every lower precision; float64 input stays float64 (reference computations)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def invalid_rows(logits: torch.Tensor) -> torch.Tensor:
    """``(...)`` bool: rows with a NaN or with no finite logit (no defined distribution)."""
    return torch.isnan(logits).any(-1) | ~torch.isfinite(logits).any(-1)


def _check(logits: torch.Tensor) -> None:
    bad = invalid_rows(logits)
    if bool(bad.any()):
        n = int(bad.sum())
        raise ValueError(f"{n} of {bad.numel()} logit rows hold a NaN or are entirely masked (-inf); "
                         "their entropy is undefined")


def _entropy_bits_from_values(values: torch.Tensor) -> torch.Tensor:
    """Entropy (bits) of softmax over the last dim of float32 ``values``; -inf entries excluded."""
    logp = torch.log_softmax(values, dim=-1)
    p = logp.exp()
    # p * logp is 0 * -inf = NaN at masked entries; they carry no probability mass.
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    return -plogp.sum(-1) * LOG2E


#: DeepConf's k: its confidence averages the top-20 log-probabilities of each token.
DEEPCONF_K = 20


def topk_entropy(logits: torch.Tensor, k: int = 20, *, check: bool = True) -> torch.Tensor:
    """Top-k renormalised Shannon entropy in bits, ``(..., V) -> (...)`` float32.

    ``H = -sum_i p_i log2 p_i`` with ``p_i = exp(l_i) / sum_{j<=k} exp(l_j)`` over the k largest
    logits ``l``. Uniform over the top k gives ``log2 k``; a one-hot peak gives 0. Higher = more
    uncertain. Invariant to adding a constant to all logits, so log-probabilities give the same value.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if check:
        _check(logits)
    k = min(k, logits.shape[-1])
    values = _upcast(torch.topk(logits, k, dim=-1, sorted=True).values)
    return _entropy_bits_from_values(values)


def topk_entropies(logits: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS, *, check: bool = True) -> torch.Tensor:
    """Top-k entropies in bits for several k from one ``topk`` call: ``(..., V) -> (..., len(ks))``.

    Column ``j`` equals ``topk_entropy(logits, ks[j])``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if check:
        _check(logits)
    kmax = min(max(ks), logits.shape[-1])
    values = _upcast(torch.topk(logits, kmax, dim=-1, sorted=True).values)  # (..., kmax), descending
    return topk_entropies_from_sorted(values, ks)


def topk_entropies_from_sorted(values: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Entropies for each k from the descending-sorted top values ``(..., kmax)`` float32."""
    return torch.stack([_entropy_bits_from_values(values[..., : min(k, values.shape[-1])]) for k in ks], dim=-1)


def full_entropy(logits: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Shannon entropy of the full-vocabulary softmax in bits, ``(..., V) -> (...)``. Higher = more uncertain."""
    if check:
        _check(logits)
    return _entropy_bits_from_values(_upcast(logits))


def deepconf_confidence(logits: torch.Tensor, k: int = DEEPCONF_K, *, check: bool = True) -> torch.Tensor:
    """DeepConf token confidence in nats: ``-(1/k) * sum`` of the top-k full-vocabulary log-probs.

    ``(..., V) -> (...)``. Higher = more confident. Masked entries are excluded from the k (the
    mean runs over the finite ones among the top k).
    """
    if check:
        _check(logits)
    x = _upcast(logits)
    lse = torch.logsumexp(x, dim=-1)
    values = torch.topk(x, min(k, x.shape[-1]), dim=-1).values
    return deepconf_from_top_logprobs(values - lse.unsqueeze(-1))


def deepconf_from_top_logprobs(top_logprobs: torch.Tensor) -> torch.Tensor:
    """DeepConf confidence in nats from the top-k full-vocabulary log-probs ``(..., k)``: minus
    their mean over the finite ones. Higher = more confident."""
    finite = torch.isfinite(top_logprobs)
    return -torch.where(finite, top_logprobs, 0.0).sum(-1) / finite.sum(-1).clamp(min=1)


def self_certainty(logits: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """KL(U || p) in nats over the finite logits, ``(..., V) -> (...)``. Higher = more confident.

    ``KL(U || p) = -log n - (1/n) sum_j log p_j`` for the n finite entries: 0 for a uniform
    distribution, growing as p concentrates.
    """
    if check:
        _check(logits)
    x = _upcast(logits)
    lse = torch.logsumexp(x, dim=-1)
    finite = torch.isfinite(x)
    n = finite.sum(-1).clamp(min=1).float()
    mean_logit = torch.where(finite, x, torch.zeros_like(x)).sum(-1) / n
    return -torch.log(n) - (mean_logit - lse)


def token_logprob(logits: torch.Tensor, token_ids: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Log-probability (nats) of ``token_ids`` ``(...)`` under the full softmax of ``logits`` ``(..., V)``."""
    if check:
        _check(logits)
    x = _upcast(logits)
    return x.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def _column_index(cols: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A cached index tensor: built once per device, not copied to the device at every step."""
    key = (cols, str(device))
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = torch.tensor(cols, device=device)
    return _INDEX_CACHE[key]


_MASKED = -1.0e4  # a logit this far below the maximum has probability < e^-10000: exactly 0 in float32


def all_signals(logits: torch.Tensor, ks: tuple[int, ...], deepconf_k: int = DEEPCONF_K,
                full_vocab: bool = True, width: int = 0) -> dict[str, torch.Tensor]:
    """Every signal except the generated token's log-probability, in few passes, unchecked.

    Returns ``topk_entropy`` ``(..., len(ks))`` bits, ``full_entropy``, ``deepconf_confidence`` and
    ``self_certainty`` ``(...)``, and ``lse`` ``(...)`` (the full-vocabulary log-normaliser, nats),
    plus ``top_values``/``top_ids`` ``(..., kmax)`` for callers that keep alternatives, where
    ``kmax = min(max(max(ks), deepconf_k, width), V)`` (``width``: the alternatives a caller keeps).
    Rows with a NaN or no finite logit hold NaN.

    This is the decoding-loop path (``tje_hf.generation.tracker`` calls it at every step), written for few
    kernels: the maximum comes from the top-k call, logits are shifted by it and clamped at
    ``-1e4`` (so masked ``-inf`` entries contribute exactly 0 without a ``where``), and all top-k
    entropies come from one cumulative sum. The single-signal functions above are the reference
    it is tested against. Invalid rows need no explicit check: a NaN or ``+inf`` logit becomes
    the maximum ``m`` (``topk`` ranks NaN highest), and a row with no finite logit has
    ``m = -inf``; either way ``x - m`` holds a NaN that reaches every output of the row.
    ``full_vocab=False`` computes the top-k entropies only (no pass over the vocabulary beyond
    the top-k call); the other signals and ``lse`` are NaN.
    """
    x = _upcast(logits)
    V = x.shape[-1]
    kmax = min(max(max(ks), deepconf_k, width), V)
    top = torch.topk(x, kmax, dim=-1, sorted=True)
    m = top.values[..., :1]  # (..., 1) the row maximum
    if not full_vocab:
        return _topk_only(top, m, ks, kmax)
    z = (x - m).clamp_min_(_MASKED)  # (..., V) <= 0; masked entries sit at -1e4
    e = torch.exp(z)
    s = e.sum(-1)  # (...,) >= 1 for a valid row
    log_s = torch.log(s)
    lse = m.squeeze(-1) + log_s
    ez = torch.linalg.vecdot(e, z)  # sum e*z: a mul and a sum, with a (..., V) temporary
    n_masked = (z <= _MASKED).sum(-1)
    n_finite = (V - n_masked).clamp(min=1).to(x.dtype)
    mean_z = (z.sum(-1) - _MASKED * n_masked) / n_finite  # the mean over finite entries only
    topk_h, top_z_sum, n_top_finite = _topk_from_top(top.values, m, ks, min(deepconf_k, kmax))
    # DeepConf: -(1/k) sum of the top-k log-probs over the finite ones among them.
    deepconf = log_s - top_z_sum / n_top_finite.clamp(min=1)
    return {
        "topk_entropy": topk_h,
        "full_entropy": (log_s - ez / s) * LOG2E,
        "deepconf_confidence": deepconf,
        "self_certainty": -torch.log(n_finite) - mean_z + log_s,
        "lse": lse,
        "top_values": top.values,
        "top_ids": top.indices,
    }


def _topk_from_top(values: torch.Tensor, m: torch.Tensor, ks: tuple[int, ...], kd: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k entropies (bits) for every k from one cumulative sum over the sorted top values:
    ``H_k = log A_k - C_k / A_k`` (nats) with ``A_k = sum_{i<=k} a_i``, ``C_k = sum_{i<=k} a_i z_i``,
    ``a = e^z``, ``z`` the values minus the maximum. The same cumulative sum also gives, over the
    first ``kd`` values, the sum of the finite ``z`` and their number (for DeepConf).
    Returns H ``(..., len(ks))``, that sum ``(...)`` and that number ``(...)``."""
    kmax = values.shape[-1]
    tz = (values - m).clamp_min_(_MASKED)  # (..., kmax) <= 0
    ta = torch.exp(tz)
    finite = (tz > _MASKED).to(tz.dtype)
    parts = torch.stack([ta, ta * tz, tz * finite, finite], dim=-2)  # (..., 4, kmax)
    cols = tuple(min(k, kmax) - 1 for k in ks) + (kd - 1,)
    at = parts.cumsum(-1).index_select(-1, _column_index(cols, values.device))  # (..., 4, len(ks) + 1)
    A_k, C_k = at[..., 0, :-1], at[..., 1, :-1]
    return (torch.log(A_k) - C_k / A_k) * LOG2E, at[..., 2, -1], at[..., 3, -1]


def _topk_only(top, m: torch.Tensor, ks: tuple[int, ...], kmax: int) -> dict[str, torch.Tensor]:
    """``all_signals(full_vocab=False)``: the top-k entropies; every other signal NaN."""
    topk_h, _, _ = _topk_from_top(top.values, m, ks, kmax)
    nan_row = torch.full_like(m.squeeze(-1), float("nan"))
    return {
        "topk_entropy": topk_h,
        "full_entropy": nan_row, "deepconf_confidence": nan_row, "self_certainty": nan_row, "lse": nan_row,
        "top_values": top.values, "top_ids": top.indices,
    }
