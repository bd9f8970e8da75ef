"""Weight formats and the kernels they need: the dtypes a ``ModelSpec`` names, the Transformers
quantisation config for each ``ModelSpec.quantization``, and the probes for the MXFP4 and FP8
kernels. Shared by loading (``loading.py``) and the memory estimate (``memory.py``), which import
it, not each other.

What Transformers 5.23-5.24 do with a pre-quantised checkpoint (read in their source,
``transformers/quantizers/quantizer_mxfp4.py`` and ``quantizer_finegrained_fp8.py``):

- MXFP4 (gpt-oss): kept in MXFP4 on a CUDA GPU of compute capability >= 7.5 with triton >= 3.4
  and a ``kernels`` package in the range Transformers accepts; otherwise dequantised to bf16.
- Fine-grained FP8 (``quant_method: fp8``, e.g. ``Qwen/Qwen3-30B-A3B-*-2507-FP8``): kept in FP8
  (every ``nn.Linear`` but the skipped ones, and the fused MoE experts) on a CUDA GPU of compute
  capability >= 8.9; on an older GPU or without CUDA, dequantised to bf16. The FP8 matmuls run
  the ``kernels-community/finegrained-fp8`` Triton kernel that the ``kernels`` package fetches
  from the Hugging Face Hub on first use: without ``kernels`` the model loads and the first
  forward pass fails. On Hopper/Blackwell they run DeepGEMM instead (also through ``kernels``)
  only when it can be compiled: ``CUDA_HOME`` must hold an nvcc >= 12.3 (Hopper) or >= 12.9
  (Blackwell) (``transformers/integrations/deepgemm.py``); a pip-only install runs the Triton kernel.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..config import ModelSpec
from ..errors import ModelLoadError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # ModelSpec.dtype

# Fine-grained FP8 runs natively from compute capability 8.9 (Ada, Hopper, Blackwell); below it
# Transformers dequantises the checkpoint to bf16.
FP8_MIN_CAPABILITY = (8, 9)
MXFP4_MIN_TRITON = "3.4.0"


def _kernels_range() -> tuple[str, str]:
    """The ``kernels`` versions Transformers accepts, ``[min, max)`` (0.18.2 and 0.19.0 in 5.23-5.24)."""
    try:
        from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION
    except ImportError:  # an older layout: it took any version
        return "0", "999"
    return KERNELS_MIN_VERSION, KERNELS_MAX_VERSION


def kernels_requirement() -> str:
    """The pip requirement for the ``kernels`` versions this Transformers accepts."""
    low, high = _kernels_range()
    return f"kernels>={low},<{high}"


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def _kernels_ok() -> bool:
    from packaging.version import Version

    have = _version("kernels")
    low, high = _kernels_range()
    return have is not None and Version(low) <= Version(have) < Version(high)


def missing_mxfp4_kernels() -> list[str]:
    """The packages Transformers' MXFP4 kernels need (besides a CUDA GPU of compute capability
    >= 7.5) that are missing or outside the versions Transformers accepts (it then dequantises)."""
    from packaging.version import Version

    missing = []
    triton = _version("triton")
    if triton is None or Version(triton) < Version(MXFP4_MIN_TRITON):
        missing.append(f"triton>={MXFP4_MIN_TRITON}")
    if not _kernels_ok():
        missing.append(kernels_requirement())
    return missing


def missing_fp8_kernels() -> list[str]:
    """The packages Transformers' fine-grained FP8 matmuls need that are missing (the ``kernels``
    package in the range Transformers accepts; it fetches a Triton kernel, so ``triton`` too)."""
    missing = [] if importlib.util.find_spec("triton") is not None else ["triton"]
    if not _kernels_ok():
        missing.append(kernels_requirement())
    return missing


def fp8_native_gpu() -> bool:
    """True when Transformers keeps a fine-grained FP8 checkpoint in FP8: a CUDA GPU of compute
    capability >= 8.9 (the current device)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= FP8_MIN_CAPABILITY


def quantization_config(spec: ModelSpec):
    """The Transformers quantisation config for ``spec.quantization`` (None for "none", and for
    "mxfp4" / "fp8", whose checkpoints carry their own).

    Raises :class:`ModelLoadError` for "fp8" on a GPU that would keep the weights in FP8 but
    without the ``kernels`` package (Transformers would load the model and fail at its first
    forward pass).
    """
    if spec.quantization in ("4bit", "8bit"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"model.quantization={spec.quantization!r} needs bitsandbytes: "
                                 "pip install 'tje-hf[quant]'")
        from transformers import BitsAndBytesConfig

        if spec.quantization == "4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available()
                                      else torch.float32)
        return BitsAndBytesConfig(load_in_8bit=True)
    if spec.quantization == "bf16-dequantized":
        from transformers import Mxfp4Config

        return Mxfp4Config(dequantize=True)
    if spec.quantization == "mxfp4":
        missing = missing_mxfp4_kernels()
        if missing or not torch.cuda.is_available():
            log.warning("MXFP4 kernels unavailable (%s); gpt-oss weights will be dequantised to bf16 "
                        "(weights about 39.0 GiB for gpt-oss-20b, 217.6 GiB for gpt-oss-120b)",
                        "no CUDA" if not torch.cuda.is_available() else "missing " + ", ".join(missing))
        return None  # the checkpoint's own quantization_config applies
    if spec.quantization == "fp8":
        if not fp8_native_gpu():
            where = (f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))} < 8.9"
                     if torch.cuda.is_available() else "no CUDA")
            log.warning("FP8 needs a GPU of compute capability >= 8.9 (%s): Transformers will dequantise the "
                        "checkpoint to bf16 (about 57 GiB for Qwen3-30B-A3B); the vLLM backend runs FP8 "
                        "checkpoints on more GPUs (docs/vllm.md)", where)
            return None
        missing = missing_fp8_kernels()
        if missing:
            raise ModelLoadError(f"model.quantization='fp8' on this GPU needs {', '.join(missing)} (Transformers' "
                                 "FP8 matmuls run a Triton kernel that `kernels` fetches from the Hugging Face "
                                 f"Hub on first use): pip install '{kernels_requirement()}'")
        return None  # the checkpoint's own quantization_config (quant_method fp8) applies
    return None
