"""Offline stand-ins for the gpt-oss, Qwen3 and SmolLM2 tokenizers, with their chat templates.

The real tokenizers cannot be downloaded in the tests (no Hub access), so each function here
builds a :class:`transformers.PreTrainedTokenizerFast` from a byte-level BPE trained in memory on
a small corpus (a few hundred tokens, so every id fits the tiny random models of ``conftest.py``,
vocab 49152). What is reproduced faithfully is what ``tje_hf.models.families`` depends on:

* each family's **real special tokens, as single tokens**, with the real ``special`` flags
  (Qwen3's ``<think>``/``</think>`` are *not* special, as in the real ``tokenizer_config.json``,
  so ``decode(skip_special_tokens=True)`` keeps them);
* the **relative layout** of those tokens: harmony's block follows the BPE vocabulary in the
  order of o200k_harmony (``<|startoftext|>`` first, ``<|return|>`` two after ``<|endoftext|>``,
  ..., reserved slots kept), Qwen3's block in the order of ids 151643-151668, SmolLM2's three
  at ids 0, 1, 2;
* EOS / pad settings, and the chat template's rendering of system, user and earlier assistant
  turns and of the generation prompt.

**The ids do not match the real ones** (the real vocabularies have 201,088 and 151,936 entries):
``<|start|>`` is 200006 in gpt-oss but ``HARMONY_BASE + 8`` here. Ordinary text is split very
differently from the real BPEs too; tests must look ids up by token, never hard-code them.

The templates leave out tool definitions and tool calls (they raise instead), builtin tools,
and multimodal content; everything else follows the published templates (gpt-oss-20b
``chat_template.jinja``, Qwen3-*-Thinking-2507 / Instruct-2507, hybrid Qwen3-0.6B, SmolLM2-Instruct).
``tests/test_reference_formats.py`` checks that they render exactly what the published templates
render, and checks the family profiles on the real tokenizers; use these stand-ins only where a
test needs a vocabulary small enough for the tiny models.
"""

from __future__ import annotations

import functools

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A few hundred BPE merges learnt from text that looks like what the tests render and decode.
# The harmony header words and role names are trained as whole words: they are single tokens
# in o200k, and ``Family.segment_rules`` keys the final channel on the token of "final".
_CORPUS = [
    "We need to add the numbers. The answer is 42.",
    "Okay, 2+2 is 4. Let me double-check: two plus two equals four. The answer is 4.",
    "The user asks what is 2+2. So answer: 4. Provide concise.",
    ("Review your previous reasoning and answer. If you find a mistake, correct it; otherwise "
     "restate the final answer."),
    "What is 6 times 7? Six times seven is forty-two, so the answer is 42.",
    "You are ChatGPT, a large language model trained by OpenAI.",
    "Knowledge cutoff: 2024-06 Current date: 2025-08-05 Reasoning: medium low high",
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "Let me think step by step about the question before I give the final answer.",
    "Hmm, wait. I should check the arithmetic again; the sum of the digits is nine.",
    "Therefore the result is correct, and the answer is 12.",
]
_HEADER_WORDS = ["analysis", "commentary", "final", "assistant", "user", "system", "developer",
                 "Instructions", "json"]

# o200k_harmony ids 199998-200012, in order; "<|reserved_*|>" slots keep the real spacing.
HARMONY_SPECIALS = [
    "<|startoftext|>",  # 199998
    "<|endoftext|>",  # 199999
    "<|reserved_200000|>",
    "<|reserved_200001|>",
    "<|return|>",  # 200002
    "<|constrain|>",  # 200003
    "<|reserved_200004|>",
    "<|channel|>",  # 200005
    "<|start|>",  # 200006
    "<|end|>",  # 200007
    "<|message|>",  # 200008
    "<|reserved_200009|>",
    "<|reserved_200010|>",
    "<|reserved_200011|>",
    "<|call|>",  # 200012
]

# Qwen3 ids 151643-151668, in order, with the real "special" flag.
QWEN3_SPECIALS = [
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),  # 151665
    ("</tool_response>", False),
    ("<think>", False),  # 151667
    ("</think>", False),  # 151668
]

# SmolLM2's specials sit at ids 0-2 (which is also what conftest's tiny configs use for bos/eos).
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# --------------------------------------------------------------------------------------------
# Chat templates

