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

In every family the end-of-turn / EOS tokens (``<|return|>``, ``<|im_end|>``, the tokenizer's
EOS) are ``HEADER`` tokens: structure, counted in the whole-sequence mean only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import FamilyError
from .segments import ANSWER, GENERIC, HEADER, HEADER_ANSWER, REASONING, SegmentRules, segment_labels

FAMILIES = ("generic", "gpt-oss", "qwen3-thinking", "qwen3-instruct")



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


def _present_ids(tokenizer, tokens: tuple[str, ...]) -> list[int]:
    return [tid for tid in (_optional_id(tokenizer, t) for t in tokens) if tid is not None]


def _first_token(tokenizer, word: str) -> int:
    """The first token of ``word`` encoded on its own (as it appears between two special tokens)."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise FamilyError(f"the tokenizer encodes {word!r} to no token")
    return int(ids[0])


# End-of-turn tokens that generation configs list as EOS without the tokenizer naming them
# (Qwen's <|endoftext|>, Llama 3's <|eot_id|>/<|eom_id|>/<|end_of_text|>).
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _end_of_turn_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS and the known end-of-turn tokens it has, sorted, without duplicates."""
    ids = set(_present_ids(tokenizer, _END_OF_TURN))
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return sorted(ids)


@dataclass(frozen=True)
class Family:
    """A model family's rendering and segmentation rules."""

    name: str
    template_kwargs: dict = field(default_factory=dict)
    template_date: str | None = None

    # -- segmentation ----------------------------------------------------------------------

    def segment_rules(self, tokenizer) -> SegmentRules:
        """Where reasoning ends and the answer starts, as token-id transitions.

        Every family also classifies its end-of-turn / EOS tokens as ``HEADER`` (they are
        structure, not answer text), so answer means are comparable across families: harmony's
        ``<|return|>``, ChatML's ``<|im_end|>``, the tokenizer's EOS.
        Raises :class:`FamilyError` when the tokenizer lacks a token the family needs.
        """
        if self.name == "gpt-oss":
            ch = _token_id(tokenizer, "<|channel|>", self.name)
            msg = _token_id(tokenizer, "<|message|>", self.name)
            final = _first_token(tokenizer, "final")
            # The final channel is recognised by the first token of "final" inside a header, so it
            # must not also start the names of the reasoning channels.
            for other in ("analysis", "commentary"):
                if _first_token(tokenizer, other) == final:
                    raise FamilyError(f"family {self.name!r}: 'final' and {other!r} start with the same token "
                                      f"{final}; the channels cannot be told apart")
            trans = [(HEADER, final, HEADER_ANSWER), (HEADER, msg, REASONING), (HEADER_ANSWER, msg, ANSWER),
                     (-1, ch, HEADER)]
            for tid in _present_ids(tokenizer, ("<|end|>", "<|start|>", "<|return|>", "<|call|>", "<|endoftext|>")):
                trans.append((-1, tid, HEADER))
            return SegmentRules(initial=HEADER, transitions=tuple(trans))
        ends = _end_of_turn_ids(tokenizer)
        if self.name == "qwen3-thinking":
            end = _token_id(tokenizer, "</think>", self.name)
            trans = [(-1, end, ANSWER)]
            start = _optional_id(tokenizer, "<think>")
            if start is not None:
                trans.append((-1, start, REASONING))
            # The row stops at these, so the state they lead to is never used.
            trans.extend((-1, tid, ANSWER) for tid in ends)
            return SegmentRules(initial=REASONING, transitions=tuple(trans))
        if not ends:
            return GENERIC
        return SegmentRules(initial=ANSWER, transitions=tuple((-1, tid, ANSWER) for tid in ends))

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
    """The answer part of a generation, special tokens dropped and stripped: the tokens labelled
    ``ANSWER`` (``segments`` as the tracker recorded them, or recomputed from the family's rules
    when ``None``); the whole text where the family has no reasoning segment. Empty when a
    reasoning family never reached its answer (e.g. cut off while thinking)."""
    rules = family.segment_rules(tokenizer)
    if not rules.has_reasoning:
        return tokenizer.decode(token_ids, skip_special_tokens=True).strip()
    if segments is None:
        # Without labels, decoding everything would glue harmony headers and the analysis
        # channel into the answer ("analysisWe need...assistantfinal42").
        segments = segment_labels(rules, list(token_ids))
    kept = [t for t, s in zip(token_ids, segments, strict=False) if s == ANSWER]
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


def resolve_family(name: str, model, tokenizer) -> str:
    """``auto`` -> a family from the model type, the checkpoint name and the chat template;
    an explicit name is validated and returned. Raises :class:`FamilyError` for an unknown name.

    Qwen3 models share one vocabulary (``<think>``/``</think>`` exist in Instruct-2507 too), so
    the vocabulary cannot tell the variants apart. The order is: a checkpoint name with
    ``instruct-2507`` / ``thinking``; else the template: a generation prompt that opens
    ``<think>`` (Thinking-2507) or an ``enable_thinking`` switch (hybrid Qwen3, thinking on by
    default) -> ``qwen3-thinking``, any other template -> ``qwen3-instruct``; without a
    template, a ``</think>`` token -> ``qwen3-thinking``.
    """
    if name != "auto":
        if name not in FAMILIES:
            raise FamilyError(f"model.family={name!r}: must be one of {FAMILIES} or 'auto'")
        return name
    model_type = getattr(model.config, "model_type", "") or ""
    source = str(getattr(model.config, "_name_or_path", "") or getattr(tokenizer, "name_or_path", "")).lower()
    if model_type == "gpt_oss":
        return "gpt-oss"
    if model_type.startswith("qwen3"):
        if "instruct-2507" in source:
            return "qwen3-instruct"
        if "thinking" in source:
            return "qwen3-thinking"
        thinks = _template_thinks(tokenizer)
        if thinks is not None:
            return "qwen3-thinking" if thinks else "qwen3-instruct"
        return "qwen3-thinking" if _optional_id(tokenizer, "</think>") is not None else "qwen3-instruct"
    return "generic"


def _template_thinks(tokenizer) -> bool | None:
    """Whether the chat template starts the assistant turn in thinking mode; None without a
    usable template."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return None
    if "enable_thinking" in template:
        return True
    try:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                               tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render says nothing either way
        return None
    return str(prompt).rstrip().endswith("<think>")


def make_family(name: str, reasoning_effort: str | None = None, template_date: str | None = None) -> Family:
    """The :class:`Family` for ``name`` with its template arguments."""
    if name not in FAMILIES:
        raise FamilyError(f"unknown family {name!r}; known: {FAMILIES}")
    kwargs = {}
    if name == "gpt-oss":
        kwargs["reasoning_effort"] = reasoning_effort or "medium"
        return Family(name, kwargs, template_date)
    return Family(name, kwargs, None)
