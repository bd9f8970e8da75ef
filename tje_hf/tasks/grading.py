"""Answer extraction and grading: plain functions from generated text to a :class:`Grade`.

What lives here: stripping a reasoning segment from raw text, pulling the final answer out of the
answer text (integers, option letters, short text), and comparing it with the gold answer. What
does not: prompts, datasets and token ids (``tje_hf.tasks``, ``tje_hf.models.segments``).

Every grader returns ``Grade(answer, correct, reason)`` with ``reason`` one of ``"match"``,
``"mismatch"`` or ``"unparseable"``. When no answer can be found, ``answer`` and ``correct`` are
both ``None``: an unparseable output is a recorded outcome, never a silent ``False``.

The runner passes the answer segment (gpt-oss: the ``final`` channel text; Qwen3 Thinking: the
text after ``</think>``), but every grader first calls :func:`strip_reasoning`, so the raw
generation is graded the same way and a number inside the reasoning never counts.

Math-Verify is used where it fits, on AIME answers whose extracted span is not a plain integer
(``\\boxed{\\frac{84}{2}}``, ``\\boxed{42^\\circ}``, ``\\boxed{x = 42}``). It is not symmetric: the
gold answer always goes first. Its timeouts use ``signal.alarm``, which raises outside the main
thread, so they are switched off there (:func:`_math_verify_timeout`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

GradeReason = Literal["match", "mismatch", "unparseable"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Grade:
    """The graded outcome of one generation.

    ``answer`` is the normalised extracted answer (``"42"``, ``"C"``), or ``None`` when nothing
    could be extracted; ``correct`` is ``None`` exactly when ``answer`` is.
    """

    answer: str | None
    correct: bool | None
    reason: GradeReason

    def __post_init__(self) -> None:
        if self.reason not in ("match", "mismatch", "unparseable"):
            raise ValueError(f"Grade.reason = {self.reason!r}: must be 'match', 'mismatch' or 'unparseable'")
        if (self.answer is None) != (self.correct is None) or (self.reason == "unparseable") != (self.answer is None):
            raise ValueError(f"inconsistent Grade(answer={self.answer!r}, correct={self.correct!r}, "
                             f"reason={self.reason!r}): no answer <=> correct None <=> 'unparseable'")


UNPARSEABLE = Grade(answer=None, correct=None, reason="unparseable")


def _graded(answer: str, correct: bool) -> Grade:
    return Grade(answer=answer, correct=correct, reason="match" if correct else "mismatch")


# --------------------------------------------------------------------------------------------
# Reasoning segments

_HARMONY_FINAL = "<|channel|>final<|message|>"
_HARMONY_END = re.compile(r"<\|(?:return|end|call|start)\|>")
# gpt-oss text decoded with skip_special_tokens=True loses its markers but keeps the channel
# names: "analysisWe need ...assistantfinal42".
_HARMONY_BARE = re.compile(r"^\s*analysis.*?assistantfinal", re.DOTALL)


def strip_reasoning(text: str) -> str:
    """The answer part of a generation: reasoning removed, family markers and all.

    * harmony (gpt-oss): the content of the last ``<|channel|>final<|message|>`` up to the next
      ``<|return|>``/``<|end|>``/``<|call|>``/``<|start|>``; text with harmony channel markers but
      no final channel (cut off while reasoning) has no answer and gives ``""``. Marker-free
      harmony (``analysis...assistantfinal...``) is cut after the last ``assistantfinal``.
    * ``<think>`` (Qwen3): the text after the last ``</think>``; an opened but unclosed
      ``<think>`` gives ``""``. Qwen3 Thinking templates open ``<think>`` in the prompt, so the
      generated text may hold only the closing tag.
    * anything else is returned unchanged.
    """
    if _HARMONY_FINAL in text:
        answer = text.rsplit(_HARMONY_FINAL, 1)[1]
        return _HARMONY_END.split(answer, 1)[0]
    if "<|channel|>" in text:
        return ""
    bare = _HARMONY_BARE.match(text)
    if bare is not None:
        return text.rsplit("assistantfinal", 1)[1]
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return ""
    return text


# --------------------------------------------------------------------------------------------
# Extraction helpers

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# An integer not glued to a word or a decimal point; the sign is taken only when it is not a
# binary minus ("5-3" is 5 and 3, "= -2" is -2). Thousands separators: "1,000" and "1{,}000".
_INTEGER = re.compile(r"(?<![\w.])(-?)(\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)(?![\w])(?!\.\d)")
_ANSWER_IS = re.compile(r"\banswer\b\s*(?:is\b|:|=)\s*:?\s*", re.IGNORECASE)
_BOLD = re.compile(r"\*\*([^*\n]{1,40})\*\*")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathbf|mathrm|bf|mbox)\s*\{([^{}]*)\}")


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` (and ``\\fbox{...}``) in order, nested braces kept.

    An unclosed box (a generation cut off mid-box) is skipped.
    """
    out = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    out.append(text[start:i])
                    break
    return out


