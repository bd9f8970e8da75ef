"""The family profiles against the official formats, on the real tokenizers.

* gpt-oss against **openai-harmony** (OpenAI's renderer and parser): step-1 prompts, prompts of
  steps 2..4 in template and in continuation history, and the reasoning/answer segmentation of
  completions, token for token; and against gpt-oss-20b's ``chat_template.jinja``.
* Qwen3 against the real chat templates (Thinking-2507, Instruct-2507, hybrid Qwen3-0.6B with
  ``enable_thinking`` on and off): prompts with earlier turns, segmentation, continuation.
* The stand-in templates of ``family_fixtures`` render exactly what the real templates render.

The files come from ``scripts/fetch_reference_formats.py`` (npm and PyPI, hash-checked, cached in
``$TJE_HF_CACHE/reference``); ``openai-harmony`` from the dev extra. Without them a test skips
with the command to run, and fails in CI (``CI`` set). Nothing is downloaded here.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from family_fixtures import (
    HARMONY_TEMPLATE,
    QWEN3_HYBRID_TEMPLATE,
    QWEN3_INSTRUCT_TEMPLATE,
    QWEN3_THINKING_TEMPLATE,
)
from needs import unavailable
from real_formats import reference_dir, reference_tokenizer

from tje_hf.models.families import answer_text, history_text, make_family, resolve_family
from tje_hf.models.segments import ANSWER, HEADER, REASONING, segment_labels

# --------------------------------------------------------------------------------------------
# harmony

DATE = "2025-08-05"
QUESTION = "What is 6 times 7?"
REVIEW = ("Review your previous reasoning and answer. If you find a mistake, correct it; otherwise "
          "restate the final answer.")


@pytest.fixture(scope="module")
def harmony():
    """openai_harmony and its gpt-oss encoding, read offline from the reference directory."""
    try:
        import openai_harmony as oh
    except ImportError:
        unavailable("openai-harmony is not installed (pip install -e '.[dev]')")
    base = reference_dir("harmony")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_ENCODINGS_BASE", str(base))
        enc = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    return SimpleNamespace(oh=oh, enc=enc)


@pytest.fixture(scope="module")
def gpt_oss_tok():
    return reference_tokenizer("gpt-oss")


def h_system(h, effort: str = "medium", date: str = DATE):
    content = (h.oh.SystemContent.new().with_reasoning_effort(h.oh.ReasoningEffort[effort.upper()])
               .with_conversation_start_date(date))
    return h.oh.Message.from_role_and_content(h.oh.Role.SYSTEM, content)


def h_developer(h, instructions: str):
    content = h.oh.DeveloperContent.new().with_instructions(instructions)
    return h.oh.Message.from_role_and_content(h.oh.Role.DEVELOPER, content)


def h_user(h, text: str):
    return h.oh.Message.from_role_and_content(h.oh.Role.USER, text)


def h_final(h, text: str):
    return h.oh.Message.from_role_and_content(h.oh.Role.ASSISTANT, text).with_channel("final")


def h_render(h, messages, auto_drop_analysis: bool = True) -> list[int]:
    config = h.oh.RenderConversationConfig(auto_drop_analysis=auto_drop_analysis)
    return list(h.enc.render_conversation_for_completion(h.oh.Conversation.from_messages(messages),
                                                         h.oh.Role.ASSISTANT, config))


def h_parse(h, ids: list[int]):
    """harmony's reading of a completion: the class of every token (content of the final channel
    ANSWER, content of any other channel REASONING, anything else HEADER) from its
    ``StreamableParser``, and the messages, the last one possibly cut before its end."""
    oh = h.oh
    parser = oh.StreamableParser(h.enc, oh.Role.ASSISTANT)
    labels = []
    for tid in ids:
        before, channel = parser.state, parser.current_channel
        parser.process(tid)
        inside = before == oh.StreamState.CONTENT and parser.state == oh.StreamState.CONTENT
        labels.append((ANSWER if channel == "final" else REASONING) if inside else HEADER)
    messages = list(parser.messages)
    if parser.state == oh.StreamState.CONTENT:
        cut = oh.Message.from_role_and_content(oh.Role.ASSISTANT, parser.current_content)
        cut = cut.with_channel(parser.current_channel)
        if parser.current_recipient:
            cut = cut.with_recipient(parser.current_recipient)
        if parser.current_content_type:
            cut = cut.with_content_type(parser.current_content_type)
        messages.append(cut)
    return labels, messages


def text_of(message) -> str:
    return "".join(c.text for c in message.content)


# Completions as gpt-oss writes them after the prompt's "<|start|>assistant".
HARMONY_COMPLETIONS = {
    "analysis-final": ("<|channel|>analysis<|message|>We need 6*7. Six times seven is 42.<|end|>"
                       "<|start|>assistant<|channel|>final<|message|>The answer is **42**.<|return|>"),
    "final-only": "<|channel|>final<|message|>42<|return|>",
    "cut-in-analysis": "<|channel|>analysis<|message|>We need 6*7. Let me think step",
    "cut-after-analysis-end": "<|channel|>analysis<|message|>We need 6*7. Six times seven is 42.<|end|>",
    "two-analysis": ("<|channel|>analysis<|message|>First compute 6*7 = 42.<|end|>"
                     "<|start|>assistant<|channel|>analysis<|message|>Check: 7*6 = 42 too.<|end|>"
                     "<|start|>assistant<|channel|>final<|message|>42<|return|>"),
    "commentary-preamble": ("<|channel|>commentary<|message|>I will multiply the numbers.<|end|>"
                            "<|start|>assistant<|channel|>final<|message|>The answer is 42.<|return|>"),
    "tool-call": ("<|channel|>analysis<|message|>Use the tool.<|end|>"
                  "<|start|>assistant to=functions.multiply<|channel|>commentary <|constrain|>json"
                  "<|message|>{\"a\": 6, \"b\": 7}<|call|>"),
    "final-ends-with-end": "<|channel|>final<|message|>The answer is 42.<|end|>",
    "cut-in-final": ("<|channel|>analysis<|message|>Easy.<|end|>"
                     "<|start|>assistant<|channel|>final<|message|>The answer is"),
    "final-trailing-newline": ("<|channel|>analysis<|message|>Easy.<|end|>"
                               "<|start|>assistant<|channel|>final<|message|>The answer is 42.\n<|return|>"),
    "cut-in-header": ("<|channel|>analysis<|message|>Easy.<|end|>"
                      "<|start|>assistant<|channel|>fin"),
}


def encode_both(tok, h, text: str) -> list[int]:
    """The ids of ``text`` (special tokens as tokens), the same from the HF tokenizer and harmony."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    assert ids == list(h.enc.encode(text, allowed_special="all"))
    return ids


