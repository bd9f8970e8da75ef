"""Family profiles on tokenizers that carry each family's real special tokens and templates.

The tokenizers come from ``family_fixtures`` (offline stand-ins: real special tokens and
template behaviour, different ids). Generations are written as text with their special tokens,
split into pieces whose expected class is known, so every expectation below is stated
independently of the state machine under test.
"""

from __future__ import annotations

import datetime as _dt
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from family_fixtures import (
    HARMONY_SPECIALS,
    QWEN3_SPECIALS,
    encode_generation,
    generic_chatml_tokenizer,
    harmony_base,
    harmony_eos_ids,
    harmony_tokenizer,
    qwen3_hybrid_tokenizer,
    qwen3_instruct_tokenizer,
    qwen3_thinking_tokenizer,
)
from transformers import LogitsProcessor
from transformers.utils import chat_template_utils

from tje_hf import DecodeConfig, SignalConfig, generate_with_entropy
from tje_hf.models.families import (
    FAMILIES,
    FamilyError,
    answer_text,
    history_text,
    make_family,
    resolve_family,
)
from tje_hf.models.segments import ANSWER, HEADER, REASONING, SegmentMachine, segment_labels

H, R, A = HEADER, REASONING, ANSWER
TOKENIZERS = {
    "gpt-oss": harmony_tokenizer,
    "qwen3-thinking": qwen3_thinking_tokenizer,
    "qwen3-instruct": qwen3_instruct_tokenizer,
    "generic": generic_chatml_tokenizer,
}

# Realistic generations, as (text, class of every token of that text) pieces. Pieces end at
# special tokens, so encoding them one by one gives the ids of the whole text.
HARMONY_ANALYSIS_FINAL = [
    ("<|channel|>analysis<|message|>", H),
    ("We need to add 40 and 2. The sum is 42.", R),
    ("<|end|><|start|>assistant<|channel|>final<|message|>", H),
    ("The answer is 42.", A),
    ("<|return|>", H),
]
HARMONY_FINAL_ONLY = [
    ("<|channel|>final<|message|>", H),
    ("The answer is 42.", A),
    ("<|return|>", H),
]
HARMONY_CUT_IN_ANALYSIS = [  # max_new_tokens reached while thinking: no answer yet
    ("<|channel|>analysis<|message|>", H),
    ("We need to add 40 and 2. Let me think step by step", R),
]
QWEN3_THINKING = [  # Thinking-2507: "<think>\n" sits in the prompt, the output only closes it
    ("Okay, 2+2 is 4. Let me double-check: two plus two equals four.\n", R),
    ("</think>", H),
    ("\n\nThe answer is 4.", A),
    ("<|im_end|>", H),
]
QWEN3_HYBRID = [  # hybrid Qwen3 with thinking on: the output opens the block itself
    ("<think>", H),
    ("\nOkay, 2+2 is 4.\n", R),
    ("</think>", H),
    ("\n\nThe answer is 4.", A),
    ("<|im_end|>", H),
]
CHATML_ANSWER = [
    ("The answer is 4. Six times seven is forty-two.", A),
    ("<|im_end|>", H),
]

CASES = {
    "harmony-analysis-final": ("gpt-oss", HARMONY_ANALYSIS_FINAL, "The answer is 42."),
    "harmony-final-only": ("gpt-oss", HARMONY_FINAL_ONLY, "The answer is 42."),
    "harmony-cut-in-analysis": ("gpt-oss", HARMONY_CUT_IN_ANALYSIS, ""),
    "qwen3-thinking": ("qwen3-thinking", QWEN3_THINKING, "The answer is 4."),
    "qwen3-hybrid": ("qwen3-thinking", QWEN3_HYBRID, "The answer is 4."),
    "qwen3-instruct": ("qwen3-instruct", CHATML_ANSWER, "The answer is 4. Six times seven is forty-two."),
    "generic": ("generic", CHATML_ANSWER, "The answer is 4. Six times seven is forty-two."),
}


def scripted(tokenizer, pieces) -> tuple[list[int], list[int]]:
    """Ids of the whole generation and the expected class of each id."""
    ids, labels = [], []
    for text, cls in pieces:
        piece = encode_generation(tokenizer, text)
        ids += piece
        labels += [cls] * len(piece)
    assert ids == encode_generation(tokenizer, "".join(t for t, _ in pieces))
    return ids, labels


