"""How much memory a model needs before it is loaded, and whether that fits the machine.

:func:`estimate_memory` turns a Transformers config into a :class:`MemoryEstimate` (bytes) of the
three things that grow with the model and the run: the weights (by dtype and quantisation), the KV
cache of the refinement loop at a given batch and context, and generate's next-token logits. It
counts parameters without allocating them (the model is built on the ``meta`` device).
:func:`check_fits` compares an estimate with the free memory of the GPUs (or the available RAM)
and raises :class:`InsufficientMemoryError`, a one-line message naming the numbers and what to
change, when it cannot fit. :func:`preflight` is what :func:`tje_hf.models.loading.load_model` calls.

Counted among the activations: what one attention layer allocates beside the cache at the
longest context (:func:`attention_transient_bytes`; layers run one after another, so one layer's
is the peak): the copy of the layer's keys and values that the cache's ``torch.cat`` makes as it
grows, keys and values repeated to every query head (eager attention at every step; sdpa in a
padded prefill), and eager attention's ``B x heads x q x k`` scores, which the refinement loop
keeps at the size of the repeated keys and values by prefilling in chunks (:func:`prefill_chunk`).
Not counted: the rest of the forward pass's activations (per token, small beside these), the
tracker's optional per-token trace (``B x max_new_tokens x 8`` float32, ~4 MiB at batch 16 x 8k),
the CUDA context and allocator fragmentation: :func:`check_fits` keeps a headroom (default 10 %
of the budget) for them.

``python -m tje_hf.models.memory gpt-oss-20b --batch 16 --context 16384 --quantization mxfp4`` prints an
estimate for a paper model from its public architecture (no download; see :data:`REFERENCE_MODELS`);
``--quantization fp8`` gives Qwen3-30B-A3B's fine-grained FP8 checkpoints (``Qwen/Qwen3-30B-A3B-*-2507-FP8``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InsufficientMemoryError, ModelLoadError
from .quantization import DTYPES, fp8_native_gpu, missing_mxfp4_kernels

log = logging.getLogger(__name__)

GiB = 1 << 30
QUANTIZATIONS = ("none", "4bit", "8bit", "mxfp4", "fp8", "bf16-dequantized")
# bitsandbytes nf4 (no double quantisation, as ModelSpec configures it): a 4-bit code per weight
# plus one float32 absmax per block of 64 weights.
NF4_BLOCK = 64
NF4_BYTES_PER_PARAM = 0.5 + 4 / NF4_BLOCK
# bitsandbytes LLM.int8: one int8 per weight plus one float32 scale per output row (counted exactly).
INT8_BYTES_PER_PARAM = 1.0
# OCP MXFP4 (gpt-oss MoE experts): a 4-bit E2M1 value per weight and one E8M0 scale byte per 32.
MXFP4_BYTES_PER_PARAM = 4.25 / 8
# Fine-grained FP8 as Transformers 5.x holds it in memory (FP8Linear / FP8Experts): one float8_e4m3fn
# byte per weight and one float32 scale (``weight_scale_inv``) per block of
# ``weight_block_size`` (128 x 128 unless the checkpoint says otherwise) of each weight matrix.
FP8_BYTES_PER_PARAM = 1
FP8_SCALE_BYTES = 4
FP8_DEFAULT_BLOCK = (128, 128)
# float32 B x V copies of the next-token logits alive at one decoding step: generate's upcast copy,
# the processed scores (each warper returns a new tensor), the tracker's retained copy (token
# log-probabilities are taken from it one step later) and the signal temporaries (the logits
# minus their maximum, its exponential, the masked-entry mask); rounded up, as a margin.
LOGITS_FP32_COPIES = 7
# Copies of eager attention's B x heads x q x k scores alive at once in Transformers 5.23-5.24's
# eager_attention_forward: the product QK^T (then that plus the mask), the sink-extended logits
# less their maximum, and their softmax.
EAGER_SCORE_COPIES = 3
# The refinement loop's sliding-window layers (tje_hf.generation.kvcache.RecordingSlidingLayer)
# keep every token in blocks of this many positions, beside their live window of window - 1.
RECORD_BLOCK = 64
DEFAULT_HEADROOM = 0.10
NO_CHECK_ENV = "TJE_HF_NO_MEMORY_CHECK"

_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# device_map values that spread a model over every visible GPU
_SPREAD = ("auto", "balanced", "balanced_low_0", "sequential")



# --------------------------------------------------------------------------------------------
# Parameter counts


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model by how they are stored, counted without allocating them.

    ``linear_weight``: weights of the ``nn.Linear`` modules that bitsandbytes replaces (all but
    the output embedding, tied weights and the last module, Transformers' default skip list);
    ``linear_rows``: their total output features (one int8 row scale each). ``mxfp4_experts``: the
    gpt-oss expert matrices an MXFP4 checkpoint stores in MXFP4. ``fused_experts``: 3-D expert
    parameters of any MoE (bitsandbytes leaves them unquantised in Transformers 5.x).
    ``fp8_weight``: the weights Transformers' fine-grained FP8 holds in FP8: those of the
    ``nn.Linear`` modules it converts (all but the checkpoint's ``modules_to_not_convert``, or
    Transformers' default skip list: the output embedding) and the 3-D matrices of the
    ``*.experts`` modules; ``fp8_scales``: their float32 block scales (one per
    ``weight_block_size`` block of each matrix, each expert's matrices counted apart).
    Embeddings, norms, biases, the MoE router and the output layer stay in the compute dtype.
    ``buffer_bytes``: buffers (rotary tables) at the dtype they are built with.
    """

    total: int
    linear_weight: int
    linear_rows: int
    mxfp4_experts: int
    fused_experts: int
    buffer_bytes: int
    source: str  # "meta" (the model built on the meta device) or "analytic" (from config fields)
    fp8_weight: int = 0
    fp8_scales: int = 0