STEP1 = {
    "user-only": [{"role": "user", "content": QUESTION}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    "developer-multiline": [{"role": "developer", "content": "Answer in English.\nShow the result in bold."},
                            {"role": "user", "content": QUESTION}],
    # The date pin must not rewrite a date the user quotes.
    "user-quotes-a-date": [{"role": "user",
                            "content": "Current date: 2024-02-28. What is the date two days later?"}],
}


def harmony_step1(h, messages: list[dict], effort: str):
    out = [h_system(h, effort)]
    rest = messages
    if messages[0]["role"] in ("system", "developer"):
        out.append(h_developer(h, messages[0]["content"]))
        rest = messages[1:]
    return out + [h_user(h, m["content"]) for m in rest]


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
@pytest.mark.parametrize("case", list(STEP1))
def test_gpt_oss_step1_equals_harmony(case, effort, gpt_oss_tok, harmony):
    family = make_family("gpt-oss", reasoning_effort=effort, template_date=DATE)
    messages = STEP1[case]
    ids = family.render(gpt_oss_tok, messages)
    assert ids == h_render(harmony, harmony_step1(harmony, messages, effort)), gpt_oss_tok.decode(ids)
    if case == "user-quotes-a-date":
        assert "<|start|>user<|message|>Current date: 2024-02-28. What is" in gpt_oss_tok.decode(ids)
        assert f"Current date: {DATE}\n" in gpt_oss_tok.decode(ids)


def test_gpt_oss_template_differs_from_harmony_only_in_the_developer_message(gpt_oss_tok, harmony):
    """The documented difference: the HF template ends the instructions with "\\n\\n"; the family
    follows harmony; everything else is the template's own rendering."""
    messages = STEP1["system"]
    raw = gpt_oss_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                          reasoning_effort="medium")
    raw = re.sub(r"Current date: \d{4}-\d{2}-\d{2}", f"Current date: {DATE}", raw)
    assert "# Instructions\n\nBe brief.\n\n<|end|>" in raw
    fixed = raw.replace("# Instructions\n\nBe brief.\n\n<|end|>", "# Instructions\n\nBe brief.<|end|>")
    assert make_family("gpt-oss", template_date=DATE).render_text(gpt_oss_tok, messages) == fixed
    assert gpt_oss_tok.decode(h_render(harmony, harmony_step1(harmony, messages, "medium"))) == fixed