@pytest.fixture(scope="module")
def toks():
    return {name: build() for name, build in TOKENIZERS.items()}


# --------------------------------------------------------------------------------------------
# The fixtures themselves


def test_fixture_special_tokens_are_single_tokens_in_the_real_layout(toks):
    h = toks["gpt-oss"]
    base = harmony_base()
    real = {"<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002, "<|constrain|>": 200003,
            "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008,
            "<|call|>": 200012}
    for token, real_id in real.items():
        assert h.convert_tokens_to_ids(token) == base + real_id - 199998
        assert encode_generation(h, token) == [base + real_id - 199998]
    assert (h.eos_token, h.pad_token, h.bos_token) == ("<|return|>", "<|endoftext|>", "<|startoftext|>")
    assert harmony_eos_ids(h) == [base + 4, base + 1, base + 14]
    assert len(h) == base + len(HARMONY_SPECIALS) <= 49152

    for name in ("qwen3-thinking", "qwen3-instruct"):
        q = toks[name]
        qbase = q.convert_tokens_to_ids("<|endoftext|>")
        for token, real_id in {"<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667,
                               "</think>": 151668}.items():
            assert encode_generation(q, token) == [qbase + real_id - 151643]
        assert (q.eos_token, q.pad_token, q.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
        assert len(q) == qbase + len(QWEN3_SPECIALS) <= 49152
        # As in the real tokenizer, the think tags are not special: skipping specials keeps them.
        ids = encode_generation(q, "<|im_start|><think>x</think>y<|im_end|>")
        assert q.decode(ids, skip_special_tokens=True) == "<think>x</think>y"

    g = toks["generic"]
    assert [g.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert (g.eos_token_id, g.pad_token_id) == (2, 2)


def test_encode_generation_rejects_text_that_does_not_round_trip(toks):
    class Lossy:
        def __call__(self, text, add_special_tokens):
            return {"input_ids": [1, 2]}

        def decode(self, ids, **kwargs):
            return "something else"

    with pytest.raises(ValueError, match="round-trip"):
        encode_generation(Lossy(), "<|start|>x")


# --------------------------------------------------------------------------------------------
# (a) segmentation of realistic generations


@pytest.mark.parametrize("case", list(CASES))
def test_segment_labels_of_realistic_generations(case, toks):
    family_name, pieces, expected_answer = CASES[case]
    tok = toks[family_name]
    family = make_family(family_name)
    ids, expected = scripted(tok, pieces)
    labels = segment_labels(family.segment_rules(tok), ids)
    assert labels == expected
    # The answer is exactly the ANSWER pieces, with or without precomputed labels.
    assert answer_text(tok, ids, labels, family) == expected_answer
    assert answer_text(tok, ids, None, family) == expected_answer
    reasoning = [t for t, s in zip(ids, labels, strict=True) if s == REASONING]
    assert tok.decode(reasoning) == "".join(text for text, cls in pieces if cls == REASONING)


def test_harmony_header_tokens_are_never_reasoning_or_answer(toks):
    tok = toks["gpt-oss"]
    ids, _ = scripted(tok, HARMONY_ANALYSIS_FINAL)
    labels = segment_labels(make_family("gpt-oss").segment_rules(tok), ids)
    specials = set(tok.convert_tokens_to_ids(HARMONY_SPECIALS))
    for tid, cls in zip(ids, labels, strict=True):
        if tid in specials or tok.convert_ids_to_tokens(tid) in ("analysis", "final", "assistant"):
            assert cls == HEADER, tok.convert_ids_to_tokens(tid)


def test_family_rules_need_the_family_tokens(toks):
    with pytest.raises(FamilyError, match="<\\|channel\\|>"):
        make_family("gpt-oss").segment_rules(toks["generic"])
    with pytest.raises(FamilyError, match="</think>"):
        make_family("qwen3-thinking").segment_rules(toks["gpt-oss"])
    assert make_family("gpt-oss").segment_rules(toks["gpt-oss"]).has_reasoning
    assert make_family("qwen3-thinking").segment_rules(toks["qwen3-thinking"]).has_reasoning
    assert not make_family("qwen3-instruct").segment_rules(toks["qwen3-instruct"]).has_reasoning
    assert not make_family("generic").segment_rules(toks["generic"]).has_reasoning


# --------------------------------------------------------------------------------------------
# (b) rendering a refinement conversation

QUESTION = "What is 6 times 7?"
REVIEW = "Review your previous reasoning and answer. If you find a mistake, correct it; otherwise restate the final answer."
ANSWER_TEXT = "The answer is 42."
REASONING_TEXT = "Six times seven is forty-two."


def refinement_messages(earlier_assistant: dict) -> list[dict]:
    return [{"role": "user", "content": QUESTION}, earlier_assistant, {"role": "user", "content": REVIEW}]


class _FakeDatetime:
    """Stands in for ``datetime.datetime`` inside Transformers' chat-template ``strftime_now``."""

    today = _dt.datetime(2031, 1, 2)

    @classmethod
    def now(cls, tz=None):
        return cls.today


@pytest.fixture
def fake_today(monkeypatch):
    monkeypatch.setattr(chat_template_utils, "datetime", _FakeDatetime)
    return _FakeDatetime


HARMONY_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                  "Knowledge cutoff: 2024-06\nCurrent date: {date}\n\nReasoning: {effort}\n\n"
                  "# Valid channels: analysis, commentary, final. Channel must be included for every message."
                  "<|end|>")


def test_harmony_render_drops_analysis_pins_date_and_passes_effort(toks, fake_today):
    tok = toks["gpt-oss"]
    family = make_family("gpt-oss", reasoning_effort="high", template_date="2025-08-05")
    # The earlier turn as the refinement loop builds it (answer only), and as a raw chat message
    # with its analysis: both must render as the final channel only.
    for earlier in (family.history_message(ANSWER_TEXT),
                    {"role": "assistant", "content": ANSWER_TEXT, "thinking": REASONING_TEXT}):
        ids = family.render(tok, refinement_messages(earlier))
        expected = (HARMONY_SYSTEM.format(date="2025-08-05", effort="high")
                    + f"<|start|>user<|message|>{QUESTION}<|end|>"
                    + f"<|start|>assistant<|channel|>final<|message|>{ANSWER_TEXT}<|end|>"
                    + f"<|start|>user<|message|>{REVIEW}<|end|>"
                    + "<|start|>assistant")
        assert tok.decode(ids) == expected
        assert ids == encode_generation(tok, expected)
        assert ids[-2:] == [tok.convert_tokens_to_ids("<|start|>"), tok.convert_tokens_to_ids("assistant")]

    # The pin holds whatever day it is; without it the template prints "today".
    messages = refinement_messages(family.history_message(ANSWER_TEXT))
    first = family.render(tok, messages)
    fake_today.today = _dt.datetime(2032, 12, 31)
    assert family.render(tok, messages) == first
    unpinned = make_family("gpt-oss", template_date=None).render(tok, messages)
    assert "Current date: 2032-12-31\n\nReasoning: medium\n" in tok.decode(unpinned)


def test_harmony_default_effort_is_medium_and_system_message_becomes_developer(toks, fake_today):
    tok = toks["gpt-oss"]
    ids = make_family("gpt-oss", template_date="2025-08-05").render(
        tok, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}])
    # harmony's developer message (the template adds "\n\n" after the instructions; harmony,
    # which the model was trained on, does not: see families.py and test_reference_formats.py)
    assert tok.decode(ids) == (HARMONY_SYSTEM.format(date="2025-08-05", effort="medium")
                               + "<|start|>developer<|message|># Instructions\n\nAnswer briefly.<|end|>"
                               + f"<|start|>user<|message|>{QUESTION}<|end|><|start|>assistant")