def _integers(text: str) -> list[int]:
    """Standalone integers in ``text``, in order (see ``_INTEGER``)."""
    values = []
    for match in _INTEGER.finditer(text):
        sign, digits = match.group(1), match.group(2)
        # A minus right after a digit, letter or closing bracket is a binary minus.
        if sign and match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] in ")]}"):
            sign = ""
        values.append(int(sign + digits.replace("{,}", "").replace(",", "")))
    return values


def _clean_span(span: str) -> str:
    """A boxed or bold span with TeX decoration removed: ``$``, ``\\text{}``, thin spaces,
    ``^\\circ``, a trailing full stop."""
    span = _LATEX_WRAPPERS.sub(r"\1", span)
    span = span.replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ")
    span = re.sub(r"\^\s*\{?\\circ\}?", "", span)
    return span.strip().rstrip(".").strip()


def integer_of(span: str) -> int | None:
    """``span`` as an integer when it is exactly one (after :func:`_clean_span`), else ``None``.
    ``"042"`` is 42, ``"1{,}000"`` is 1000, ``"-7"`` is -7."""
    cleaned = _clean_span(span).replace(" ", "")
    match = re.fullmatch(r"([+-]?)(\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)", cleaned)
    if match is None:
        return None
    return int(match.group(1) + match.group(2).replace("{,}", "").replace(",", ""))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def extract_integer_span(text: str, *, anywhere: bool = False) -> str | None:
    """The span holding the final integer answer, tried in this order (first rule that finds
    something wins; within a rule the last occurrence wins):

    1. the last ``\\boxed{...}`` (nested braces handled);
    2. the last "answer is 42" / "Answer: 42" / "final answer = 42" (the integer right after it);
    3. the last bold span that is an integer, ``**42**``;
    4. the last standalone integer in the final non-empty line (``anywhere=True``: in the whole
       text, for short answers where the number may be followed by a pleasantry).

    Rule 1 returns the raw box contents (possibly LaTeX); the others return an integer string.
    """
    boxes = boxed_contents(text)
    if boxes:
        return boxes[-1]
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        rest = text[match.end():].split("\n", 1)[0]
        rest = _clean_span(re.sub(r"^[\s*\\(\[{]+", "", rest))
        # The integer must end there: "answer is 12.5" or "answer is 12x" names no integer.
        found = re.match(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\w|[.,]\d)", rest.replace("{,}", ","))
        if found is not None:
            return str(integer_of(found.group(0)))
    for match in reversed(list(_BOLD.finditer(text))):
        value = integer_of(match.group(1))
        if value is not None:
            return str(value)
    values = _integers(text if anywhere else _last_line(text))
    return str(values[-1]) if values else None


# --------------------------------------------------------------------------------------------
# Math-Verify