@pytest.mark.parametrize("case", list(HARMONY_COMPLETIONS))
def test_gpt_oss_segmentation_equals_harmony_parse(case, gpt_oss_tok, harmony):
    tok, family = gpt_oss_tok, make_family("gpt-oss")
    ids = encode_both(tok, harmony, HARMONY_COMPLETIONS[case])
    expected, messages = h_parse(harmony, ids)
    labels = segment_labels(family.segment_rules(tok), ids)
    assert labels == expected, [(tok.decode([t]), a, b) for t, a, b in zip(ids, labels, expected, strict=True)
                                if a != b]
    finals = [text_of(m) for m in messages if m.channel == "final"]
    reasoning = [text_of(m) for m in messages if m.channel != "final"]
    assert tok.decode([t for t, s in zip(ids, labels, strict=True) if s == REASONING]) == "".join(reasoning)
    assert history_text(tok, ids, labels, family) == "".join(finals)
    assert answer_text(tok, ids, None, family) == "".join(finals).strip()


def _history_gens(tok, h):
    return [encode_both(tok, h, HARMONY_COMPLETIONS[c])
            for c in ("analysis-final", "cut-in-analysis", "final-trailing-newline")]


@pytest.mark.parametrize("case", ["user-only", "system"])
def test_gpt_oss_template_history_equals_harmony(case, gpt_oss_tok, harmony):
    """Steps 2..4 in template history: each earlier turn keeps its final channel only (the
    harmony guidance: drop earlier CoT once a turn ended in a final message; the gpt-oss template
    does the same), and a step cut before its answer is an empty final message (the module's
    documented choice). The conversation is given to harmony with the analysis already removed:
    harmony 0.0.8's ``auto_drop_analysis`` drops only the analysis before the conversation's
    first final message (openai/harmony#96), so from step 3 on it would keep some."""
    tok, h = gpt_oss_tok, harmony
    family = make_family("gpt-oss", reasoning_effort="low", template_date=DATE)
    messages = list(STEP1[case])
    convo = harmony_step1(h, messages, "low")
    for step, gen in enumerate(_history_gens(tok, h), start=2):
        messages += [family.history_turn(tok, gen), {"role": "user", "content": REVIEW}]
        _, parsed = h_parse(h, gen)
        turn = [m for m in parsed if m.channel == "final"] or [h_final(h, "")]
        convo += turn + [h_user(h, REVIEW)]
        ids = family.render(tok, messages)
        assert ids == h_render(h, convo), f"step {step}: {tok.decode(ids)!r}"
        assert "analysis" not in tok.decode(ids[-40:])


@pytest.mark.parametrize("case", list(HARMONY_COMPLETIONS))
def test_gpt_oss_continuation_equals_harmony(case, gpt_oss_tok, harmony):
    """Continuation history keeps every message the model wrote; harmony renders the same
    conversation (its analysis kept: auto_drop_analysis off) to the same tokens: ``<|return|>``
    becomes ``<|end|>``, an ``<|end|>`` or ``<|call|>`` the model wrote is not doubled, a cut
    message is closed, a cut header is dropped."""
    tok, h = gpt_oss_tok, harmony
    family = make_family("gpt-oss", template_date=DATE)
    gen = encode_both(tok, h, HARMONY_COMPLETIONS[case])
    prompt = family.render(tok, STEP1["system"])
    ids = prompt + family.continuation(tok, gen, REVIEW)
    _, parsed = h_parse(h, gen)
    expected = h_render(h, harmony_step1(h, STEP1["system"], "medium") + parsed + [h_user(h, REVIEW)],
                        auto_drop_analysis=False)
    assert ids == expected, tok.decode(ids[len(prompt):])
    assert tok.decode(ids).count("<|return|>") == 0