def test_harmony_date_pin_touches_the_system_message_only(toks, fake_today):
    tok = toks["gpt-oss"]
    question = "Current date: 2024-02-28. What is the date two days later?"
    text = tok.decode(make_family("gpt-oss", template_date="2025-08-05").render(
        tok, [{"role": "system", "content": "Current date: 2023-01-01"}, {"role": "user", "content": question}]))
    assert text.startswith(HARMONY_SYSTEM.format(date="2025-08-05", effort="medium"))
    assert "# Instructions\n\nCurrent date: 2023-01-01<|end|>" in text
    assert f"<|start|>user<|message|>{question}<|end|>" in text


@pytest.mark.parametrize("family_name", ["qwen3-thinking", "qwen3-instruct"])
def test_qwen3_render_drops_earlier_reasoning(family_name, toks):
    tok = toks[family_name]
    family = make_family(family_name, reasoning_effort="high", template_date="2025-08-05")
    # harmony-only settings are ignored; enable_thinking always says the family's mode
    assert family.template_kwargs == {"enable_thinking": family_name == "qwen3-thinking"}
    assert family.template_date is None
    prompt_tail = "<think>\n" if family_name == "qwen3-thinking" else ""
    expected = (f"<|im_start|>user\n{QUESTION}<|im_end|>\n"
                f"<|im_start|>assistant\n{ANSWER_TEXT}<|im_end|>\n"
                f"<|im_start|>user\n{REVIEW}<|im_end|>\n"
                f"<|im_start|>assistant\n{prompt_tail}")
    earlier_turns = [family.history_message(ANSWER_TEXT)]
    if family_name == "qwen3-thinking":
        # The raw output (reasoning, then </think>): the template keeps what follows </think>.
        earlier_turns.append({"role": "assistant", "content": f"{REASONING_TEXT}\n</think>\n\n{ANSWER_TEXT}"})
        earlier_turns.append({"role": "assistant", "content": ANSWER_TEXT, "reasoning_content": REASONING_TEXT})
    for earlier in earlier_turns:
        ids = family.render(tok, refinement_messages(earlier))
        assert tok.decode(ids) == expected
        assert ids == encode_generation(tok, expected)
    if family_name == "qwen3-thinking":
        assert ids[-2:] == encode_generation(tok, "<think>\n")
    else:
        assert tok.convert_tokens_to_ids("<think>") not in ids


