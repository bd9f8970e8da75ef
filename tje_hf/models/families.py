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
                   only; the system message's "Current date" is pinned for reproducibility
``qwen3-thinking`` Qwen3 Thinking-2507, and hybrid Qwen3 (0.6B-32B) with thinking on: the
                   template (or the model) opens ``<think>``, the model ends its reasoning at
                   ``</think>``; earlier turns are rendered without their reasoning
``qwen3-instruct`` Qwen3 Instruct-2507, and hybrid Qwen3 with thinking off (the template's
                   ``enable_thinking=False``: an empty ``<think>\\n\\n</think>\\n\\n`` block in the
                   generation prompt): no reasoning segment
=================  ====================================================================

In every family the end-of-turn / EOS tokens (``<|return|>``, ``<|im_end|>``, the tokenizer's
EOS) are ``HEADER`` tokens: structure, counted in the whole-sequence mean only.

Reference formats
-----------------
``tests/test_reference_formats.py`` checks these profiles, on the real tokenizers, against:

* gpt-oss: **openai-harmony** (OpenAI's harmony renderer and parser) -- rendering of step 1
  and of steps 2..N in template history, segmentation of completions, the continuation
  history -- and the model's own ``chat_template.jinja`` (openai/gpt-oss-20b).
* Qwen3: the models' own chat templates (Thinking-2507, Instruct-2507, hybrid Qwen3-0.6B with
  ``enable_thinking``); Qwen ships no other renderer.

Harmony is canonical for gpt-oss. The models were trained on conversations in the harmony
format, whose definition is OpenAI's harmony library and spec (the renderer behind OpenAI's
gpt-oss reference implementations and vLLM's gpt-oss serving path); the Hugging Face
``chat_template.jinja`` is a port of it for ``apply_chat_template``. The two agree token for token
except for the developer message: the template writes ``# Instructions\\n\\n{text}\\n\\n<|end|>``,
harmony ``# Instructions\\n\\n{text}<|end|>``. :meth:`Family.render` therefore renders with the
model's template and rewrites that one message to harmony's form.

Decisions where the references leave a choice:

