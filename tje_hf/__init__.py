"""tje_hf: Think Just Enough with Hugging Face Transformers.

Top-k entropy from raw logits, streamed during ``generate``; an entropy-gated self-refinement
loop; threshold calibration and model comparison. The public API is what ``__all__`` names.
"""

from .config import DecodeConfig, ModelSpec, RefineConfig, RunConfig, SignalConfig, load_run_config
from .generate import GenerationOutput, SequenceResult, generate_with_entropy
from .models import LoadedModel, load_model
from .signals import (
    deepconf_confidence,
    full_entropy,
    self_certainty,
    token_logprob,
    topk_entropies,
    topk_entropy,
)
from .tracker import EntropyTracker, TokenBudgetStop, WindowMeanStop

__version__ = "0.1.0"

__all__ = [
    "DecodeConfig",
    "EntropyTracker",
    "GenerationOutput",
    "LoadedModel",
    "ModelSpec",
    "RefineConfig",
    "RunConfig",
    "SequenceResult",
    "SignalConfig",
    "TokenBudgetStop",
    "WindowMeanStop",
    "deepconf_confidence",
    "full_entropy",
    "generate_with_entropy",
    "load_model",
    "load_run_config",
    "self_certainty",
    "token_logprob",
    "topk_entropies",
    "topk_entropy",
]