def test_generic_render_is_smollm2_chatml(toks):
    tok = toks["generic"]
    ids = make_family("generic").render(tok, refinement_messages({"role": "assistant", "content": ANSWER_TEXT}))
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER_TEXT}<|im_end|>\n"
                f"<|im_start|>user\n{REVIEW}<|im_end|>\n<|im_start|>assistant\n")
    assert ids == encode_generation(tok, expected)


def test_render_needs_a_chat_template(toks):
    tok = generic_chatml_tokenizer()
    tok.chat_template = None
    with pytest.raises(FamilyError, match="no chat template"):
        make_family("generic").render(tok, [{"role": "user", "content": QUESTION}])


def test_answer_text_feeds_the_next_turn(toks):
    """Generation -> answer_text -> history_message -> render: the next prompt holds the answer
    and none of the reasoning."""
    for family_name, pieces in (("gpt-oss", HARMONY_ANALYSIS_FINAL), ("qwen3-thinking", QWEN3_THINKING)):
        tok, family = toks[family_name], make_family(family_name, template_date="2025-08-05")
        ids, _ = scripted(tok, pieces)
        answer = answer_text(tok, ids, None, family)
        text = tok.decode(family.render(tok, refinement_messages(family.history_message(answer))))
        assert answer in text
        reasoning = "".join(t for t, c in pieces if c == REASONING).strip()
        assert reasoning not in text


# --------------------------------------------------------------------------------------------
# (c) the device state machine equals the host labels, row by row

BATCHES = {
    "gpt-oss": [HARMONY_ANALYSIS_FINAL, HARMONY_FINAL_ONLY],
    "qwen3-thinking": [QWEN3_THINKING, QWEN3_HYBRID],
    "qwen3-instruct": [CHATML_ANSWER, [("Four.", A), ("<|im_end|>", H)]],
    "generic": [[("Four.", A), ("<|im_end|>", H)], CHATML_ANSWER],
}