def test_gpt_oss_continuation_steps_2_to_4_equal_harmony(gpt_oss_tok, harmony):
    tok, h = gpt_oss_tok, harmony
    family = make_family("gpt-oss", reasoning_effort="high", template_date=DATE)
    ids = family.render(tok, STEP1["user-only"])
    convo = harmony_step1(h, STEP1["user-only"], "high")
    for case in ("analysis-final", "cut-after-analysis-end", "two-analysis"):
        gen = encode_both(tok, h, HARMONY_COMPLETIONS[case])
        ids = ids + family.continuation(tok, gen, REVIEW)
        convo += h_parse(h, gen)[1] + [h_user(h, REVIEW)]
        assert ids == h_render(h, convo, auto_drop_analysis=False), case


# --------------------------------------------------------------------------------------------
# Qwen3

# mode -> (reference directory, family, the template arguments an application passes, raw outputs)
QWEN3_MODES = {
    "thinking-2507": ("qwen3-thinking-2507", "qwen3-thinking", {}),
    "instruct-2507": ("qwen3-instruct-2507", "qwen3-instruct", {}),
    "hybrid-thinking": ("qwen3-hybrid", "qwen3-thinking", {}),
    "hybrid-thinking-explicit": ("qwen3-hybrid", "qwen3-thinking", {"enable_thinking": True}),
    "hybrid-no-thinking": ("qwen3-hybrid", "qwen3-instruct", {"enable_thinking": False}),
}
_REASONING = "Okay, the user asks for 6 times 7.\n\nSix times seven is 42. Let me double-check: 7*6 = 42.\n"
# What each mode's model writes after the generation prompt (Thinking-2507's prompt already
# opened "<think>\n"; hybrid Qwen3 opens it itself).
QWEN3_OUTPUTS = {
    "thinking-2507": {
        "answer": f"{_REASONING}</think>\n\nThe answer is **42**.<|im_end|>",
        "cut-in-reasoning": "Okay, the user asks for 6 times 7.\n\nSix times",
        "trailing-newline": f"{_REASONING}</think>\n\nThe answer is 42.\n<|im_end|>",
        "endoftext": f"{_REASONING}</think>\n\n42<|endoftext|>",
    },
    "hybrid-thinking": {
        "answer": f"<think>\n{_REASONING}</think>\n\nThe answer is **42**.<|im_end|>",
        "cut-in-reasoning": "<think>\nOkay, the user asks for 6 times 7.\n\nSix times",
        "trailing-newline": f"<think>\n{_REASONING}</think>\n\nThe answer is 42.\n<|im_end|>",
        "endoftext": f"<think>\n{_REASONING}</think>\n\n42<|endoftext|>",
    },
    "instruct": {
        "answer": "The answer is **42**.<|im_end|>",
        "cut-in-answer": "The answer is",
        "trailing-newline": "The answer is 42.\n<|im_end|>",
        "endoftext": "42<|endoftext|>",
    },
}
_OUTPUTS_OF = {"thinking-2507": "thinking-2507", "instruct-2507": "instruct", "hybrid-thinking": "hybrid-thinking",
               "hybrid-thinking-explicit": "hybrid-thinking", "hybrid-no-thinking": "instruct"}
_ENDS = ("<|im_end|>", "<|endoftext|>")


def _body(raw: str) -> str:
    """The output without its stop token."""
    for end in _ENDS:
        if raw.endswith(end):
            return raw[: -len(end)]
    return raw


def qwen3_reference_turn(raw: str, thinking: bool) -> dict:
    """The assistant turn an application sends back (the model cards' usage): the raw output,
    which the template splits at ``</think>``; a step cut inside its reasoning has no answer yet,
    its text goes to ``reasoning_content``."""
    body = _body(raw)
    if thinking and "</think>" not in body:
        return {"role": "assistant", "content": "", "reasoning_content": body.removeprefix("<think>")}
    return {"role": "assistant", "content": body}


def _qwen3(mode):
    directory, family_name, kwargs = QWEN3_MODES[mode]
    return reference_tokenizer(directory), make_family(family_name), kwargs