# gpt-oss (harmony), after openai/gpt-oss-20b chat_template.jinja with the tool rendering removed.
HARMONY_TEMPLATE = """\
{#- Fixture copy of the gpt-oss harmony template (tools and builtin tools left out). -#}
{%- macro build_system_message() -%}
    {%- if model_identity is not defined %}
        {%- set model_identity = "You are ChatGPT, a large language model trained by OpenAI." %}
    {%- endif %}
    {{- model_identity + "\\n" }}
    {{- "Knowledge cutoff: 2024-06\\n" }}
    {{- "Current date: " + strftime_now("%Y-%m-%d") + "\\n\\n" }}
    {%- if reasoning_effort is not defined %}
        {%- set reasoning_effort = "medium" %}
    {%- endif %}
    {{- "Reasoning: " + reasoning_effort + "\\n\\n" }}
    {{- "# Valid channels: analysis, commentary, final. Channel must be included for every message." }}
{%- endmacro -%}
{%- if tools or builtin_tools %}
    {{- raise_exception("fixture harmony template: tools are not reproduced") }}
{%- endif %}
{{- "<|start|>system<|message|>" }}
{{- build_system_message() }}
{{- "<|end|>" }}
{%- if messages[0].role == "developer" or messages[0].role == "system" %}
    {%- set developer_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set developer_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if developer_message %}
    {{- "<|start|>developer<|message|>" }}
    {{- "# Instructions\\n\\n" }}
    {{- developer_message }}
    {{- "\\n\\n" }}
    {{- "<|end|>" }}
{%- endif %}
{%- for message in loop_messages -%}
    {%- if message.role == 'assistant' -%}
        {%- if "content" in message %}
            {%- if "<|channel|>analysis<|message|>" in message.content or "<|channel|>final<|message|>" in message.content %}
                {{- raise_exception("You have passed a message containing <|channel|> tags in the content field.") }}
            {%- endif %}
        {%- endif %}
        {%- if "tool_calls" in message %}
            {{- raise_exception("fixture harmony template: tool calls are not reproduced") }}
        {%- elif loop.last and not add_generation_prompt %}
            {#- Training only: the last assistant turn keeps its CoT and ends with <|return|>. #}
            {%- if "thinking" in message %}
                {{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" }}
            {%- endif %}
            {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>" }}
        {%- else %}
            {#- CoT is dropped during all previous turns, so we never render it for inference #}
            {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" }}
        {%- endif %}
    {%- elif message.role == 'tool' -%}
        {{- raise_exception("fixture harmony template: tool messages are not reproduced") }}
    {%- elif message.role == 'user' -%}
        {{- "<|start|>user<|message|>" + message.content + "<|end|>" }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|start|>assistant
{%- endif -%}
"""

# Qwen3 (ChatML). The Thinking-2507 and Instruct-2507 templates share everything but the
# handling of assistant turns and the generation prompt; tool rendering is left out.
_QWEN3_HEAD = """\
{%- if tools %}
    {{- raise_exception("fixture Qwen3 template: tools are not reproduced") }}
{%- endif %}
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
"""

_QWEN3_THINKING_ASSISTANT = """\
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {#- Turns up to the last user query lose their reasoning. #}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
"""

_QWEN3_INSTRUCT_ASSISTANT = """\
        {{- '<|im_start|>' + message.role + '\\n' + content }}
"""

_QWEN3_TAIL = """\
        {%- if message.tool_calls %}
            {{- raise_exception("fixture Qwen3 template: tool calls are not reproduced") }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- raise_exception("fixture Qwen3 template: tool messages are not reproduced") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n@GENERATION_PROMPT@' }}
{%- endif %}"""

QWEN3_THINKING_TEMPLATE = (_QWEN3_HEAD + _QWEN3_THINKING_ASSISTANT
                           + _QWEN3_TAIL.replace("@GENERATION_PROMPT@", "<think>\\n"))
QWEN3_INSTRUCT_TEMPLATE = _QWEN3_HEAD + _QWEN3_INSTRUCT_ASSISTANT + _QWEN3_TAIL.replace("@GENERATION_PROMPT@", "")
# Hybrid Qwen3 (0.6B-32B): Thinking-2507's history handling, thinking on unless enable_thinking is false.
QWEN3_HYBRID_TEMPLATE = (_QWEN3_HEAD + _QWEN3_THINKING_ASSISTANT
                         + _QWEN3_TAIL.replace("' }}\n{%- endif %}", "' }}\n"
                                               "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
                                               "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
                                               "    {%- endif %}\n{%- endif %}")
                         .replace("@GENERATION_PROMPT@", ""))

# SmolLM2-Instruct's ChatML template, default system message included.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# --------------------------------------------------------------------------------------------
# Builders


@functools.cache
def _trained_bpe(leading_specials: tuple[str, ...]) -> str:
    """A byte-level BPE trained on ``_CORPUS`` (as tokenizer JSON, so every caller gets a fresh
    object), with ``leading_specials`` at ids 0.. and no other added token."""
    tok = Tokenizer(models.BPE())
    # GPT-2's split regex and byte-level alphabet: every string encodes, nothing is unknown.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[AddedToken(t, special=True, normalized=False)
                                                  for t in leading_specials],
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS + _HEADER_WORDS * 20, trainer)
    return tok.to_str()


