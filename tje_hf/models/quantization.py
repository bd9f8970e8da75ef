"""Weight formats and the kernels they need: the dtypes a ``ModelSpec`` names, the Transformers
quantisation config for each ``ModelSpec.quantization``, and the MXFP4 kernel probe. Shared by
loading (``loading.py``) and the memory estimate (``memory.py``), which import it, not each other."""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..config import ModelSpec
from ..errors import ModelLoadError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # ModelSpec.dtype


def missing_mxfp4_kernels() -> list[str]:
    """The packages Transformers' MXFP4 kernels need (besides CUDA) that are not installed."""
    return [m for m in ("triton", "kernels") if importlib.util.find_spec(m) is None]


def quantization_config(spec: ModelSpec):
    """The Transformers quantisation config for ``spec.quantization`` (None for "none")."""
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
                        "(about 42 GB for gpt-oss-20b, 130 GB for gpt-oss-120b)",
                        "no CUDA" if not torch.cuda.is_available() else "missing " + ", ".join(missing))
        return None  # the checkpoint's own quantization_config applies
    return None
