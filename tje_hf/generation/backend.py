"""The interface between the refinement loop (and the runner) and a generation engine.

A backend turns a batch of tokenized prompts into a :class:`~tje_hf.generation.outputs.GenerationOutput`
with every signal of every generated token, and owns whatever it keeps between the calls of one
refinement loop (a KV cache). :func:`tje_hf.refinement.refine` and :func:`tje_hf.runner.run`
know nothing else about the engine. Two implement it:

- :class:`tje_hf.generation.hf.HfBackend`: Hugging Face Transformers ``generate`` with the
  :class:`~tje_hf.generation.tracker.EntropyTracker` first in the processor chain; holds the
  explicit KV cache (:class:`~tje_hf.generation.kvcache.CachedPrefix`) between calls.
- :class:`tje_hf.generation.vllm.VllmBackend`: a vLLM engine; its automatic prefix caching
  reuses prompt prefixes by itself.

A third engine is one module with one class that has these attributes and methods; it shares
the result types and the rules of :mod:`tje_hf.generation.outputs` (seeds, context check, padding,
pad id, end-of-turn ids, means).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, Protocol

from ..config import DecodeConfig
from ..models.segments import GENERIC, SegmentRules
from .outputs import GenerationOutput


class Backend(Protocol):
    """A generation engine for one model, as the refinement loop uses it.

    Capabilities (class attributes, fixed per engine):

    - ``name``: the engine's name (``"hf"``, ``"vllm"``), as ``RunConfig.backend`` spells it.
    - ``manages_prefix_cache``: True when the engine reuses prompt prefixes by itself (vLLM's
      prefix caching), so ``reuse_cache`` in :meth:`generate` changes nothing; False when the
      backend holds an explicit cache between calls (HF).

    Model facts:

    - ``tokenizer``: the Transformers tokenizer of the model (chat templates, family detection,
      decoding); the refinement loop renders prompts with it.
    - ``pad_token_id``: the id that pads ``GenerationOutput.sequences``.
    - ``context_length``: prompt plus generated tokens the model can hold (None: unknown).
    - ``eos_token_ids``: every id that ends a turn, sorted: the generation config's EOS ids and
      the tokenizer's EOS (:func:`tje_hf.generation.outputs.end_of_turn_ids`). A row stops on
      them, and the refinement loop tests a finished turn against them.
    """

    name: ClassVar[str]
    manages_prefix_cache: ClassVar[bool]
    tokenizer: Any

    @property
    def pad_token_id(self) -> int: ...

    @property
    def context_length(self) -> int | None: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        decode: DecodeConfig,
        *,
        seeds: Sequence[int] | None = None,
        segment_rules: SegmentRules = GENERIC,
        token_budget: Sequence[int] | None = None,
        conversation_ids: Sequence[Hashable] | None = None,
        reuse_cache: bool = False,
    ) -> GenerationOutput:
        """Generate for B token-id prompts and measure every signal of every generated token.

        Args:
            prompts: B prompts as token-id lists (chat template already applied), unpadded.
            decode: max_new_tokens, min_new_tokens, temperature (0 = greedy), top_p, top_k,
                repetition_penalty, signals (ks, trace, trace_alternatives), stop rules. A
                setting the engine cannot honour raises ``ValueError``, never silently ignored.
            seeds: one sampling seed per row (default ``derive_seed(decode.seed, row)``); a
                row's tokens depend on its seed only, not on the rest of the batch.
            segment_rules: where reasoning ends and the answer begins.
            token_budget: per-row limits below ``max_new_tokens`` (stop reason ``token_budget``);
                default ``decode.token_budget``.
            conversation_ids: the conversation each row belongs to (the refinement loop passes
                the problem's index). A row whose conversation this backend generated for since
                :meth:`drop_cache` continues it: its prompt starts with (part of) that
                conversation's earlier prompt and output.
            reuse_cache: compute a continuing row's shared prefix from what the backend kept,
                and keep what this call computed for the next call (an explicit KV cache; until
                :meth:`drop_cache`). Ignored where ``manages_prefix_cache``.

        Returns:
            A :class:`~tje_hf.generation.outputs.GenerationOutput`: ``results`` one
            :class:`~tje_hf.generation.outputs.SequenceResult` per row, in order (tokens, text,
            stop reason, per-segment means, per-token ``(n, S)`` float32 trace when asked);
            ``columns`` the S signal columns; ``sequences`` ``(B, L + n_max)`` with prompts
            left-padded to ``L`` with :attr:`pad_token_id`; ``wall_time_s`` and
            ``prefill_time_s`` in seconds; ``reuse`` one
            :class:`~tje_hf.generation.outputs.ReuseStats` per row (tokens taken from a cache
            and prefilled). A prompt that leaves no room in :attr:`context_length` raises
            :class:`~tje_hf.errors.PromptTooLongError`.
        """
        ...

    def drop_cache(self) -> None:
        """Forget every conversation and free what was kept for them (idempotent)."""
        ...

    def shutdown(self) -> None:
        """Release what the engine holds beyond this object's references (processes, parallel
        state, device memory a later engine in this process would need); idempotent. The runner
        calls it on a model it loaded itself when the run ends."""
        ...

    def describe(self) -> dict:
        """What ``environment.json`` records about the engine: ``model_class``,
        ``model_dtype``, ``model_device``, ``model_generation_config`` (the effective one) and
        ``engine_args``, None where the engine has no such thing."""
        ...
