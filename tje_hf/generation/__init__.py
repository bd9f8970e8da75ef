"""Alternative generation engines for tje_hf, each behind the same result types as the HF path.

``tje_hf.generation.hf.generate_with_entropy`` (Hugging Face Transformers) is the reference path. A
backend here produces the same :class:`tje_hf.generation.hf.GenerationOutput` /
:class:`tje_hf.generation.hf.SequenceResult` from another engine:

- :class:`VllmBackend` (``tje_hf.generation.vllm``): vLLM, for throughput at scale (tensor
  parallelism, continuous batching, automatic prefix caching). Top-k entropies, DeepConf confidence
  and the sampled token's log-probability are exact; full-vocabulary entropy and self-certainty are
  unavailable (NaN). See ``docs/vllm.md``.

The engines themselves are optional dependencies: importing this package imports none of them;
``VllmBackend`` imports ``vllm`` only when its engine is first built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VllmBackend"]


def __getattr__(name: str) -> Any:
    # Lazy: `from tje_hf.generation import VllmBackend` works without vllm installed until used.
    if name == "VllmBackend":
        from .vllm import VllmBackend

        return VllmBackend
    raise AttributeError(f"module 'tje_hf.generation' has no attribute {name!r}")
