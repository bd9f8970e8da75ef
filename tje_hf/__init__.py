"""tje_hf: Think Just Enough with Hugging Face Transformers.

Top-k entropy from raw logits, streamed during ``generate``; an entropy-gated self-refinement
loop; threshold calibration and model comparison. The public API is what ``__all__`` names.

Importing ``tje_hf`` is cheap: it imports neither torch, transformers nor vllm. Each public name
is resolved from its module on first access (PEP 562), so ``tje_hf.load_model`` imports torch and
``tje_hf.calibrate`` does not (nor does ``tje_hf.to_dataframe``, which imports pandas when called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .export import to_dataframe
    from .generation.hf import generate_with_entropy
    from .generation.outputs import GenerationOutput, SequenceResult
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
    from .records import read_records
    from .refinement import RefineResult, StepResult, refine
    from .runner import run

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_MODULES: dict[str, tuple[str, ...]] = {
    ".analysis.calibration": ("Calibration", "calibrate", "calibrate_records"),
    ".analysis.evaluation": ("evaluate_run",),
    ".config": ("DecodeConfig", "ModelSpec", "RefineConfig", "RunConfig", "SignalConfig", "TaskConfig",
                "load_run_config"),
    ".export": ("to_dataframe",),
    ".generation.hf": ("generate_with_entropy",),
    ".generation.outputs": ("GenerationOutput", "SequenceResult"),
    ".generation.signals": ("deepconf_confidence", "full_entropy", "self_certainty", "token_logprob",
                            "topk_entropies", "topk_entropy"),
    ".generation.tracker": ("EntropyTracker", "TokenBudgetStop", "WindowMeanStop"),
    ".models.loading": ("LoadedModel", "load_model"),
    ".records": ("read_records",),
    ".refinement": ("RefineResult", "StepResult", "refine"),
    ".runner": ("run",),
}
_LAZY: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

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
    "read_records",
    "refine",
    "run",
    "self_certainty",
    "to_dataframe",
    "token_logprob",
    "topk_entropies",
    "topk_entropy",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