_COUNT_CACHE: dict[str, ParamCounts] = {}


def _config_key(config) -> str | None:
    try:
        return f"{type(config).__name__}:{config.to_json_string(use_diff=False)}"
    except (TypeError, ValueError, AttributeError):
        return None


def count_parameters(config, *, trust_remote_code: bool = False) -> ParamCounts:
    """Count ``config``'s parameters by storage class (see :class:`ParamCounts`).

    Builds the model on the ``meta`` device (shapes only, no memory; the first build of an
    architecture costs the import of its modeling code, ~1-5 s). Falls back to an analytic count
    from the usual config fields when the architecture cannot be built that way. Cached per config.
    """
    key = _config_key(config)
    if key is not None and key in _COUNT_CACHE:
        return _COUNT_CACHE[key]
    try:
        counts = _count_on_meta(config, trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model class: use the formula
        log.info("could not build %s on the meta device (%s); counting parameters from the config",
                 getattr(config, "model_type", "?"), exc)
        counts = _count_analytic(config)
    if key is not None:
        _COUNT_CACHE[key] = counts
    return counts


def _quant_get(config, key: str, default=None):
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return default
    value = qc.get(key, default) if isinstance(qc, dict) else getattr(qc, key, default)
    return default if value is None else value


def fp8_block_size(config) -> tuple[int, int]:
    """``weight_block_size`` of a fine-grained FP8 checkpoint's config (128 x 128 by default)."""
    block = _quant_get(config, "weight_block_size", FP8_DEFAULT_BLOCK)
    return int(block[0]), int(block[1])


def _fp8_scales(shape, block: tuple[int, int]) -> int:
    """Float32 scales of one FP8 weight of ``shape`` (``out x in``, or ``experts x out x in``)."""
    *lead, rows, cols = shape
    return math.prod(lead) * math.ceil(rows / block[0]) * math.ceil(cols / block[1])


def _count_on_meta(config, trust_remote_code: bool) -> ParamCounts:
    from transformers import AutoModelForCausalLM

    dtype = _resolve_dtype("auto", config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        from transformers.quantizers.base import get_keys_to_not_convert
        from transformers.quantizers.quantizers_utils import should_convert_module

        skip = get_keys_to_not_convert(model)
    except ImportError:  # older layouts: the output embedding is what is always skipped
        skip = ["lm_head"]

        def should_convert_module(name, patterns):
            return not any(name == p or name.endswith("." + p) for p in patterns)

    from transformers.pytorch_utils import Conv1D

    # Fine-grained FP8 (transformers.integrations.finegrained_fp8.replace_with_fp8_linear): plain
    # nn.Linear modules and modules named "*.experts", minus the checkpoint's skip list (or the
    # default one) and the model's fp32 modules.
    fp8_skip = list(_quant_get(config, "modules_to_not_convert", None) or skip)
    fp8_skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    block = fp8_block_size(config)
    is_gpt_oss = getattr(config, "model_type", "") == "gpt_oss"
    seen: set[int] = set()
    total = linear_weight = linear_rows = mxfp4 = fused = fp8 = fp8_scales = 0
    fp8_biased_experts = False
    for name, module in model.named_modules():
        linear = (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip)
        experts = type(module).__name__.endswith("Experts")
        fp8_linear = type(module) is torch.nn.Linear and should_convert_module(name, fp8_skip)
        fp8_experts = name.endswith(".experts") and should_convert_module(name, fp8_skip)
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # tied weights count once
            seen.add(id(param))
            n = param.numel()
            total += n
            if linear and pname == "weight":
                linear_weight += n
                linear_rows += param.shape[0] if type(module) is torch.nn.Linear else param.shape[1]
            elif experts and param.dim() == 3:
                fused += n
                if is_gpt_oss and pname in ("gate_up_proj", "down_proj"):
                    mxfp4 += n
            if (fp8_linear and pname == "weight") or (fp8_experts and param.dim() == 3):
                fp8 += n
                fp8_scales += _fp8_scales(param.shape, block)
        if fp8_experts and getattr(module, "has_bias", False):
            fp8_biased_experts = True  # FP8Experts takes no biases (gpt-oss): no FP8 format for this model
    if fp8_biased_experts:
        fp8 = fp8_scales = 0
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return ParamCounts(total, linear_weight, linear_rows, mxfp4, fused, buffer_bytes, "meta", fp8, fp8_scales)


def _count_analytic(config) -> ParamCounts:
    """Decoder-only transformer from the usual fields (Llama / Qwen3(-MoE) / gpt-oss layouts).
    Biases, q/k norms and sinks are ignored (< 0.1 % of a large model)."""
    c = config
    H, L, V = c.hidden_size, c.num_hidden_layers, c.vocab_size
    nq = c.num_attention_heads
    nkv = getattr(c, "num_key_value_heads", None) or nq
    hd = getattr(c, "head_dim", None) or H // nq
    attn = H * nq * hd * 2 + H * nkv * hd * 2
    n_experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 0
    moe_inter = getattr(c, "moe_intermediate_size", None) or getattr(c, "intermediate_size", 0)
    if n_experts:
        experts = n_experts * 3 * H * moe_inter
        mlp_linear, router = 0, n_experts * H
    else:
        experts, router = 0, 0
        mlp_linear = 3 * H * c.intermediate_size
    embed = V * H
    lm_head = 0 if getattr(c, "tie_word_embeddings", False) else V * H
    norms = L * 2 * H + H
    linear = L * (attn + mlp_linear)
    total = embed + lm_head + norms + L * (attn + mlp_linear + experts + router)
    rows = L * (nq * hd + 2 * nkv * hd + H + (2 * c.intermediate_size + H if not n_experts else 0))
    is_gpt_oss = getattr(c, "model_type", "") == "gpt_oss"
    block = fp8_block_size(c)
    blocks = lambda rows, cols: _fp8_scales((rows, cols), block)
    fp8_scales = L * (blocks(nq * hd, H) + 2 * blocks(nkv * hd, H) + blocks(H, nq * hd))
    if n_experts:
        fp8_scales += L * n_experts * (blocks(2 * moe_inter, H) + blocks(H, moe_inter))
    else:
        fp8_scales += L * (2 * blocks(c.intermediate_size, H) + blocks(H, c.intermediate_size))
    fp8 = 0 if is_gpt_oss else linear + L * experts  # gpt-oss's experts have biases: no FP8Experts
    return ParamCounts(total, linear, rows, L * experts if is_gpt_oss else 0, L * experts, hd * 4, "analytic",
                       fp8, fp8_scales if fp8 else 0)


# --------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs for one batch of ``batch_size`` sequences of ``context_tokens`` tokens
    (prompt + generated, per sequence). ``total_bytes = weights + kv_cache + logits + activation``
    (``activation_bytes``: the larger of the attention's and the MoE experts' transients).

    ``kv_bytes_per_token_full`` / ``_sliding``: KV bytes of one token of one sequence, summed over
    the layers that keep every token / over the sliding-window layers. ``weights_bytes_if_4bit``:
    the weights under bitsandbytes nf4 (for the advice of :func:`check_fits`).
    """

    weights_bytes: int
    kv_cache_bytes: int
    logits_bytes: int
    total_bytes: int
    model_type: str
    n_params: int
    dtype: str
    quantization: str
    batch_size: int
    context_tokens: int
    vocab_size: int
    n_layers: int
    n_sliding_layers: int
    sliding_window: int | None
    record_sliding_past: bool
    kv_bytes_per_token_full: int
    kv_bytes_per_token_sliding: int
    weights_bytes_if_4bit: int
    notes: tuple[str, ...] = ()
    attention_bytes: int = 0  # one layer's transient at the longest context (attention_transient_bytes)
    experts_bytes: int = 0  # one MoE layer's transient at a decoding step (experts_transient_bytes)
    attn_implementation: str = "sdpa"

    @property
    def activation_bytes(self) -> int:
        """The transient counted in the total: the larger of the attention's and the experts'."""
        return max(self.attention_bytes, self.experts_bytes)

    def kv_bytes(self, batch_size: int, context_tokens: int) -> int:
        """The KV cache at another batch size / context (same model and settings)."""
        sliding_tokens = context_tokens
        if self.n_sliding_layers and self.sliding_window:
            window = min(context_tokens, self.sliding_window - 1)
            # recording: the whole past, the live window beside it, and the last block's free part
            sliding_tokens = context_tokens + window + RECORD_BLOCK - 1 if self.record_sliding_past else window
        return batch_size * (context_tokens * self.kv_bytes_per_token_full
                             + sliding_tokens * self.kv_bytes_per_token_sliding)

    def table(self) -> str:
        """A small plain-text table in GiB, with what each number assumes."""
        g = lambda b: f"{b / GiB:8.2f}"
        kv_how = f"{self.n_layers} layers, {self.kv_bytes_per_token_full + self.kv_bytes_per_token_sliding} B/token"
        if self.n_sliding_layers:
            if self.record_sliding_past:
                kv_how += (f"; {self.n_sliding_layers} sliding layers (window {self.sliding_window}) at full "
                           "length: the refinement loop records their past to cut caches back")
            else:
                kv_how += f"; {self.n_sliding_layers} sliding layers keep {self.sliding_window - 1} tokens"
        lines = [
            (f"memory estimate: {self.model_type}, {self.n_params / 1e9:.2f} B parameters, {self.dtype}, "
             f"quantization {self.quantization}, batch {self.batch_size} x {self.context_tokens} tokens"),
            f"  weights  {g(self.weights_bytes)} GiB",
            f"  KV cache {g(self.kv_cache_bytes)} GiB  ({kv_how})",
            f"  logits   {g(self.logits_bytes)} GiB  (B x V={self.vocab_size} float32, {LOGITS_FP32_COPIES} copies)",
            (f"  attention{g(self.attention_bytes)} GiB  ({self.attn_implementation}: one layer's transient at "
             f"{self.context_tokens} tokens)"),
            f"  experts  {g(self.experts_bytes)} GiB  (one MoE layer's decoding transient; the total counts the larger)",
            f"  total    {g(self.total_bytes)} GiB  (other activations not included)",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def summary(self) -> str:
        """One line: total and parts in GiB."""
        return (f"{self.total_bytes / GiB:.1f} GiB (weights {self.weights_bytes / GiB:.1f} + KV cache "
                f"{self.kv_cache_bytes / GiB:.1f} + logits {self.logits_bytes / GiB:.2f} + activations "
                f"{self.activation_bytes / GiB:.1f}) at batch "
                f"{self.batch_size} x {self.context_tokens} tokens")


def _resolve_dtype(dtype: Any, config) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        cfg_dtype = getattr(config, "dtype", None)
        if isinstance(cfg_dtype, str):
            cfg_dtype = DTYPES.get(cfg_dtype)
        return cfg_dtype if isinstance(cfg_dtype, torch.dtype) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def layer_kinds(config) -> tuple[int, int, int | None]:
    """``(full layers, sliding-window layers, window)`` from ``config.layer_types`` (gpt-oss:
    alternating ``sliding_attention`` / ``full_attention``) or, without it, a ``sliding_window``
    that applies to every layer (Mistral-style; Qwen3 only with ``use_sliding_window``)."""
    c = _text_config(config)
    n = c.num_hidden_layers
    window = getattr(c, "sliding_window", None)
    types = getattr(c, "layer_types", None)
    if types:
        sliding = sum(t == "sliding_attention" for t in types)
        return n - sliding, sliding, window if sliding else None
    if window and getattr(c, "use_sliding_window", True):
        return 0, n, window
    return n, 0, None


def default_attention(config) -> str:
    """The attention implementation Transformers gives ``config``'s model when none is asked:
    ``sdpa`` where the architecture supports it, else ``eager`` (gpt-oss: its attention sinks)."""
    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except (KeyError, ValueError):
        return "sdpa"
    return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"


def _attention_shape(config) -> tuple[int, int, int, int | None]:
    """(query heads, key/value heads, head dim, the window of every layer if all are sliding)."""
    c = _text_config(config)
    n_full, _, window = layer_kinds(config)
    nq = c.num_attention_heads
    nkv = getattr(c, "num_key_value_heads", None) or nq
    hd = getattr(c, "head_dim", None) or c.hidden_size // nq
    return nq, nkv, hd, (None if n_full else window)


def attention_transient_bytes(config, attn_implementation: str, batch_size: int, context_tokens: int,
                              esize: int) -> int:
    """Bytes one attention layer allocates, beside the KV cache, in a forward pass that attends
    over ``context_tokens`` positions (``esize`` bytes an element), for Transformers 5.23-5.24:

    - every implementation: the cache's ``torch.cat`` copy of the layer's keys and values,
      ``2 B H_kv C D``;
    - ``eager`` (every step) and ``sdpa`` (a padded multi-token prefill; a one-token decode step
      packs the query heads instead): keys and values repeated to every query head,
      ``2 B H_q C D``, when ``H_q > H_kv``;
    - ``eager``: the scores, ``EAGER_SCORE_COPIES x B H_q q C`` for ``q`` query positions,
      which the refinement loop keeps within ``2 B H_q C D`` by prefilling in chunks
      (:func:`prefill_chunk`; a decode step has ``q = 1``).

    Flash, flex and other kernels are counted with the cache copy only. Layers run one after
    another: this is the peak, not a sum over layers.
    """
    nq, nkv, hd, window = _attention_shape(config)
    C = min(context_tokens, window) if window else context_tokens
    per_head = 2 * batch_size * C * hd * esize  # keys and values of one head
    total = nkv * per_head
    if attn_implementation in ("eager", "sdpa") and nq > nkv:
        total += nq * per_head
    if attn_implementation == "eager":
        total += nq * per_head
    return total


def experts_transient_bytes(config, counts: ParamCounts, quantization: str, batch_size: int, esize: int,
                            device_type: str = "cuda") -> int:
    """Bytes one MoE layer allocates at a decoding step beside its input: on a GPU, Transformers
    5.23-5.24 decode MoE experts held in the compute dtype with ``batched_mm``, which gathers a
    copy of every selected expert's weights for every (token, expert) pair, ``B x top_k x
    (expert parameters) x esize`` (gpt-oss's experts in MXFP4 and FP8 experts run their own
    kernels, and the CPU keeps ``grouped_mm``: none)."""
    c = _text_config(config)
    n_experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 0
    top_k = getattr(c, "num_experts_per_tok", None) or 0
    if not (n_experts and top_k and counts.fused_experts) or device_type == "cpu" or quantization in ("mxfp4", "fp8"):
        return 0
    per_expert = counts.fused_experts // (c.num_hidden_layers * n_experts)
    return batch_size * top_k * per_expert * esize


def prefill_chunk(config, context_tokens: int, budget_tokens: int) -> int:
    """Query positions a chunk of an eager-attention prefill may hold at ``context_tokens`` so that
    its scores (``EAGER_SCORE_COPIES x B H_q q C``) stay within what
    :func:`attention_transient_bytes` reserves for them at ``budget_tokens`` (the run's longest
    context): ``floor(2 D budget / (EAGER_SCORE_COPIES C))``, at least 1 (the batch and the
    element size scale both sides alike)."""
    _, _, hd, window = _attention_shape(config)
    C = min(context_tokens, window) if window else context_tokens
    budget = min(budget_tokens, window) if window else budget_tokens
    return max(1, (2 * hd * budget) // (EAGER_SCORE_COPIES * max(C, 1)))


def estimate_memory(config, *, dtype: Any = "auto", quantization: str = "none", batch_size: int = 1,
                    context_tokens: int, record_sliding_past: bool = True, attn_implementation: str | None = None,
                    device_type: str = "cuda", trust_remote_code: bool = False) -> MemoryEstimate:
    """Estimate the memory of ``config``'s model for a batch of ``batch_size`` sequences of
    ``context_tokens`` tokens each (prompt + generated), in bytes.

    Args:
        config: a Transformers ``PretrainedConfig`` (``AutoConfig.from_pretrained`` or built).
        dtype: compute dtype (``"bfloat16"``, ``"float32"``, ``"float16"``, a ``torch.dtype``, or
            ``"auto"``: the config's). Unquantised weights, the KV cache and activations use it.
        quantization: what is in memory, as :class:`~tje_hf.config.ModelSpec` names it:
            ``none`` / ``bf16-dequantized``: every weight in ``dtype``;
            ``8bit``: bitsandbytes int8 for the ``nn.Linear`` weights (1 B + a float32 row scale);
            ``4bit``: bitsandbytes nf4 for the ``nn.Linear`` weights (0.5 B + a float32 absmax per
            64), embeddings, norms, biases, the output layer and fused MoE experts stay in ``dtype``;
            ``mxfp4``: gpt-oss expert matrices at 4.25 bits, everything else in ``dtype``;
            ``fp8``: a fine-grained FP8 checkpoint as Transformers holds it: the converted
            ``nn.Linear`` weights and the fused MoE experts at 1 B plus a float32 scale per
            128 x 128 block; embeddings, norms, the router and the output layer in ``dtype``.
            (:func:`effective_quantization` says which one a load will actually give.)
        batch_size: sequences decoded together.
        context_tokens: positions per sequence the KV cache holds at the end (prompt + generated).
        record_sliding_past: sliding-window layers keep every token (True: what the refinement
            loop's cache does, ``tje_hf.generation.kvcache.new_cache``, so that caches can be cut back) or
            only their last ``window - 1`` (False: a plain ``generate``).
        attn_implementation: the model's attention (``eager``, ``sdpa``, ...; default
            :func:`default_attention`), for :func:`attention_transient_bytes`.
        device_type: where it runs (``cuda`` or ``cpu``): decides the MoE experts' decoding
            kernel (:func:`experts_transient_bytes`).
        trust_remote_code: passed on when the model is built on the meta device.

    Raises:
        ValueError: an unknown quantization or dtype, ``mxfp4`` for a model without gpt-oss
            experts, ``fp8`` for a model Transformers cannot hold in FP8 (no linear weights, or
            MoE experts with biases: gpt-oss), or a batch / context below 1.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: must be one of {QUANTIZATIONS}")
    if batch_size < 1 or context_tokens < 1:
        raise ValueError(f"batch_size={batch_size}, context_tokens={context_tokens}: both must be >= 1")
    cdtype = _resolve_dtype(dtype, config)
    if quantization == "bf16-dequantized":
        cdtype, quantization = torch.bfloat16, "none"
    esize = torch.empty((), dtype=cdtype).element_size()
    counts = count_parameters(config, trust_remote_code=trust_remote_code)
    notes: list[str] = []
    if counts.source == "analytic":
        notes.append("parameters counted from config fields (the model could not be built on the meta device)")

    def bnb4(c: ParamCounts) -> float:
        return (c.total - c.linear_weight) * esize + c.linear_weight * NF4_BYTES_PER_PARAM

    if quantization == "none":
        weights = counts.total * esize
    elif quantization == "4bit":
        weights = bnb4(counts)
    elif quantization == "8bit":
        weights = (counts.total - counts.linear_weight) * esize + counts.linear_weight * INT8_BYTES_PER_PARAM \
            + counts.linear_rows * 4
    elif quantization == "fp8":
        if not counts.fp8_weight:
            raise ValueError(f"quantization='fp8': Transformers' fine-grained FP8 cannot hold model_type="
                             f"{getattr(config, 'model_type', '?')!r} (no linear weights, or MoE experts with "
                             "biases, which its FP8Experts does not take)")
        weights = (counts.total - counts.fp8_weight) * esize + counts.fp8_weight * FP8_BYTES_PER_PARAM \
            + counts.fp8_scales * FP8_SCALE_BYTES
        bn, bk = fp8_block_size(config)
        notes.append(f"{counts.fp8_weight / 1e9:.2f} B parameters in FP8 ({counts.fused_experts / 1e9:.2f} B of them "
                     f"fused MoE experts) + {counts.fp8_scales / 1e6:.2f} M float32 scales ({bn}x{bk} blocks); "
                     f"{(counts.total - counts.fp8_weight) / 1e9:.2f} B in {_DTYPE_NAMES[cdtype]} (embeddings, "
                     "output layer, norms, router)")
    else:  # mxfp4
        if not counts.mxfp4_experts:
            raise ValueError(f"quantization='mxfp4': model_type={getattr(config, 'model_type', '?')!r} has no "
                             "gpt-oss expert weights to hold in MXFP4; use 'none', '4bit' or '8bit'")
        weights = (counts.total - counts.mxfp4_experts) * esize + counts.mxfp4_experts * MXFP4_BYTES_PER_PARAM
        notes.append(f"{counts.mxfp4_experts / 1e9:.2f} B expert parameters in MXFP4 (4.25 bits), "
                     f"{(counts.total - counts.mxfp4_experts) / 1e9:.2f} B in {_DTYPE_NAMES[cdtype]}")
    if quantization in ("4bit", "8bit") and counts.fused_experts:
        notes.append(f"bitsandbytes quantises nn.Linear layers only: {counts.fused_experts / 1e9:.2f} B fused "
                     f"MoE expert parameters stay in {_DTYPE_NAMES[cdtype]}")
    weights = math.ceil(weights) + counts.buffer_bytes

    c = _text_config(config)
    n_full, n_sliding, window = layer_kinds(config)
    nkv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer_token = 2 * nkv * hd * esize  # K and V
    est = MemoryEstimate(
        weights_bytes=weights, kv_cache_bytes=0, logits_bytes=0, total_bytes=0,
        model_type=str(getattr(config, "model_type", "?")), n_params=counts.total, dtype=_DTYPE_NAMES[cdtype],
        quantization=quantization, batch_size=batch_size, context_tokens=context_tokens,
        vocab_size=int(c.vocab_size), n_layers=n_full + n_sliding, n_sliding_layers=n_sliding,
        sliding_window=window, record_sliding_past=record_sliding_past,
        kv_bytes_per_token_full=n_full * per_layer_token, kv_bytes_per_token_sliding=n_sliding * per_layer_token,
        weights_bytes_if_4bit=math.ceil(bnb4(counts)) + counts.buffer_bytes, notes=tuple(notes))
    kv = est.kv_bytes(batch_size, context_tokens)
    logits = batch_size * est.vocab_size * (4 * LOGITS_FP32_COPIES + esize)
    attn = attn_implementation or default_attention(config)
    attention = attention_transient_bytes(config, attn, batch_size, context_tokens, esize)
    experts = experts_transient_bytes(config, counts, quantization, batch_size, esize, device_type)
    from dataclasses import replace

    # attention and MoE run one after the other: the larger of the two transients is the peak
    return replace(est, kv_cache_bytes=kv, logits_bytes=logits, attention_bytes=attention, experts_bytes=experts,
                   attn_implementation=attn, total_bytes=weights + kv + logits + max(attention, experts))


def effective_quantization(requested: str, config, *, cuda: bool | None = None,
                           mxfp4_kernels: bool | None = None, fp8_gpu: bool | None = None) -> str:
    """What a load with ``ModelSpec.quantization=requested`` puts in memory.

    A checkpoint's own ``quantization_config`` decides when nothing else is asked: an MXFP4
    checkpoint (gpt-oss) stays MXFP4 only with CUDA and the ``kernels`` and ``triton`` packages;
    a fine-grained FP8 checkpoint (``quant_method: fp8``) stays FP8 only on a CUDA GPU of compute
    capability >= 8.9 (``fp8_gpu``); otherwise Transformers dequantises either to bf16
    (``"none"``). A pre-quantised bitsandbytes checkpoint is ``4bit`` / ``8bit``. ``mxfp4`` or
    ``fp8`` asked of a checkpoint without such weights is ``"none"`` (nothing is quantised on
    the fly).
    """

    if cuda is None:
        cuda = torch.cuda.is_available()
    if mxfp4_kernels is None:
        mxfp4_kernels = not missing_mxfp4_kernels()
    if fp8_gpu is None:
        fp8_gpu = fp8_native_gpu() if cuda else False
    method = _quant_get(config, "quant_method")
    if requested in ("4bit", "8bit"):
        return requested
    if requested == "bf16-dequantized":
        return "none"
    if method == "mxfp4":
        return "mxfp4" if cuda and mxfp4_kernels else "none"
    if method == "fp8":
        return "fp8" if cuda and fp8_gpu else "none"
    if method == "bitsandbytes":
        return "4bit" if _quant_get(config, "load_in_4bit", False) else "8bit"
    return "none"


# --------------------------------------------------------------------------------------------
# Does it fit?


@dataclass(frozen=True)
class Budget:
    """Memory available where the model goes: ``available_bytes`` free now, ``where`` in words,
    ``n_gpus`` GPUs summed (0 for RAM)."""

    available_bytes: int
    where: str
    n_gpus: int


def available_memory(device: str | torch.device | None = None, *, device_map: str | None = None) -> Budget:
    """Free memory of the target: the free memory of the CUDA device (``torch.cuda.mem_get_info``),
    summed over every visible GPU for ``device_map`` ``auto`` / ``balanced`` / ``sequential``; or
    the available RAM for the CPU (psutil if installed, else ``MemAvailable`` of /proc/meminfo)."""
    spread = device_map in _SPREAD
    target = None if spread else device_map
    dev = torch.device(target or device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if spread and not torch.cuda.is_available():
        dev = torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {dev}: CUDA is not available here; set model.device_map / device to 'cpu'")
        if spread:
            free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            n = torch.cuda.device_count()
            return Budget(int(free), f"{n} GPU{'s' if n > 1 else ''} (device_map={device_map})", n)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return Budget(int(torch.cuda.mem_get_info(index)[0]), f"cuda:{index}", 1)
    return Budget(_available_ram(), "CPU RAM", 0)


def _available_ram() -> int:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise ModelLoadError("cannot tell the available RAM (no psutil, no /proc/meminfo); "
                         f"set {NO_CHECK_ENV}=1 to skip the memory check")


def check_fits(estimate: MemoryEstimate, device: str | torch.device | None = None, *,
               device_map: str | None = None, available_bytes: int | None = None,
               headroom: float = DEFAULT_HEADROOM) -> Budget:
    """Raise :class:`InsufficientMemoryError` unless ``estimate.total_bytes`` fits
    ``(1 - headroom)`` of the free memory where the model goes; return that :class:`Budget`.

    ``available_bytes`` replaces the measured free memory (tests, or a share of a GPU).
    The message is one line: what is needed, what is there, and what to change, in order of
    what helps (``model.quantization: 4bit``, ``batch_size``, ``decode.max_new_tokens``,
    ``model.device_map: auto``).
    """
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom={headroom}: must be in [0, 1)")
    if available_bytes is not None:
        budget = Budget(int(available_bytes), "the given budget", 0)
    else:
        budget = available_memory(device, device_map=device_map)
    usable = budget.available_bytes * (1 - headroom)
    e = estimate
    if e.total_bytes <= usable:
        return budget
    gib = lambda b: f"{b / GiB:.1f}"
    advice = []
    per_seq = (e.kv_cache_bytes + e.logits_bytes + e.activation_bytes) / e.batch_size
    w4 = e.weights_bytes_if_4bit
    helps4 = e.quantization != "4bit" and w4 < 0.8 * e.weights_bytes
    fits4 = w4 + e.kv_cache_bytes + e.logits_bytes + e.activation_bytes <= usable
    if e.weights_bytes >= usable:  # the weights alone: quantise, spread, or a bigger GPU
        if helps4:
            advice.append(f"model.quantization: 4bit (weights ~{gib(w4)} GiB"
                          f"{'' if fits4 else ', not enough alone'})")
        advice.append("a GPU with more memory")
    else:  # the weights fit: the KV cache of this batch and context does not
        max_batch = int((usable - e.weights_bytes) // per_seq) if per_seq > 0 else 0
        if 1 <= max_batch < e.batch_size:
            advice.append(f"batch_size <= {max_batch}")
        # the attention transient grows with the context too (at most linearly)
        per_token = e.kv_bytes(e.batch_size, e.context_tokens + 1) - e.kv_cache_bytes \
            + e.activation_bytes / e.context_tokens
        if per_token > 0:
            max_ctx = int((usable - e.weights_bytes - e.logits_bytes) // per_token)
            if 1 <= max_ctx < e.context_tokens:
                advice.append(f"a context (prompt + decode.max_new_tokens) <= {max_ctx} tokens at this batch")
        if helps4 and fits4:
            advice.append(f"model.quantization: 4bit (weights ~{gib(w4)} GiB)")
    if budget.n_gpus <= 1 and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        advice.append(f"model.device_map: auto (spreads over {torch.cuda.device_count()} GPUs)")
    if not advice:
        advice.append("a smaller batch_size or context")
    raise InsufficientMemoryError(
        f"{e.model_type} needs ~{e.summary()} but {budget.where} has {gib(budget.available_bytes)} GiB free "
        f"({gib(usable)} usable after {headroom:.0%} headroom); change: {'; or '.join(advice)} "
        f"(or set {NO_CHECK_ENV}=1 to load anyway)")


# --------------------------------------------------------------------------------------------
# Before load_model loads


def model_context(config) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its text config), or None."""
    ctx = getattr(_text_config(config), "max_position_embeddings", None)
    return int(ctx) if ctx else None


def default_context(config, cap: int = 32768) -> int:
    """``config.max_position_embeddings`` capped at ``cap`` (32k: the paper's runs stay below)."""
    return min(model_context(config) or cap, cap)


def _target_type(device, device_map) -> str:
    """``cuda`` or ``cpu``: where a load with ``device`` / ``device_map`` puts the model."""
    if device_map in _SPREAD:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device_map or device or ("cuda" if torch.cuda.is_available() else "cpu")).type


def preflight(source: str, spec, *, device: str | None = None, device_map: str | None = None, batch_size: int = 1,
              context_tokens: int | None = None, config_kwargs: dict | None = None) -> MemoryEstimate | None:
    """Read ``source``'s config, log the memory estimate for ``batch_size`` x ``context_tokens``
    (default :func:`default_context`) and raise :class:`InsufficientMemoryError` when it cannot
    fit where ``spec`` (a :class:`~tje_hf.config.ModelSpec`) and ``device`` place the model.

    ``device_map``: the one the load passes to ``from_pretrained`` (None: the model goes to
    ``device``). ``config_kwargs``: ``revision`` / ``gguf_file`` / ``trust_remote_code`` for ``AutoConfig``.
    Returns None (and checks nothing) when ``$TJE_HF_NO_MEMORY_CHECK`` is set or the config
    cannot be read (the load that follows reports that error itself).
    """
    if os.environ.get(NO_CHECK_ENV, "").strip() not in ("", "0"):
        return None
    from transformers import AutoConfig

    kwargs = dict(config_kwargs or {})
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("memory check skipped: cannot read the config of %s (%s)", source, exc)
        return None
    quant = effective_quantization(spec.quantization, config)
    # Never more than the model's own context: generation stops there (tje_hf.generation.hf).
    max_ctx = model_context(config)
    context = context_tokens or default_context(config)
    if max_ctx:
        context = min(context, max_ctx)
    est = estimate_memory(config, dtype=spec.dtype, quantization=quant, batch_size=batch_size, context_tokens=context,
                          record_sliding_past=True, attn_implementation=spec.attn_implementation,
                          device_type=_target_type(device, device_map),
                          trust_remote_code=bool(kwargs.get("trust_remote_code")))
    log.info("%s\n%s", spec.name_or_path, est.table())
    budget = check_fits(est, device, device_map=device_map)
    log.info("fits: needs %s; %s has %.1f GiB free", est.summary(), budget.where, budget.available_bytes / GiB)
    return est


# --------------------------------------------------------------------------------------------
# The paper's models, from their public architecture values (no download)


def _gpt_oss(layers: int, experts: int):
    from transformers import GptOssConfig

    return GptOssConfig(num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=4,
                        hidden_size=2880, intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8,
                        head_dim=64, sliding_window=128, vocab_size=201088, max_position_embeddings=131072,
                        dtype="bfloat16")


def _qwen3_30b_a3b():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(num_hidden_layers=48, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                          num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
                          max_position_embeddings=262144, tie_word_embeddings=False, dtype="bfloat16")


def _llama_3_3_70b():
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                       tie_word_embeddings=False, dtype="bfloat16")


REFERENCE_MODELS: dict[str, Callable[[], Any]] = {
    "gpt-oss-20b": lambda: _gpt_oss(24, 32),
    "gpt-oss-120b": lambda: _gpt_oss(36, 128),
    "qwen3-30b-a3b": _qwen3_30b_a3b,
    "llama-3.3-70b": _llama_3_3_70b,
}
"""Configs of the paper's models built from their public ``config.json`` values (architecture
fields only), for estimates and GPU checks without the Hub."""


def reference_config(name: str):
    """The config of a paper model by name (keys of :data:`REFERENCE_MODELS`)."""
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; known: {sorted(REFERENCE_MODELS)}")
    return REFERENCE_MODELS[name]()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tje_hf.models.memory",
                                description="Print the memory estimate of a paper model (public architecture).")
    p.add_argument("model", choices=sorted(REFERENCE_MODELS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=16384, help="tokens per sequence (prompt + generated)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", default="none", choices=QUANTIZATIONS)
    p.add_argument("--no-record-sliding-past", action="store_true",
                   help="sliding layers keep only their window (a plain generate, not the refinement loop)")
    p.add_argument("--attn", default=None, metavar="IMPL",
                   help="attention implementation (eager, sdpa, flash_attention_2, ...; default: what "
                        "Transformers picks, sdpa where the model supports it, else eager: gpt-oss)")
    args = p.parse_args(argv)
    try:
        est = estimate_memory(reference_config(args.model), dtype=args.dtype, quantization=args.quantization,
                              batch_size=args.batch, context_tokens=args.context,
                              record_sliding_past=not args.no_record_sliding_past, attn_implementation=args.attn)
    except ValueError as exc:
        p.error(str(exc))
    print(est.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
