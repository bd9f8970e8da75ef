"""tje_hf: Think Just Enough with Hugging Face Transformers.

Top-k entropy from raw logits, streamed during ``generate``; an entropy-gated self-refinement
loop; threshold calibration and model comparison. The public API is what ``__all__`` names.
"""

from .analysis.calibration import Calibration, calibrate, calibrate_records
from .analysis.evaluation import evaluate_run
from .config import (
    DecodeConfig,
    ModelSpec,
    RefineConfig,
    RunConfig,
    SignalConfig,
    TaskConfig,
    load_run_config,
)
from .generation.hf import GenerationOutput, SequenceResult, generate_with_entropy
from .generation.signals import (
    deepconf_confidence,
    full_entropy,
    self_certainty,
    token_logprob,
    topk_entropies,
    topk_entropy,
)
from .generation.tracker import EntropyTracker, TokenBudgetStop, WindowMeanStop
from .models.loading import LoadedModel, load_model
from .refinement import RefineResult, StepResult, refine
from .runner import run

__version__ = "0.1.0"

__all__ = [
    "Calibration",
    "DecodeConfig",
    "EntropyTracker",
    "GenerationOutput",
    "LoadedModel",
    "ModelSpec",
    "RefineConfig",
    "RefineResult",
    "RunConfig",
    "SequenceResult",
    "SignalConfig",
    "StepResult",
    "TaskConfig",
    "TokenBudgetStop",
    "WindowMeanStop",
    "calibrate",
    "calibrate_records",
    "deepconf_confidence",
    "evaluate_run",
    "full_entropy",
    "generate_with_entropy",
    "load_model",
    "load_run_config",
    "refine",
    "run",
    "self_certainty",
    "token_logprob",
    "topk_entropies",
    "topk_entropy",
]
