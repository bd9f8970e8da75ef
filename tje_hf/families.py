"""Model-family profiles: how a conversation is rendered, and where reasoning ends, on token ids.

=================  ====================================================================
family             behaviour
=================  ====================================================================
``generic``        the tokenizer's own chat template; no reasoning segment (SmolLM2,
                   Llama 3.3 Instruct, any chat model)
``gpt-oss``        harmony: ``<|channel|>analysis<|message|>...<|end|>`` then
                   ``<|start|>assistant<|channel|>final<|message|>...<|return|>`` in one
                   generation; ``<|end|>`` is not an EOS; ``reasoning_effort`` goes to the
                   template; earlier assistant turns are rendered as their final channel
                   only; the template's "Current date" is pinned for reproducibility
``qwen3-thinking`` Qwen3 Thinking-2507 (and hybrid Qwen3 with thinking on): the template opens
                   ``<think>`` in the prompt, the model ends its reasoning at ``</think>``;
                   earlier turns are rendered without their reasoning
``qwen3-instruct`` Qwen3 Instruct-2507: no reasoning segment
=================  ====================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .segments import ANSWER, GENERIC, HEADER, HEADER_ANSWER, REASONING, SegmentRules

FAMILIES = ("generic", "gpt-oss", "qwen3-thinking", "qwen3-instruct")


class FamilyError(ValueError):
    """The tokenizer lacks a token its family needs, or the family name is unknown."""


def _token_id(tokenizer, token: str, family: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id or not isinstance(tid, int):
        raise FamilyError(f"family {family!r}: the tokenizer has no {token!r} token")
    return tid


def _optional_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or not isinstance(tid, int) or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return tid


@dataclass(frozen=True)
class Family:
    """A model family's rendering and segmentation rules."""

    name: str
    template_kwargs: dict = field(default_factory=dict)
    template_date: str | None = None

    # -- segmentation ----------------------------------------------------------------------

    def segment_rules(self, tokenizer) -> SegmentRules:
        """Where reasoning ends and the answer starts, as token-id transitions."""
        if self.name == "gpt-oss":
            ch = _token_id(tokenizer, "<|channel|>", self.name)
            msg = _token_id(tokenizer, "<|message|>", self.name)
            final = tokenizer.encode("final", add_special_tokens=False)[0]
            trans = [(HEADER, final, HEADER_ANSWER), (HEADER, msg, REASONING), (HEADER_ANSWER, msg, ANSWER),
                     (-1, ch, HEADER)]
            for tok in ("<|end|>", "<|start|>", "<|return|>", "<|call|>"):
                tid = _optional_id(tokenizer, tok)
                if tid is not None:
                    trans.append((-1, tid, HEADER))
            return SegmentRules(initial=HEADER, transitions=tuple(trans))
        if self.name == "qwen3-thinking":
            end = _token_id(tokenizer, "</think>", self.name)
            trans = [(-1, end, ANSWER)]
            start = _optional_id(tokenizer, "<think>")
            if start is not None:
                trans.append((-1, start, REASONING))
            return SegmentRules(initial=REASONING, transitions=tuple(trans))
        return GENERIC

    # -- rendering ---------------------------------------------------------------------------

    def render(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation as the family's chat template renders it."""
        if not getattr(tokenizer, "chat_template", None):
            raise FamilyError(f"family {self.name!r}: the tokenizer has no chat template; give the model a "
                              "template or use plain-text prompts")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                             **self.template_kwargs)
        if self.template_date is not None:
            # harmony prints today's date into the system message: pin it, so that prompts (and
            # so prompt hashes and cache hits) do not change from one day to the next.
            text = re.sub(r"Current date: \d{4}-\d{2}-\d{2}", f"Current date: {self.template_date}", text)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def history_message(self, answer_text: str) -> dict:
        """The assistant turn as later turns see it: the final answer only (every supported
        template drops earlier reasoning, so it is never sent back)."""
        return {"role": "assistant", "content": answer_text}


def answer_text(tokenizer, token_ids: list[int], segments: list[int] | None, family: Family) -> str:
    """The answer part of a generation (the whole text where the family has no reasoning)."""
    if segments is None or not family.segment_rules(tokenizer).has_reasoning:
        return tokenizer.decode(token_ids, skip_special_tokens=True).strip()
    kept = [t for t, s in zip(token_ids, segments, strict=False) if s == ANSWER]
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


def resolve_family(name: str, model, tokenizer) -> str:
    """``auto`` -> a family from the model type, the checkpoint name and the template."""
    if name != "auto":
        if name not in FAMILIES:
            raise FamilyError(f"model.family={name!r}: must be one of {FAMILIES} or 'auto'")
        return name
    model_type = getattr(model.config, "model_type", "")
    source = str(getattr(model.config, "_name_or_path", "")).lower()
    if model_type == "gpt_oss":
        return "gpt-oss"
    if model_type.startswith("qwen3"):
        if "instruct-2507" in source:
            return "qwen3-instruct"
        if "thinking" in source or _optional_id(tokenizer, "</think>") is not None:
            return "qwen3-thinking"
        return "qwen3-instruct"
    return "generic"


def make_family(name: str, reasoning_effort: str | None = None, template_date: str | None = None) -> Family:
    """The :class:`Family` for ``name`` with its template arguments."""
    if name not in FAMILIES:
        raise FamilyError(f"unknown family {name!r}; known: {FAMILIES}")
    kwargs = {}
    if name == "gpt-oss":
        kwargs["reasoning_effort"] = reasoning_effort or "medium"
        return Family(name, kwargs, template_date)
    return Family(name, kwargs, None)