def _math_verify_timeout() -> int | None:
    """Math-Verify's timeouts use ``signal.alarm``, which only works in the main thread: keep a
    5 s guard there and switch it off elsewhere (a worker thread would raise ``ValueError``)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_verify_equal(gold: str, span: str) -> tuple[bool, str] | None:
    """Whether the boxed ``span`` equals the integer ``gold`` according to Math-Verify.

    Returns ``(equal, parsed answer as text)``, or ``None`` when Math-Verify finds no expression.
    Gold is parsed with ``ExprExtractionConfig`` and the prediction with
    ``LatexExtractionConfig(boxed_match_priority=0)`` then ``ExprExtractionConfig`` (lighteval's
    AIME setup); ``verify(gold, pred)`` in that order, as it is not symmetric.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    timeout = _math_verify_timeout()
    gold_parsed = parse(gold, [ExprExtractionConfig()], parsing_timeout=timeout)
    pred_parsed = parse("\\boxed{" + span + "}", [LatexExtractionConfig(boxed_match_priority=0),
                                                  ExprExtractionConfig()], parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return None
    equal = bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    value = pred_parsed[0]
    # An integer-valued result is reported as that integer ("\frac{84}{2}" -> "42").
    if getattr(value, "is_Integer", False):
        return equal, str(int(value))
    return equal, str(pred_parsed[-1])


# --------------------------------------------------------------------------------------------
# Graders


def grade_aime(text: str, gold: str | int) -> Grade:
    """Grade an AIME answer (an integer 0-999) in ``text`` against ``gold``.

    Extraction is :func:`extract_integer_span` on :func:`strip_reasoning` of the text. A plain
    integer span, or one with an integer after its last ``=`` (``\\boxed{m+n=42}``), is compared
    as an integer (``"042"`` == 42); an integer outside 0-999 is a mismatch (no AIME answer lies
    outside it). Any other span (``\\frac{84}{2}``) goes to Math-Verify
    (:func:`math_verify_equal`); when Math-Verify finds no expression the output is unparseable.

    >>> grade_aime("so the answer is \\\\boxed{042}", "42")
    Grade(answer='42', correct=True, reason='match')
    """
    gold_value = _gold_integer(gold)
    span = extract_integer_span(strip_reasoning(text))
    if span is None:
        return UNPARSEABLE
    # "\\boxed{m + n = 42}" states the answer after its last "=".
    value = integer_of(span.rsplit("=", 1)[-1])
    if value is None:
        verdict = math_verify_equal(str(gold_value), span)
        if verdict is None:
            return UNPARSEABLE
        equal, answer = verdict
        return _graded(answer, equal)
    return _graded(str(value), 0 <= value <= 999 and value == gold_value)


def grade_integer(text: str, gold: str | int, *, anywhere: bool = True) -> Grade:
    """Grade a signed integer answer (built-in arithmetic, local integer tasks), no range.

    Extraction is :func:`extract_integer_span` (``anywhere=True`` by default: short answers like
    "3 + 5 = 8. Hope this helps!"); a boxed span must be a plain integer.

    >>> grade_integer("7 - 9 = -2", "-2")
    Grade(answer='-2', correct=True, reason='match')
    """
    gold_value = _gold_integer(gold)
    span = extract_integer_span(strip_reasoning(text), anywhere=anywhere)
    value = integer_of(span) if span is not None else None
    if value is None:
        return UNPARSEABLE
    return _graded(str(value), value == gold_value)


def _letter_patterns(letters: str) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    cls = f"[{letters}]"
    strong = re.compile(
        rf"\\boxed\s*\{{\s*(?:\\text\s*\{{)?\s*\(?({cls})\)?\s*\}}?\s*\}}"  # \boxed{C}, \boxed{\text{C}}
        rf"|\banswer\b\s*(?:is\b|:)?\s*(?:option\s+|choice\s+)?:?\s*[*$(\[]*\s*({cls})\b(?![-'])"  # Answer: C, the answer is (C)
        rf"|\b(?:option|choice)\s+({cls})\b\s+is\s+(?:the\s+)?correct"  # option C is correct
        rf"|\*\*\s*\(?({cls})\)?\s*\*\*",  # **C**, **(C)**
        re.IGNORECASE)
    paren = re.compile(rf"\(({cls})\)")
    alone = re.compile(rf"^\W*({cls})\W*$")
    return strong, paren, alone


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """The option letter (``"A"``...) chosen in ``text``, tried in this order:

    1. explicit forms, last occurrence wins: ``\\boxed{C}``, ``Answer: C``, ``the answer is (C)``,
       ``**Answer:** C``, ``option C is correct``, ``**C**`` (case-insensitive words, upper-case
       letter);
    2. the last parenthesised letter ``(C)`` (only when 1 finds nothing: a model listing the
       options "(A) ... (D)" would otherwise pick D);
    3. a final line that is just the letter (``C`` or ``C.``).
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices = {n_choices}: must be in [1, {len(LETTERS)}]")
    strong, paren, alone = _letter_patterns(LETTERS[:n_choices])
    hits = [m for m in strong.finditer(text) if _group(m).isupper()]
    if hits:
        return _group(hits[-1])
    hits = list(paren.finditer(text))
    if hits:
        return hits[-1].group(1)
    line = alone.match(_last_line(text))
    if line is not None and line.group(1).isupper():
        return line.group(1)
    return None


def _group(match: re.Match) -> str:
    return next(g for g in match.groups() if g is not None)


def grade_choice(text: str, gold: str, n_choices: int = 4) -> Grade:
    """Grade a multiple-choice answer: :func:`extract_choice` on the stripped text vs the gold letter.

    >>> grade_choice("<think>maybe (B)?</think>Answer: C", "C")
    Grade(answer='C', correct=True, reason='match')
    """
    gold_letter = gold.strip().upper()
    if len(gold_letter) != 1 or gold_letter not in LETTERS[:n_choices]:
        raise ValueError(f"gold = {gold!r}: expected one of the letters {LETTERS[:n_choices]}")
    letter = extract_choice(strip_reasoning(text), n_choices)
    if letter is None:
        return UNPARSEABLE
    return _graded(letter, letter == gold_letter)


def normalize_text(answer: str) -> str:
    """Lower case, TeX decoration and surrounding punctuation removed, whitespace collapsed."""
    answer = _clean_span(answer)
    answer = re.sub(r"\s+", " ", answer).strip().strip(".,;:!\"'`*").strip()
    return answer.casefold()


def grade_text(text: str, gold: str) -> Grade:
    """Grade a short free-text answer: the last ``\\boxed{...}``, else the text after the last
    "Answer:", else the final line; compared after :func:`normalize_text`, then, when the gold
    answer looks mathematical (a digit, ``\\``, ``^``, ``_``, ``=``, ``+``, ``*`` or ``/``), with
    Math-Verify, gold first."""
    answer_text = strip_reasoning(text)
    boxes = boxed_contents(answer_text)
    if boxes:
        answer = boxes[-1]
    else:
        hits = list(_ANSWER_IS.finditer(answer_text))
        answer = answer_text[hits[-1].end():].split("\n", 1)[0] if hits else _last_line(answer_text)
    answer = normalize_text(answer)
    if not answer:
        return UNPARSEABLE
    if answer == normalize_text(gold):
        return _graded(answer, True)
    # Only mathematical golds go to Math-Verify: it reads a word as a product of symbols, so
    # "Paris" would equal "Sirap".
    if not re.search(r"[\d\\^_=+*/]", gold):
        return _graded(answer, False)
    from math_verify import parse, verify

    timeout = _math_verify_timeout()
    gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${answer}$", parsing_timeout=timeout)
    equal = bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    return _graded(answer, equal)


def _gold_integer(gold: str | int) -> int:
    value = gold if isinstance(gold, int) else integer_of(str(gold))
    if value is None:
        raise ValueError(f"gold = {gold!r}: expected an integer")
    return value


def grade_answer(text: str, gold: str, answer_type: str, *, choices: Sequence[str] | None = None,
                 integer_range: Literal["aime", "any"] = "any") -> Grade:
    """Dispatch on ``answer_type`` ("integer", "choice", "text"); ``integer_range="aime"`` uses
    :func:`grade_aime`, ``"any"`` :func:`grade_integer`."""
    if answer_type == "integer":
        return grade_aime(text, gold) if integer_range == "aime" else grade_integer(text, gold)
    if answer_type == "choice":
        return grade_choice(text, gold, len(choices) if choices else 4)
    if answer_type == "text":
        return grade_text(text, gold)
    raise ValueError(f"answer_type = {answer_type!r}: must be 'integer', 'choice' or 'text'")