def _reference_ids(tok, messages, kwargs, add_generation_prompt=True):
    text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("mode", list(QWEN3_MODES))
def test_qwen3_step1_prompt_equals_the_template(mode):
    tok, family, kwargs = _qwen3(mode)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    ids = family.render(tok, messages)
    assert ids == _reference_ids(tok, messages, kwargs)
    tail = {"thinking-2507": "<|im_start|>assistant\n<think>\n",
            "hybrid-no-thinking": "<|im_start|>assistant\n<think>\n\n</think>\n\n"}.get(mode, "<|im_start|>assistant\n")
    assert tok.decode(ids).endswith(f"{QUESTION}<|im_end|>\n{tail}")


@pytest.mark.parametrize("mode", list(QWEN3_MODES))
def test_qwen3_template_history_equals_the_template(mode):
    """Steps 2..4: the family's history turns (answer only) render exactly what the template
    renders from the raw outputs, whose earlier ``<think>`` blocks it strips."""
    tok, family, kwargs = _qwen3(mode)
    outputs = QWEN3_OUTPUTS[_OUTPUTS_OF[mode]]
    thinking = family.name == "qwen3-thinking"
    ours = [{"role": "user", "content": QUESTION}]
    reference = list(ours)
    for step, case in enumerate(outputs, start=2):
        raw = outputs[case]
        gen = list(tok(raw, add_special_tokens=False)["input_ids"])
        ours += [family.history_turn(tok, gen), {"role": "user", "content": REVIEW}]
        reference += [qwen3_reference_turn(raw, thinking), {"role": "user", "content": REVIEW}]
        ids = family.render(tok, ours)
        assert ids == _reference_ids(tok, reference, kwargs), f"step {step} ({case}): {tok.decode(ids)!r}"
        assert "Six times" not in tok.decode(ids)


@pytest.mark.parametrize("mode", ["thinking-2507", "hybrid-thinking", "instruct-2507", "hybrid-no-thinking"])
def test_qwen3_segmentation_is_exact(mode):
    """Reasoning is exactly the text inside the think block, the answer exactly the text after
    ``</think>`` up to the stop token, the markers and the stop token are structure; the
    template, given that split, renders the raw output's turn unchanged."""
    tok, family, kwargs = _qwen3(mode)
    rules = family.segment_rules(tok)
    for case, raw in QWEN3_OUTPUTS[_OUTPUTS_OF[mode]].items():
        ids = list(tok(raw, add_special_tokens=False)["input_ids"])
        labels = segment_labels(rules, ids)
        body = _body(raw)
        if family.name == "qwen3-thinking":
            reasoning, _, answer = body.removeprefix("<think>").partition("</think>")
            markers = [m for m in ("<think>", "</think>") if m in body]
        else:
            reasoning, answer, markers = "", body, []
        markers += [e for e in _ENDS if raw.endswith(e)]

        def decoded(cls, ids=ids, labels=labels):
            return tok.decode([t for t, s in zip(ids, labels, strict=True) if s == cls])

        assert decoded(REASONING) == reasoning, case
        assert decoded(ANSWER) == answer, case
        assert [tok.convert_ids_to_tokens(t) for t, s in zip(ids, labels, strict=True) if s == HEADER] == markers
        assert answer_text(tok, ids, labels, family) == answer.strip()
        if family.name == "qwen3-thinking" and "</think>" in body:
            # The template's own split of the raw output (the last turn keeps its reasoning).
            q = [{"role": "user", "content": QUESTION}]
            raw_turn = _reference_ids(tok, q + [{"role": "assistant", "content": body}], kwargs, False)
            split_turn = {"role": "assistant", "content": history_text(tok, ids, labels, family),
                          "reasoning_content": decoded(REASONING)}
            assert _reference_ids(tok, q + [split_turn], kwargs, False) == raw_turn, case


# --------------------------------------------------------------------------------------------
# Continuation: what the template puts between an assistant turn and the next