def _build(leading_specials: tuple[str, ...], trailing: list[tuple[str, bool]], template: str,
           **special_token_kwargs) -> PreTrainedTokenizerFast:
    tok = Tokenizer.from_str(_trained_bpe(leading_specials))
    base = tok.get_vocab_size()
    for i, (content, special) in enumerate(trailing):
        token = AddedToken(content, special=special, normalized=False)
        tid = (tok.add_special_tokens if special else tok.add_tokens)([token])
        assert tid == 1 and tok.token_to_id(content) == base + i, content  # the layout is kept
    for word in _HEADER_WORDS:
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special_token_kwargs)
    fast.chat_template = template
    return fast


def harmony_base() -> int:
    """The fixture id of ``<|startoftext|>`` (o200k_harmony 199998); harmony token ``t`` has the
    fixture id ``harmony_base() + (real_id(t) - 199998)``."""
    return Tokenizer.from_str(_trained_bpe(())).get_vocab_size()


def harmony_tokenizer() -> PreTrainedTokenizerFast:
    """gpt-oss: harmony specials (all ``special=True``); bos ``<|startoftext|>``, eos
    ``<|return|>``, pad ``<|endoftext|>``, as in openai/gpt-oss-20b. The generation config's other
    EOS ids (``<|endoftext|>``, ``<|call|>``) are what :func:`harmony_eos_ids` returns.

    Template: system message (model identity, ``Knowledge cutoff: 2024-06``, ``Current date:
    strftime_now('%Y-%m-%d')``, ``Reasoning: {reasoning_effort}`` default medium, the valid
    channels line); a leading system/developer message becomes the developer message
    (``# Instructions``); user turns ``<|start|>user<|message|>...<|end|>``; earlier assistant
    turns ``<|start|>assistant<|channel|>final<|message|>{content}<|end|>`` (``thinking``
    dropped); generation prompt ``<|start|>assistant``. Tools raise."""
    return _build((), [(t, True) for t in HARMONY_SPECIALS], HARMONY_TEMPLATE,
                  bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>")


def harmony_eos_ids(tokenizer) -> list[int]:
    """gpt-oss's ``generation_config.eos_token_id``: ``<|return|>``, ``<|endoftext|>``, ``<|call|>``."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>")]


def qwen3_thinking_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3 Thinking-2507: Qwen3 specials (``<think>``/``</think>``, tool tags not special), no
    bos, eos ``<|im_end|>``, pad ``<|endoftext|>``.

    Template: ChatML ``<|im_start|>role\\n...<|im_end|>\\n``, no default system message; assistant
    turns at or before the last user query keep only the text after ``</think>`` (or their
    ``content`` when ``reasoning_content`` is given); later ones render ``<think>\\n...\\n</think>\\n\\n``;
    generation prompt ``<|im_start|>assistant\\n<think>\\n``. Tools raise."""
    return _build((), QWEN3_SPECIALS, QWEN3_THINKING_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def qwen3_instruct_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3 Instruct-2507: the same vocabulary as :func:`qwen3_thinking_tokenizer` (think tags
    included, as in the real one), eos ``<|im_end|>``, pad ``<|endoftext|>``.

    Template: ChatML, assistant content rendered as given, generation prompt
    ``<|im_start|>assistant\\n``. Tools raise."""
    return _build((), QWEN3_SPECIALS, QWEN3_INSTRUCT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def qwen3_hybrid_tokenizer() -> PreTrainedTokenizerFast:
    """Hybrid Qwen3 (Qwen3-0.6B ... 32B): the Qwen3 vocabulary and Thinking-2507's handling of
    earlier turns; generation prompt ``<|im_start|>assistant\\n``, followed by an empty
    ``<think>\\n\\n</think>\\n\\n`` block when ``enable_thinking=False``. Tools raise."""
    return _build((), QWEN3_SPECIALS, QWEN3_HYBRID_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def generic_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """SmolLM2-Instruct-like: ``<|endoftext|>``=0, ``<|im_start|>``=1, ``<|im_end|>``=2 (the real
    ids), bos ``<|im_start|>``, eos and pad ``<|im_end|>``.

    Template: SmolLM2's ChatML with its default system message ("You are a helpful AI assistant
    named SmolLM, trained by Hugging Face") when the conversation has none; generation prompt
    ``<|im_start|>assistant\\n``."""
    return _build(tuple(SMOLLM2_SPECIALS), [], CHATML_TEMPLATE,
                  bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                  unk_token="<|endoftext|>")


def encode_generation(tokenizer, text_with_specials: str) -> list[int]:
    """Token ids of a model output written as text, e.g.
    ``"<|channel|>analysis<|message|>...<|end|>"``: every special-token string becomes its single
    token and nothing is added around the text. The ids decode back to exactly the text."""
    ids = list(tokenizer(text_with_specials, add_special_tokens=False)["input_ids"])
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if decoded != text_with_specials:
        raise ValueError(f"encode_generation: {text_with_specials!r} does not round-trip (got {decoded!r})")
    return ids