* **A step cut inside its reasoning** (``max_new_tokens`` reached before the answer) has an
  empty answer. Template history sends it back as an empty answer turn
  (``<|channel|>final<|message|><|end|>``, ``<|im_start|>assistant\\n<|im_end|>``), never its cut
  reasoning. This is what the HF gpt-oss template and the Qwen3 templates render for such a
  turn, and what template history means: earlier answers only (continuation history keeps the
  exact tokens). Harmony's renderer gives no stable rule to follow here: its
  ``auto_drop_analysis`` (0.0.8) drops only the analysis before the conversation's first final
  message (openai/harmony#96), so a cut analysis would stay or go depending on the turns around it.
* **Whitespace of the answer**: :func:`answer_text` (extraction, records, display) is stripped;
  :meth:`Family.history_turn` (template history) sends the answer back as the model wrote it,
  as harmony's parser and the Qwen3 templates do: trailing whitespace kept, and for Qwen3
  thinking the newlines after ``</think>`` dropped (the template's ``lstrip('\\n')``).
* **The current date**: the gpt-oss template prints today's date into the system message;
  ``template_date`` replaces it there only (never in user text), so prompts, prompt hashes and
  cache hits do not change from day to day. Harmony's ``conversation_start_date`` renders the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import FamilyError
from .segments import ANSWER, GENERIC, HEADER, HEADER_ANSWER, REASONING, SegmentRules, segment_labels

FAMILIES = ("generic", "gpt-oss", "qwen3-thinking", "qwen3-instruct")

# Assistant content that no template alters; marks where an assistant turn's text sits in a render.
_SENTINEL = "\u2063TJE-SENTINEL\u2063"


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


# harmony: the message terminators that stay in history (<|call|> ends a tool call there too),
# and the stop tokens that end a generation but become <|end|> in history ("<|return|> should
# never be an input to the model", says the template; harmony renders a past final message with <|end|>).
_HARMONY_CLOSERS = ("<|end|>", "<|call|>")
_HARMONY_STOPS = ("<|return|>", "<|endoftext|>")

_HARMONY_DATE = re.compile(r"^Current date: \d{4}-\d{2}-\d{2}$", re.MULTILINE)


@dataclass(frozen=True)
class Family:
    """A model family's rendering and segmentation rules.

    ``template_kwargs`` go to the chat template (``reasoning_effort`` for gpt-oss,
    ``enable_thinking`` for Qwen3); ``template_date`` pins the date the gpt-oss template prints
    into its system message. Build one with :func:`make_family`.
    """

    name: str
    template_kwargs: dict = field(default_factory=dict)
    template_date: str | None = None

    # -- segmentation ----------------------------------------------------------------------

    def segment_rules(self, tokenizer) -> SegmentRules:
        """Where reasoning ends and the answer starts, as token-id transitions.

        Every family also classifies its end-of-turn / EOS tokens as ``HEADER`` (they are
        structure, not answer text), so answer means are comparable across families: harmony's
        ``<|return|>``, ChatML's ``<|im_end|>``, the tokenizer's EOS. In harmony every channel but
        ``final`` (analysis, commentary) is reasoning.
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

    def render_text(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """A conversation as the family renders it, as text: the tokenizer's chat template with
        the family's arguments, the gpt-oss developer message in harmony's form and the system
        message's date pinned (see the module docstring)."""
        if not getattr(tokenizer, "chat_template", None):
            raise FamilyError(f"family {self.name!r}: the tokenizer has no chat template; give the model a "
                              "template or use plain-text prompts")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                             **self.template_kwargs)
        if self.name == "gpt-oss":
            text = _harmony_developer_message(text, messages)
        if self.template_date is not None:
            text = _pin_system_date(text, self.template_date)
        return text

    def render(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation as the family renders it (:meth:`render_text`)."""
        return list(tokenizer(self.render_text(tokenizer, messages, add_generation_prompt),
                              add_special_tokens=False)["input_ids"])

    # -- history -----------------------------------------------------------------------------

    def history_message(self, answer_text: str) -> dict:
        """The assistant turn as later turns see it: the final answer only (every supported
        template drops earlier reasoning, so it is never sent back)."""
        return {"role": "assistant", "content": answer_text}

    def history_turn(self, tokenizer, token_ids: Sequence[int], segments: Sequence[int] | None = None) -> dict:
        """Template history: the assistant turn of a generation as later prompts carry it, the
        answer as the model wrote it (:func:`history_text`; empty when the step never reached its
        answer). ``segments``: the labels the tracker recorded, or None to recompute them."""
        return self.history_message(history_text(tokenizer, token_ids, segments, self))

    def continuation(self, tokenizer, token_ids: Sequence[int], instruction: str) -> list[int]:
        """Continuation history: what follows a step's prompt in the next step's prompt.

        The generated tokens, reasoning included, closed the way the format closes an assistant
        message in history, then the user turn ``instruction`` and the generation prompt exactly as
        the template renders them after an assistant turn (``<|im_end|>\\n<|im_start|>user\\n...``,
        ``<|end|><|start|>user<|message|>...<|start|>assistant``):

        * a generation that ended with the template's end-of-turn token (``<|im_end|>``, or a
          harmony message cut right after its ``<|end|>``; harmony's ``<|call|>`` too) keeps it,
          and the template's own copy is not repeated;
        * a stop token that is not the end-of-turn token of history is replaced by it: harmony's
          ``<|return|>`` (and ``<|endoftext|>``) becomes ``<|end|>``, Qwen's ``<|endoftext|>``
          becomes ``<|im_end|>``. The last generated token never went through the model, so the
          KV cache loses nothing;
        * a generation cut anywhere else gets the end-of-turn token appended; a harmony
          generation cut inside a message header (after ``<|start|>``, before ``<|message|>``)
          is first cut back to the end of the previous message.

        Raises :class:`FamilyError` when the template does not render assistant text verbatim.
        """
        end, tail = self._turn_tail(tokenizer, instruction)
        ids = [int(t) for t in token_ids]
        if self.name == "gpt-oss":
            start, msg = _optional_id(tokenizer, "<|start|>"), _optional_id(tokenizer, "<|message|>")
            if start in ids:
                last = len(ids) - 1 - ids[::-1].index(start)
                if msg not in ids[last:]:
                    ids = ids[:last]
            closers = set(_present_ids(tokenizer, _HARMONY_CLOSERS))
            stops = set(_present_ids(tokenizer, _HARMONY_STOPS))
            eos = getattr(tokenizer, "eos_token_id", None)
            if isinstance(eos, int):
                stops.add(eos)
        else:
            closers = set()
            stops = set(_end_of_turn_ids(tokenizer))
        if end is not None:
            closers.add(end)
        stops -= closers
        if ids and ids[-1] in closers:
            return ids + (tail[1:] if end is not None else tail)
        if ids and ids[-1] in stops:
            ids = ids[:-1]
        return ids + tail

    def _turn_tail(self, tokenizer, instruction: str) -> tuple[int | None, list[int]]:
        """What the template renders between an assistant turn's text and the next generation:
        (the end-of-turn token it starts with, or None when it starts with ordinary text; all its
        token ids)."""
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL},
                {"role": "user", "content": instruction}]
        text = self.render_text(tokenizer, msgs)
        if text.count(_SENTINEL) != 1:
            raise FamilyError(f"family {self.name!r}: the chat template does not render assistant content verbatim")
        ids = list(tokenizer(text.split(_SENTINEL, 1)[1], add_special_tokens=False)["input_ids"])
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        return (ids[0] if ids and ids[0] in special else None), ids


def _harmony_developer_message(text: str, messages: list[dict]) -> str:
    """The developer message as harmony renders it: the HF template appends ``\\n\\n`` to the
    instructions, harmony does not (harmony is canonical: see the module docstring)."""
    if not messages or messages[0].get("role") not in ("system", "developer"):
        return text
    instructions = messages[0].get("content")
    if not isinstance(instructions, str) or not instructions:
        return text
    template_form = f"<|start|>developer<|message|># Instructions\n\n{instructions}\n\n<|end|>"
    harmony_form = f"<|start|>developer<|message|># Instructions\n\n{instructions}<|end|>"
    if template_form in text:
        return text.replace(template_form, harmony_form, 1)
    if harmony_form in text:
        return text
    raise FamilyError("family 'gpt-oss': the chat template renders the developer message in neither the "
                      "gpt-oss template's form nor harmony's (tools in the developer message are not supported)")


def _pin_system_date(text: str, date: str) -> str:
    """``Current date: YYYY-MM-DD`` replaced by ``date`` in the system message (the rendered text
    up to its first ``<|end|>``), and nowhere else: user text keeps every date it quotes."""
    if not text.startswith("<|start|>system<|message|>"):
        return text
    head, sep, rest = text.partition("<|end|>")
    return _HARMONY_DATE.sub(f"Current date: {date}", head, count=1) + sep + rest


def _answer_tokens_text(tokenizer, token_ids: Sequence[int], segments: Sequence[int] | None,
                        family: Family) -> str:
    """The answer tokens decoded, special tokens dropped, nothing stripped."""
    rules = family.segment_rules(tokenizer)
    if not rules.has_reasoning:
        return tokenizer.decode(list(token_ids), skip_special_tokens=True)
    if segments is None:
        # Without labels, decoding everything would glue harmony headers and the analysis
        # channel into the answer ("analysisWe need...assistantfinal42").
        segments = segment_labels(rules, [int(t) for t in token_ids])
    kept = [int(t) for t, s in zip(token_ids, segments, strict=False) if s == ANSWER]
    return tokenizer.decode(kept, skip_special_tokens=True)


def answer_text(tokenizer, token_ids: Sequence[int], segments: Sequence[int] | None, family: Family) -> str:
    """The answer part of a generation, special tokens dropped and stripped: the tokens labelled
    ``ANSWER`` (``segments`` as the tracker recorded them, or recomputed from the family's rules
    when ``None``); the whole text where the family has no reasoning segment. Empty when a
    reasoning family never reached its answer (e.g. cut off while thinking). For extraction,
    records and display; template history uses :func:`history_text`."""
    return _answer_tokens_text(tokenizer, token_ids, segments, family).strip()


def history_text(tokenizer, token_ids: Sequence[int], segments: Sequence[int] | None, family: Family) -> str:
    """The answer as template history sends it back: the answer tokens as the model wrote them,
    the way the references keep an assistant message's content -- harmony's parser keeps a final
    message verbatim; the Qwen3 thinking templates keep what follows ``</think>`` minus its leading
    newlines. Equal to :func:`answer_text` but for that whitespace."""
    text = _answer_tokens_text(tokenizer, token_ids, segments, family)
    return text.lstrip("\n") if family.name == "qwen3-thinking" else text


def resolve_family(name: str, model, tokenizer, enable_thinking: bool | None = None) -> str:
    """``auto`` -> a family from the model type, the checkpoint name and the chat template;
    an explicit name is validated and returned. Raises :class:`FamilyError` for an unknown name.

    Qwen3 models share one vocabulary (``<think>``/``</think>`` exist in Instruct-2507 too), so
    the vocabulary cannot tell the variants apart. The order is: a checkpoint name with
    ``instruct-2507`` / ``thinking``; else the template: a generation prompt that opens
    ``<think>`` (Thinking-2507) -> ``qwen3-thinking``; an ``enable_thinking`` switch (hybrid
    Qwen3) -> ``qwen3-thinking`` unless ``enable_thinking`` is False, then ``qwen3-instruct``;
    any other template -> ``qwen3-instruct``; without a template, a ``</think>`` token ->
    ``qwen3-thinking``.
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
        thinks = _template_thinks(tokenizer, enable_thinking)
        if thinks is not None:
            return "qwen3-thinking" if thinks else "qwen3-instruct"
        return "qwen3-thinking" if _optional_id(tokenizer, "</think>") is not None else "qwen3-instruct"
    return "generic"


def _template_thinks(tokenizer, enable_thinking: bool | None = None) -> bool | None:
    """Whether the chat template starts the assistant turn in thinking mode (a hybrid template:
    as ``enable_thinking`` asks, on by default); None without a usable template."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return None
    if "enable_thinking" in template:
        return enable_thinking is not False
    try:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                               tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render says nothing either way
        return None
    return str(prompt).rstrip().endswith("<think>")


def make_family(name: str, reasoning_effort: str | None = None, template_date: str | None = None,
                enable_thinking: bool | None = None) -> Family:
    """The :class:`Family` for ``name`` with its template arguments.

    ``reasoning_effort`` and ``template_date``: gpt-oss only (ignored elsewhere).
    ``enable_thinking``: the hybrid Qwen3 template's switch. The Qwen3 families always pass it
    (``True`` for ``qwen3-thinking``, ``False`` for ``qwen3-instruct``; templates without the
    switch ignore it), so a hybrid model renders the mode its family segments; a value that
    contradicts the family raises. ``generic`` passes a given value through to its template;
    gpt-oss has no such switch (its reasoning is set by ``reasoning_effort``) and raises.
    """
    if name not in FAMILIES:
        raise FamilyError(f"unknown family {name!r}; known: {FAMILIES}")
    if name == "gpt-oss":
        if enable_thinking is not None:
            raise FamilyError("family 'gpt-oss' has no enable_thinking switch; set reasoning_effort instead")
        return Family(name, {"reasoning_effort": reasoning_effort or "medium"}, template_date)
    if name.startswith("qwen3"):
        thinks = name == "qwen3-thinking"
        if enable_thinking is not None and enable_thinking != thinks:
            other = "qwen3-thinking" if enable_thinking else "qwen3-instruct"
            raise FamilyError(f"enable_thinking={enable_thinking} contradicts family {name!r}: a hybrid Qwen3 with "
                              f"thinking {'on' if enable_thinking else 'off'} is family {other!r} (or 'auto')")
        return Family(name, {"enable_thinking": thinks}, None)
    return Family(name, {} if enable_thinking is None else {"enable_thinking": enable_thinking}, None)