_SENT = "\u2063X\u2063"
CONTINUATION_CASES = {
    # name -> (reference directory, family, template arguments, answer body, stop tokens a generation may end with)
    "gpt-oss": ("gpt-oss", "gpt-oss", {"reasoning_effort": "medium"}, "<|channel|>final<|message|>42",
                ("<|return|>", "<|end|>", "<|endoftext|>")),
    "thinking-2507": ("qwen3-thinking-2507", "qwen3-thinking", {}, "42", _ENDS),
    "instruct-2507": ("qwen3-instruct-2507", "qwen3-instruct", {}, "42", _ENDS),
    "hybrid-thinking": ("qwen3-hybrid", "qwen3-thinking", {}, "42", _ENDS),
    "hybrid-no-thinking": ("qwen3-hybrid", "qwen3-instruct", {"enable_thinking": False}, "42", _ENDS),
}


@pytest.mark.parametrize("name", list(CONTINUATION_CASES))
def test_continuation_suffix_equals_the_template(name):
    directory, family_name, kwargs, body, stops = CONTINUATION_CASES[name]
    tok = reference_tokenizer(directory)
    family = make_family(family_name, template_date=DATE if family_name == "gpt-oss" else None)
    msgs = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": _SENT},
            {"role": "user", "content": REVIEW}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **kwargs)
    suffix = list(tok(text.split(_SENT)[1], add_special_tokens=False)["input_ids"])
    body_ids = list(tok(body, add_special_tokens=False)["input_ids"])
    for stop in (*stops, None):  # ended with each stop token, or cut (max_new_tokens)
        gen = body_ids + ([tok.convert_tokens_to_ids(stop)] if stop else [])
        assert family.continuation(tok, gen, REVIEW) == body_ids + suffix, stop


# --------------------------------------------------------------------------------------------
# Family resolution and the stand-ins


def test_resolve_family_on_the_real_qwen3_templates():
    model = SimpleNamespace(config=SimpleNamespace(model_type="qwen3", _name_or_path=""))
    assert resolve_family("auto", model, reference_tokenizer("qwen3-thinking-2507")) == "qwen3-thinking"
    assert resolve_family("auto", model, reference_tokenizer("qwen3-instruct-2507")) == "qwen3-instruct"
    hybrid = reference_tokenizer("qwen3-hybrid")
    assert resolve_family("auto", model, hybrid) == "qwen3-thinking"
    assert resolve_family("auto", model, hybrid, enable_thinking=True) == "qwen3-thinking"
    assert resolve_family("auto", model, hybrid, enable_thinking=False) == "qwen3-instruct"


_STANDIN_CONVERSATIONS = [
    ([{"role": "user", "content": QUESTION}], True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}], True),
    ([{"role": "user", "content": QUESTION},
      {"role": "assistant", "content": "The answer is 42.", "thinking": "Six times seven."},
      {"role": "user", "content": REVIEW}], True),
    ([{"role": "user", "content": QUESTION},
      {"role": "assistant", "content": "Six times seven.\n</think>\n\nThe answer is 42."},
      {"role": "user", "content": REVIEW}], True),
    ([{"role": "user", "content": QUESTION},
      {"role": "assistant", "content": "The answer is 42.", "reasoning_content": "Six times seven."}], False),
]


@pytest.mark.parametrize("directory,template,kwargs", [
    ("gpt-oss", HARMONY_TEMPLATE, {"reasoning_effort": "high"}),
    ("qwen3-thinking-2507", QWEN3_THINKING_TEMPLATE, {}),
    ("qwen3-instruct-2507", QWEN3_INSTRUCT_TEMPLATE, {}),
    ("qwen3-hybrid", QWEN3_HYBRID_TEMPLATE, {}),
    ("qwen3-hybrid", QWEN3_HYBRID_TEMPLATE, {"enable_thinking": False}),
])
def test_standin_templates_render_like_the_real_ones(directory, template, kwargs):
    tok = reference_tokenizer(directory)
    for messages, add_generation_prompt in _STANDIN_CONVERSATIONS:
        if directory == "gpt-oss" and any("</think>" in m["content"] for m in messages):
            continue  # a raw Qwen3 output; meaningless for harmony
        real, standin = (tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False, chat_template=t, **kwargs)
                         for t in (None, template))
        same_day = re.compile(r"Current date: \d{4}-\d{2}-\d{2}")  # both print today's date
        assert same_day.sub("", standin) == same_day.sub("", real), messages