@pytest.mark.parametrize("family_name", list(BATCHES))
def test_segment_machine_batch_equals_host_labels(family_name, toks):
    tok = toks[family_name]
    rules = make_family(family_name).segment_rules(tok)
    rows = [scripted(tok, pieces) for pieces in BATCHES[family_name]]
    assert len(rows[0][0]) != len(rows[1][0])
    length = max(len(ids) for ids, _ in rows)
    # Finished rows keep receiving pad tokens in a batch, as in generate.
    tokens = torch.tensor([ids + [tok.pad_token_id] * (length - len(ids)) for ids, _ in rows])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = SegmentMachine(rules, device)
    state = machine.initial_state(2)
    classes = []
    for t in range(length):
        cls, state = machine.step(state, tokens[:, t].to(device))
        classes.append(cls.cpu())
    classes = torch.stack(classes, dim=1)
    for row, (ids, expected) in enumerate(rows):
        assert classes[row, : len(ids)].tolist() == segment_labels(rules, ids) == expected


@pytest.mark.parametrize("family_name", list(BATCHES))
def test_segment_machine_equals_host_labels_on_random_sequences(family_name, toks):
    """Arbitrary orders of markers and text (malformed output included): the tensor machine and
    the plain-Python labels agree token for token."""
    tok = toks[family_name]
    rules = make_family(family_name).segment_rules(tok)
    markers = sorted({t for _, t, _ in rules.transitions} | {tok.convert_tokens_to_ids("final")})
    vocab = markers + encode_generation(tok, "We need to add 40 and 2.")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor(vocab)[torch.randint(len(vocab), (8, 64), generator=gen)]
    machine = SegmentMachine(rules, "cpu")
    state = machine.initial_state(8)
    classes = []
    for t in range(tokens.shape[1]):
        cls, state = machine.step(state, tokens[:, t])
        classes.append(cls)
    classes = torch.stack(classes, dim=1)
    for row in range(8):
        assert classes[row].tolist() == segment_labels(rules, tokens[row].tolist())


# --------------------------------------------------------------------------------------------
# (d) resolving the family


def _fake_model(model_type: str, name: str = ""):
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type, _name_or_path=name))


def test_resolve_family_on_tiny_models(tiny_gpt_oss, tiny_qwen3_moe, toks):
    assert resolve_family("auto", tiny_gpt_oss, toks["gpt-oss"]) == "gpt-oss"
    # Qwen3 checkpoints share one vocabulary (think tags included), so the template decides.
    assert resolve_family("auto", tiny_qwen3_moe, toks["qwen3-thinking"]) == "qwen3-thinking"
    assert resolve_family("auto", tiny_qwen3_moe, toks["qwen3-instruct"]) == "qwen3-instruct"
    hybrid = qwen3_hybrid_tokenizer()
    assert "enable_thinking" in hybrid.chat_template
    assert resolve_family("auto", tiny_qwen3_moe, hybrid) == "qwen3-thinking"
    assert resolve_family("auto", tiny_qwen3_moe, hybrid, enable_thinking=True) == "qwen3-thinking"
    assert resolve_family("auto", tiny_qwen3_moe, hybrid, enable_thinking=False) == "qwen3-instruct"
    # Templates without the switch decide by themselves.
    assert resolve_family("auto", tiny_qwen3_moe, toks["qwen3-thinking"], enable_thinking=False) == "qwen3-thinking"
    bare = qwen3_instruct_tokenizer()
    bare.chat_template = None
    assert resolve_family("auto", tiny_qwen3_moe, bare) == "qwen3-thinking"  # has </think>, no template
    # A checkpoint name wins over the template.
    assert resolve_family("auto", _fake_model("qwen3_moe", "Qwen/Qwen3-30B-A3B-Instruct-2507"),
                          toks["qwen3-thinking"]) == "qwen3-instruct"
    assert resolve_family("auto", _fake_model("qwen3_moe", "/models/Qwen3-30B-A3B-Thinking-2507"),
                          toks["qwen3-instruct"]) == "qwen3-thinking"
    assert resolve_family("auto", _fake_model("llama"), toks["generic"]) == "generic"
    for name in FAMILIES:
        assert resolve_family(name, tiny_qwen3_moe, toks["generic"]) == name
    with pytest.raises(FamilyError, match="qwen3"):
        resolve_family("qwen3", tiny_qwen3_moe, toks["qwen3-thinking"])
    with pytest.raises(FamilyError, match="unknown family"):
        make_family("llama")


# --------------------------------------------------------------------------------------------
# (e) segment means of a real generate call


class ForceScript(LogitsProcessor):
    """Makes ``generate`` emit ``script`` by masking every other token (runs after the tracker,
    so the tracker still records the model's own logits)."""

    def __init__(self, script: list[int]):
        self.script = script
        self.step = 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.script[min(self.step, len(self.script) - 1)]] = 0.0
        self.step += 1
        return forced


@pytest.fixture
def one_thread():
    """Tiny models decode fastest on one thread; with more, OpenMP's spinning makes a shared,
    busy CPU many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("model_fixture,family_name,pieces", [
    ("tiny_gpt_oss", "gpt-oss", HARMONY_ANALYSIS_FINAL),
    ("tiny_qwen3_moe", "qwen3-thinking", QWEN3_THINKING),
])
def test_segment_means_of_a_scripted_generation(model_fixture, family_name, pieces, request, toks, monkeypatch,
                                                one_thread):
    model = request.getfixturevalue(model_fixture)
    tok = toks[family_name]
    family = make_family(family_name, template_date="2025-08-05")
    # The real generation configs' EOS ids (the tiny config's id 2 is an ordinary byte here).
    eos = harmony_eos_ids(tok) if family_name == "gpt-oss" else tok.convert_tokens_to_ids(["<|im_end|>",
                                                                                           "<|endoftext|>"])
    monkeypatch.setattr(model.generation_config, "eos_token_id", eos)
    script, labels = scripted(tok, pieces)
    prompt = family.render(tok, [{"role": "user", "content": QUESTION}])
    config = DecodeConfig(max_new_tokens=len(script) + 8, temperature=0, signals=SignalConfig(trace=True))
    out = generate_with_entropy(model, tok, [prompt], config, segment_rules=family.segment_rules(tok),
                                logits_processor=[ForceScript(script)])
    res = out.results[0]
    assert res.token_ids == script and res.stop_reason == "eos"
    assert res.segments.tolist() == labels
    assert res.counts == {"all": len(script), "reasoning": labels.count(REASONING), "answer": labels.count(ANSWER)}
    assert res.counts["reasoning"] > 5 and res.counts["answer"] > 3
    # The trace holds the model's entropies, not those of the forced one-hot distribution.
    col = out.columns.index("topk_entropy@20")
    assert np.all(res.trace[:, col] > 0.01)
    for seg, cls in (("reasoning", REASONING), ("answer", ANSWER)):
        rows = res.trace[res.segments == cls]
        for j, name in enumerate(out.columns):
            assert res.means[seg][name] == pytest.approx(float(rows[:, j].astype(np.float64).mean()), rel=1e-5,
                                                         abs=1e-6)
    assert answer_text(tok, res.token_ids, res.segments.tolist(), family) == "".join(
        t for t, c in pieces if c == ANSWER).strip()


# --------------------------------------------------------------------------------------------
# (f) the hybrid Qwen3 switch


def test_enable_thinking_follows_the_family_on_the_hybrid_template():
    tok = qwen3_hybrid_tokenizer()
    question = [{"role": "user", "content": QUESTION}]
    on = tok.decode(make_family("qwen3-thinking").render(tok, question))
    off = tok.decode(make_family("qwen3-instruct", enable_thinking=False).render(tok, question))
    assert on.endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert off.endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert make_family("qwen3-instruct").template_kwargs == {"enable_thinking": False}
    assert make_family("qwen3-thinking", enable_thinking=True).template_kwargs == {"enable_thinking": True}
    assert make_family("generic", enable_thinking=False).template_kwargs == {"enable_thinking": False}
    assert make_family("generic").template_kwargs == {}
    with pytest.raises(FamilyError, match="qwen3-instruct"):
        make_family("qwen3-thinking", enable_thinking=False)
    with pytest.raises(FamilyError, match="qwen3-thinking"):
        make_family("qwen3-instruct", enable_thinking=True)
    with pytest.raises(FamilyError, match="reasoning_effort"):
        make_family("gpt-oss", enable_thinking=False)


# --------------------------------------------------------------------------------------------
# (g) history: the answer turn of template history, the tokens of continuation history


def test_history_turn_keeps_the_answer_as_written(toks):
    tok, family = toks["qwen3-thinking"], make_family("qwen3-thinking")
    ids, _ = scripted(tok, [("Okay.\n", R), ("</think>", H), ("\n\nThe answer is 4.\n", A), ("<|im_end|>", H)])
    assert answer_text(tok, ids, None, family) == "The answer is 4."
    # The Qwen3 template drops the newlines after </think> and keeps the trailing one.
    assert history_text(tok, ids, None, family) == "The answer is 4.\n"
    assert family.history_turn(tok, ids) == {"role": "assistant", "content": "The answer is 4.\n"}
    tok, family = toks["gpt-oss"], make_family("gpt-oss")
    ids, labels = scripted(tok, HARMONY_CUT_IN_ANALYSIS)
    assert family.history_turn(tok, ids, labels) == {"role": "assistant", "content": ""}
    # The labels as StepResult holds them (the tracker's array) work as well.
    ids, labels = scripted(tok, HARMONY_ANALYSIS_FINAL)
    assert family.history_turn(tok, ids, np.asarray(labels)) == {"role": "assistant", "content": "The answer is 42."}


# generation -> what continuation appends after the previous prompt (the generation as history
# holds it, then the next user turn and the generation prompt)
HARMONY_TAIL = "<|start|>user<|message|>{r}<|end|><|start|>assistant"
QWEN3_TAIL = "\n<|im_start|>user\n{r}<|im_end|>\n<|im_start|>assistant\n<think>\n"
CONTINUATIONS = {
    "gpt-oss": [
        ("<|channel|>final<|message|>42<|return|>", "<|channel|>final<|message|>42<|end|>" + HARMONY_TAIL),
        ("<|channel|>final<|message|>42<|endoftext|>", "<|channel|>final<|message|>42<|end|>" + HARMONY_TAIL),
        ("<|channel|>analysis<|message|>We need<|end|>", "<|channel|>analysis<|message|>We need<|end|>" + HARMONY_TAIL),
        ("<|channel|>analysis<|message|>We need", "<|channel|>analysis<|message|>We need<|end|>" + HARMONY_TAIL),
        ("<|channel|>analysis<|message|>We need<|end|><|start|>assistant<|channel|>final",
         "<|channel|>analysis<|message|>We need<|end|>" + HARMONY_TAIL),
        (" to=functions.f<|channel|>commentary<|message|>{}<|call|>",
         " to=functions.f<|channel|>commentary<|message|>{}<|call|>" + HARMONY_TAIL),
    ],
    "qwen3-thinking": [
        ("Okay.\n</think>\n\n4<|im_end|>", "Okay.\n</think>\n\n4<|im_end|>" + QWEN3_TAIL),
        ("Okay.\n</think>\n\n4<|endoftext|>", "Okay.\n</think>\n\n4<|im_end|>" + QWEN3_TAIL),
        ("Okay, let me", "Okay, let me<|im_end|>" + QWEN3_TAIL),
    ],
    "generic": [
        ("Four.<|im_end|>", "Four.<|im_end|>\n<|im_start|>user\n{r}<|im_end|>\n<|im_start|>assistant\n"),
        ("Four", "Four<|im_end|>\n<|im_start|>user\n{r}<|im_end|>\n<|im_start|>assistant\n"),
    ],
}


@pytest.mark.parametrize("family_name", list(CONTINUATIONS))
def test_continuation_closes_the_turn_once(family_name, toks):
    tok, family = toks[family_name], make_family(family_name, template_date="2025-08-05")
    for generated, expected in CONTINUATIONS[family_name]:
        got = family.continuation(tok, encode_generation(tok, generated), REVIEW)
        expected = expected.replace("{r}", REVIEW)
        assert tok.decode(got) == expected, generated
        assert got == encode_generation(tok, expected)


def test_continuation_needs_a_template_that_keeps_assistant_text(toks):
    tok = generic_chatml_tokenizer()
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'][:3]")
    with pytest.raises(FamilyError, match="verbatim"):
        make_family("generic").continuation(tok, [1, 2], REVIEW)
