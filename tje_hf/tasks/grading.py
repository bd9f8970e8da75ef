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

How the final answer is read (every grader, in this order; the answer is what a careful reader
takes from the text, and what such a reader cannot decide is unparseable, never a guess):

1. Reasoning is removed (:func:`strip_reasoning`).
2. Boxes: every closed, non-empty ``\\boxed{...}``/``\\fbox{...}`` is an explicit answer
   statement; an empty box (an echoed "put your final answer within \\boxed{}") is ignored; a
   box cut off mid-way is dropped with everything after it.
3. LaTeX is unwrapped before anything is stripped: ``\\text{}``, ``\\textbf{}``, ``\\mathbf{}``,
   ``\\mathrm{}``... give their content; ``\\( \\)``, ``\\[ \\]`` and ``$`` go; ``\\$`` is a
   currency sign and goes too; ``{,}`` and ``\\,`` between digits are thousands separators;
   ``^\\circ`` goes (:func:`unwrap_latex`).
4. Explicit answer statements: a box; "the answer is / answer: / final answer = ..." (also
   "the correct/best answer is", "### Final Answer" with the value on the next line); "42 is the
   answer"; for options also "the correct option/choice is C", "I choose / pick / select / go
   with C", "option C is correct", "(C) is the correct answer". The value is read right after
   the statement: an integer (commas, leading zeros, a unit word allowed), an option letter in
   either case ("c", "(c)", "option C", "C)", "C."; a lower-case "a" only when nothing follows
   it, so "the answer is a subtle one" names no option), or, when the options are known, the
   text of one option. Numbers and letters later in the explanation do not count.
5. With several explicit statements, the last one wins (a model revising itself: also "Hmm,
   actually, it's C." or "Correction: it is 42." when a lone value ends that clause). A statement
   that names two different candidates side by side ("12 or 15", "104, 140", "either B or C",
   ``\\boxed{12} or \\boxed{15}``, a restated option list, a letter next to another option's
   text) is unparseable, and so is one whose value is not of the task's kind (12.5 for an
   integer, a letter outside the options).
6. Without an explicit statement: integers: the last bold integer ending a line (``**33**``),
   else the final line (``anywhere=True``: the last line holding an integer), read at its value
   positions (after ``=``, "is", "equals", "gives", "total"...; "is 12 + 21" is not one) when
   they agree, else its only integer; options: a line that is only the choice ("C", "(C)",
   "**C**", "Option C"), a bold letter ending a line ("It is **C**."), or the start of the final
   line ("C. 10^-8 eV", "(C) ...", "C) ..."), the last of these winning; a line of a restated
   option list ("(A) .. (B) ..", or one of consecutive lines "A) .." "B) ..") never counts; a
   one-line output that is exactly one option's text; text: a one-line output of at most five
   words.
7. Anything else is unparseable. AIME answers that are not plain integers (``\\frac{408}{2}``)
   go to Math-Verify, gold first; an integer outside 0-999 is read as stated and is a mismatch.

Math-Verify is used where it fits, on AIME answers whose extracted span is not a plain integer
(``\\boxed{\\frac{84}{2}}``). It is not symmetric: the gold answer always goes first. Its
timeouts use ``signal.alarm``, which raises outside the main thread, so they are switched off
there (:func:`_math_verify_timeout`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
# LaTeX, boxes and the plain text that statements are read from

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# \text{...} and friends, whose argument may hold one level of braces (\textbf{10^{-4}}).
_WRAPPER = re.compile(r"\\(?:text(?:bf|it|rm|tt|sf|normal|up)?|math(?:bf|rm|it|sf|tt|bb|normal)|bf|it|rm|mbox|"
                      r"emph|operatorname|boldsymbol|underline)\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_SUBS = [
    (re.compile(r"\\\$"), ""),  # an escaped dollar is a currency sign: "\$15" is 15
    (re.compile(r"\$"), ""),
    (re.compile(r"\\[()\[\]]"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"(?<=\d)\\[,;!]\s*(?=\d{3}(?!\d))"), ""),  # 1\,024
    (re.compile(r"\^\s*\{?\\circ\}?|\\(?:left|right|displaystyle)\b|\\!"), ""),
    (re.compile(r"\\(?:quad|qquad)\b|\\[,;: ]|~"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[dt]frac\b"), r"\\frac"),
    (re.compile("\u2212"), "-"),  # the Unicode minus sign
]
# One private-use character stands for each box in the plain text (see _plain).
_PLACEHOLDER_BASE = 0xE000
_PLACEHOLDER = re.compile("[\ue000-\uf8ff]")


def unwrap_latex(text: str) -> str:
    """``text`` with LaTeX decoration replaced by what it shows (rule 3 of the module doc):
    wrappers (``\\textbf{33}``) unwrapped first, then math delimiters, spacing and degree signs
    removed. ``\\frac`` and other mathematics are kept for Math-Verify."""
    previous = None
    while previous != text:
        previous, text = text, _WRAPPER.sub(r"\1", text)
    for pattern, replacement in _LATEX_SUBS:
        text = pattern.sub(replacement, text)
    return text


def _box_spans(text: str) -> list[tuple[int, int, str | None]]:
    """``(start, end, contents)`` of each top-level box in order; a box cut off mid-way is the
    last one, with ``contents`` None and ``end`` the end of the text."""
    spans: list[tuple[int, int, str | None]] = []
    pos = 0
    for match in _BOXED.finditer(text):
        if match.start() < pos:  # nested inside the previous box
            continue
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                spans.append((match.start(), i + 1, text[match.end():i]))
                pos = i + 1
                break
        else:
            spans.append((match.start(), len(text), None))
            break
    return spans


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` (and ``\\fbox{...}``) in order, nested braces kept.

    An unclosed box (a generation cut off mid-box) is skipped.
    """
    return [contents for _, _, contents in _box_spans(text) if contents is not None]


def _plain(text: str) -> tuple[str, list[str]]:
    """``text`` ready for reading statements, and the raw contents of its boxes.

    Each closed, non-empty box becomes one placeholder character (``chr(0xE000 + i)`` for box
    ``i``), an empty box is dropped, a box cut off mid-way is dropped with all that follows, then
    the rest is unwrapped (:func:`unwrap_latex`).
    """
    text = _PLACEHOLDER.sub("", text)
    parts, boxes, pos = [], [], 0
    for start, end, contents in _box_spans(text):
        parts.append(text[pos:start])
        pos = end
        if contents is not None and unwrap_latex(contents).strip():
            parts.append(chr(_PLACEHOLDER_BASE + len(boxes)))
            boxes.append(contents)
    parts.append(text[pos:])
    return unwrap_latex("".join(parts)), boxes


def _box_of(placeholder: str, boxes: list[str]) -> str:
    return boxes[ord(placeholder) - _PLACEHOLDER_BASE]


# Statement values: a sentinel for "this was no answer statement after all" ("the answer is not
# 17", "answer with just the number"), as opposed to None, "a statement whose answer cannot be
# read" (two candidates, 12.5 for an integer, a letter out of range).
_SKIP = object()
_Candidate = tuple[int, object]  # (position in the plain text, value or None)

# "are two boxes one statement?": only spaces, commas or "or"/"and" between them.
_BOX_GAP = re.compile(r"[\s,;/]*(?:(?:or|and)\b[\s,;/]*)?", re.IGNORECASE)


def _box_candidates(plain: str, boxes: list[str], read: Callable[[str], object]) -> list[_Candidate]:
    """One candidate per box, its value ``read(contents)``; a box stated next to the previous one
    with another value ("\\boxed{12} or \\boxed{15}") gives ``None``."""
    found: list[_Candidate] = []
    previous_end, previous_value = -1, None
    for match in _PLACEHOLDER.finditer(plain):
        value = read(_box_of(match.group(), boxes))
        beside = previous_end >= 0 and _BOX_GAP.fullmatch(plain, previous_end, match.start()) is not None
        found.append((match.start(), None if beside and value != previous_value else value))
        previous_end, previous_value = match.end(), value
    return found


def _last(candidates: list[_Candidate]) -> object:
    """The value of the last candidate by position (the model's final word)."""
    return max(candidates, key=lambda candidate: candidate[0])[1]


_SENTENCE_END = re.compile(r"\n|[.!?;](?=\s|$)")


def _sentence(text: str, pos: int) -> str:
    """``text`` from ``pos`` to the end of its sentence or line."""
    end = _SENTENCE_END.search(text, pos)
    return text[pos:end.start() if end else len(text)]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# A revision of an earlier statement: "Hmm, actually, it's C.", "Correction: it is 42." It states
# a value only when a lone value ends its clause right after it; one that names no single value of
# the task's kind ("it's C or D", "it's 12.5") makes it unparseable, like any statement; anything
# else ("actually, it's a bit subtler", "actually, it's 6 times 7") is not a revision.
_REVISION = re.compile(r"\b(?:actually|correction|on\s+second\s+thought)\b[\s,:;!.\u2014\u2013-]*"
                       r"(?:it|that|this)(?:'s|\u2019s|\s+is|\s+should\s+be|\s+must\s+be)\b", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[\s*)\]]*(?:[.!;,\n]|$)")


# --------------------------------------------------------------------------------------------
# Integers

_NUM = r"[+-]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = re.compile(_NUM)
# An integer not glued to a word or a decimal point; the sign is taken only when it is not a
# binary minus ("5-3" is 5 and 3, "= -2" is -2). Thousands separators: "1,000" and "1{,}000".
_INTEGER = re.compile(r"(?<![\w.])(-?)(\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)(?![\w])(?!\.\d)")
_VERB = r"(?:(?:is|are|was|would\s+be|should\s+be|must\s+be|will\s+be|might\s+be)\b|[:=])"
_ANSWER_MARK = re.compile(rf"\banswers?\b(?:\s*\*+)?\s*{_VERB}|\bfinal\s+answer\b[\s*#:]*\n", re.IGNORECASE)
_IS_THE_ANSWER = re.compile(rf"(?<![\w.,])({_NUM})\s+is\s+(?:the|my|our)\s+(?:final\s+|correct\s+)?answer\b",
                            re.IGNORECASE)
_LEAD = re.compile(r"(?:[\s*_:#>(\[]+|(?:therefore|thus|hence|then|simply|just|exactly|clearly|indeed|actually|"
                   r"probably|likely|either|approximately|about|roughly)\b)*", re.IGNORECASE)
# An arithmetic operator with an operand after it ("12 + 21", "2^{10}"; "**" is bold, not a product).
_OPERATOR = r"\s*(?:[-+/×·^]|\*(?!\*)|\\(?:times|cdot)\b)\s*[\d(\[{\\]"
_OPERATOR_AT = re.compile(_OPERATOR)
_NOT_INTEGER = re.compile(r"[.,/]\d|\^|[A-Za-z]")  # 12.5, 3/4, 2^10, 12x
_ALSO = re.compile(rf"[\s*)\]]*(?:,|;|/|\bor\b|\band\b)\s*(?:maybe\s+|possibly\s+|perhaps\s+)?({_NUM})"
                   rf"(?!\w|\.\d|{_OPERATOR}|\s*=)", re.IGNORECASE)
_EQUALS_VALUE = re.compile(rf"[^=\n]*=\s*({_NUM})(?!\w|\.\d|{_OPERATOR})")
_VALUE_AT = re.compile(rf"(?:=|≈|\b(?:is|are|was|were|equals?|gives?|gets?|got|obtains?|obtained|makes?|yields?|"
                       rf"becomes?|totals?|total\s+of|comes\s+to)\b)[\s*]*({_NUM})(?!\w|\.\d|{_OPERATOR})",
                       re.IGNORECASE)
_BOLD_INTEGER_END = re.compile(rf"\*\*\s*({_NUM})\s*\*\*[\s.!]*$")
_SPAN_INTEGER = re.compile(rf"({_NUM})(?:\s*[%°]|\s+[A-Za-z][A-Za-z\s.]*)?")  # after _clean_span


def _int(digits: str) -> int:
    return int(digits.replace(",", ""))


def _integers(text: str) -> list[int]:
    """Standalone integers in ``text``, in order (see ``_INTEGER``), except negated ones ("not 17")."""
    values = []
    for match in _INTEGER.finditer(text):
        if text[max(0, match.start() - 4):match.start()].lower() == "not ":
            continue
        sign, digits = match.group(1), match.group(2)
        # A minus right after a digit, letter or closing bracket is a binary minus.
        if sign and match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] in ")]}"):
            sign = ""
        values.append(int(sign + digits.replace("{,}", "").replace(",", "")))
    return values


def _clean_span(span: str) -> str:
    """A boxed or bold span with TeX decoration removed (:func:`unwrap_latex`) and a trailing
    full stop dropped."""
    span = unwrap_latex(span).replace("\\ ", " ")
    return span.strip().rstrip(".").strip()


def integer_of(span: str) -> int | None:
    """``span`` as an integer when it is exactly one (after :func:`_clean_span`), else ``None``.
    ``"042"`` is 42, ``"1{,}000"`` is 1000, ``"-7"`` is -7."""
    cleaned = _clean_span(span).replace(" ", "")
    match = re.fullmatch(r"([+-]?)(\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)", cleaned)
    if match is None:
        return None
    return int(match.group(1) + match.group(2).replace("{,}", "").replace(",", ""))


def _read_span(span: str) -> tuple[int | None, bool]:
    """``(value, ambiguous)`` of a boxed span: ``"042"``, ``"204 minutes"``, ``"m+n=116"`` and
    ``"60^\\circ"`` are integers; ``"12, 15"`` and ``"12 \\text{ or } 15"`` are ambiguous; anything
    else (``"\\frac{408}{2}"``) is ``(None, False)``, for Math-Verify."""
    text = re.sub(r"^\(?[A-E]\)\s+(?=\d)", "", _clean_span(span))  # AMC style: "(C) 204"
    numbers = {_int(n) for n in _NUMBER.findall(text)}
    separated = re.fullmatch(rf"{_NUM}(?:\s*(?:,|;|/|\bor\b|\band\b)\s*{_NUM})+", text, re.IGNORECASE)
    if len(numbers) > 1 and (separated or re.search(r"\bor\b", text, re.IGNORECASE)):
        return None, True
    text = text.rsplit("=", 1)[-1]  # "m + n = 116" states the answer after its last "="
    match = _SPAN_INTEGER.fullmatch(text)
    return (_int(match.group(1)) if match else None), False


def _integer_after(plain: str, pos: int) -> object:
    """The integer stated right after an answer marker: an integer string, ``None`` (a number that
    is not one integer answer: 12.5, "12 or 15") or ``_SKIP`` (no number: "not 17", a box)."""
    pos = _LEAD.match(plain, pos).end()
    number = _NUMBER.match(plain, pos)
    if number is None:
        return _SKIP
    end = number.end()
    if _OPERATOR_AT.match(plain, end):
        # "the answer is 12 + 21 = 33": the value after the "=" that ends the expression.
        result = _EQUALS_VALUE.match(plain, end)
        return str(_int(result.group(1))) if result else None
    if _NOT_INTEGER.match(plain, end):
        return None
    also = _ALSO.match(plain, end)
    if also is not None and _int(also.group(1)) != _int(number.group()):
        return None
    return str(_int(number.group()))


def _integer_statements(plain: str, boxes: list[str]) -> list[_Candidate]:
    """Explicit integer statements: boxes (raw contents, ``None`` when ambiguous), "answer is 42",
    "42 is the answer"."""
    found = _box_candidates(plain, boxes, lambda span: None if _read_span(span)[1] else span)
    for match in _ANSWER_MARK.finditer(plain):
        value = _integer_after(plain, match.end())
        if value is not _SKIP:
            found.append((match.start(), value))
    found += [(m.start(), str(_int(m.group(1)))) for m in _IS_THE_ANSWER.finditer(plain)]
    for match in _REVISION.finditer(plain):
        number = _INTEGER.match(plain, _LEAD.match(plain, match.end()).end())
        if number is not None and _CLAUSE_END.match(plain, number.end()):
            found.append((match.start(), str(_int(number.group(1) + number.group(2)))))
        elif _integer_after(plain, match.end()) is None:  # "12.5", "12 or 15": no single integer
            found.append((match.start(), None))
    return found


def _line_integer(line: str) -> str | None:
    """The integer a line states: its value positions ("= 33", "is 33") when they agree, else its
    only integer; ``None`` when it holds several candidates."""
    values = set()
    for match in _VALUE_AT.finditer(line):
        also = _ALSO.match(line, match.end())
        if also is not None and _int(also.group(1)) != _int(match.group(1)):
            return None
        values.add(_int(match.group(1)))
    if not values:
        values = set(_integers(line))
    return str(values.pop()) if len(values) == 1 else None


def _integer_fallback(plain: str, anywhere: bool) -> str | None:
    """Without an explicit statement: the last bold integer ending a line, else the final line
    (``anywhere``: the last line holding an integer) read by :func:`_line_integer`."""
    lines = _lines(plain)
    bold = [match.group(1) for match in map(_BOLD_INTEGER_END.search, lines) if match is not None]
    if bold:
        return str(_int(bold[-1]))
    if anywhere:
        lines = [line for line in lines if _integers(line)]
    return _line_integer(lines[-1]) if lines else None


def extract_integer_span(text: str, *, anywhere: bool = False) -> str | None:
    """The span holding the final integer answer (rules 2-6 of the module doc).

    The last explicit statement wins: a box gives its raw contents (possibly LaTeX, for
    Math-Verify), "answer is 42" / "Answer: 42" / "42 is the answer" an integer string. Without
    one: the last bold integer ending a line, else the integer stated by the final line
    (``anywhere=True``: by the last line holding an integer, for short answers followed by a
    pleasantry). ``None`` when there is no answer or two candidates ("12 or 15").
    """
    plain, boxes = _plain(text)
    statements = _integer_statements(plain, boxes)
    if statements:
        value = _last(statements)
        return value if isinstance(value, str) else None
    return _integer_fallback(plain, anywhere)


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
# Integer graders


def grade_aime(text: str, gold: str | int) -> Grade:
    """Grade an AIME answer (an integer 0-999) in ``text`` against ``gold``.

    Extraction is :func:`extract_integer_span` on :func:`strip_reasoning` of the text. A span that
    reads as one integer (``"042"``, ``"204 minutes"``, ``"m+n=116"``) is compared as an integer;
    an integer outside 0-999 is a mismatch (no AIME answer lies outside it); a span naming two
    values (``"12, 15"``) is unparseable. Any other span holding mathematics
    (``\\frac{84}{2}``) goes to Math-Verify (:func:`math_verify_equal`); when Math-Verify finds no
    expression, or the span is a word, the output is unparseable.

    >>> grade_aime("so the answer is \\\\boxed{042}", "42")
    Grade(answer='42', correct=True, reason='match')
    """
    gold_value = _gold_integer(gold)
    span = extract_integer_span(strip_reasoning(text))
    if span is None:
        return UNPARSEABLE
    value, ambiguous = _read_span(span)
    if ambiguous:
        return UNPARSEABLE
    if value is None:
        verdict = math_verify_equal(str(gold_value), span) if re.search(r"[\d\\]", span) else None
        if verdict is None:
            return UNPARSEABLE
        equal, answer = verdict
        return _graded(answer, equal)
    return _graded(str(value), 0 <= value <= 999 and value == gold_value)


def grade_integer(text: str, gold: str | int, *, anywhere: bool = True) -> Grade:
    """Grade a signed integer answer (built-in arithmetic, local integer tasks), no range.

    Extraction is :func:`extract_integer_span` (``anywhere=True`` by default: short answers like
    "3 + 5 = 8. Hope this helps!"); a boxed span must read as one integer.

    >>> grade_integer("7 - 9 = -2", "-2")
    Grade(answer='-2', correct=True, reason='match')
    """
    gold_value = _gold_integer(gold)
    span = extract_integer_span(strip_reasoning(text), anywhere=anywhere)
    value = _read_span(span)[0] if span is not None else None
    if value is None:
        return UNPARSEABLE
    return _graded(str(value), value == gold_value)


# --------------------------------------------------------------------------------------------
# Option letters

_CHOICE_MARK = re.compile(
    rf"\banswers?\b(?:\s*\*+)?\s*{_VERB}"  # the (correct/final/best) answer is, Answer:
    rf"|\b(?:final|correct|right|best|my)\s+(?:option|choice|letter)\b(?:\s*\*+)?\s*{_VERB}"
    r"|\b(?:I|let\s+me|let's|we)(?:\s*(?:'ll|'d|’ll|’d|will|would|shall))?\s+(?:choose|pick|select|go\s+with|opt\s+for)\b"
    r"|\bfinal\s+answer\b[\s*#:]*\n",  # a "Final Answer" heading, the choice on the next line
    re.IGNORECASE)
# Hedges and filler between a marker and the letter: "Answer: I think it is option C".
_HEDGE = re.compile(r"(?:[\s*_:#>]+|(?:I\s+(?:think|believe|guess|would\s+say)|(?:it|this|that)(?:\s+is|'s|’s|"
                    r"\s+must\s+be|\s+should\s+be|\s+would\s+be)|probably|likely|most\s+likely|definitely|clearly|"
                    r"either|then|therefore|thus|option|choice|letter)\b)*", re.IGNORECASE)
_LETTER_AT = re.compile(r"\(([A-Za-z])\)|([A-Za-z])(?![\w'’-])")
# "option C is correct", "(C) is the correct answer", "C is correct"
_LETTER_IS = re.compile(r"(?:\b(?i:option|choice)\s+\(?([A-Za-z])\)?|\(([A-Za-z])\)|(?<![\w(])([A-Z]))(?![\w'’-])"
                        r"\s+(?i:is\s+(?:the\s+)?(?:correct|right|best|answer)\b)")
# Another option named beside the chosen one: "B or C", "A, B", "either B or C".
_OTHER_LETTER = re.compile(r"(?:,|/|&|\bor\b|\band\b)\s*(?:(?i:option|choice)\s+)?(?:\(([A-Za-z])\)|([A-Za-z]))"
                           r"(?![\w'’-])", re.IGNORECASE)
# A clause after the chosen letter that may mention other options without choosing them.
_CLAUSE = re.compile(r"\b(?:since|because|as|which|while|whereas|but|not|rather\s+than|over|instead\s+of|unlike|"
                     r"compared\s+(?:to|with))\b", re.IGNORECASE)
_LIST_MARK = re.compile(r"\(([A-Z])\)|(?<![\w(])([A-Z])\)")
_LINE_MARK = re.compile(r"[\s*#>_-]*\(?([A-Z])(?:\)|[.:](?=\s))")
_LINE_ONLY = re.compile(r"[\s*#>_-]*(?:(?i:option|choice)\s+)?\(?([A-Z])\)?[\s*.!:)]*")
_LINE_START = re.compile(r"[\s*#>_-]*(?:(?i:option|choice)\s+)?(?:\(([A-Z])\)|([A-Z])[.):](?=\s|$))")
_BOLD_LETTER_END = re.compile(r"\*\*\s*\(?([A-Z])\)?\s*\*\*[\s.!]*$")


def _group(match: re.Match) -> str:
    return next(g for g in match.groups() if g is not None)


def _option_key(text: str) -> str:
    """Option text for comparison: unwrapped, without braces, spaces and emphasis, lower case."""
    text = re.sub(r"[{}\s*_`\"']", "", unwrap_latex(text).replace("\\ ", " "))
    return text.strip(".,;:").casefold()


def _option_of(text: str, choices: Sequence[str] | None) -> str | None:
    """The letter of the one option whose text ``text`` is, else ``None``."""
    if not choices or not _option_key(text):
        return None
    hits = [LETTERS[i] for i, choice in enumerate(choices) if _option_key(choice) == _option_key(text)]
    return hits[0] if len(hits) == 1 else None


def _letter_of(match: re.Match, letters: str, text: str) -> object:
    """The option a ``_LETTER_AT``/``_OTHER_LETTER`` match names: its upper-case letter, ``None``
    for an upper-case or bracketed letter outside the options ("Answer: E"), ``_SKIP`` for a
    lower-case letter that is a word ("the answer is a subtle one")."""
    bracketed, bare = match.group(1), match.group(2)
    if bracketed is not None:
        return bracketed.upper() if bracketed.upper() in letters else None
    if bare.isupper():
        return bare if bare in letters else None
    if bare.upper() not in letters:
        return _SKIP
    following = text[match.end():match.end() + 1]
    if bare in "ai" and following and following not in ".),;:!?*\n":
        return _SKIP
    return bare.upper()


def _checked_letter(text: str, end: int, letter: str, letters: str, choices: Sequence[str] | None) -> str | None:
    """``letter`` unless the rest of its sentence names another option: "B or C", a restated
    list "(A) .. (B) .. (C)", or the text of another option ("C) 3" where 3 is option D)."""
    rest = _CLAUSE.split(_sentence(text, end), 1)[0]  # "(C), since (A) and (B) are too small"
    for match in _OTHER_LETTER.finditer(rest):
        other = _letter_of(match, letters, rest)
        if isinstance(other, str) and other != letter:
            return None
    if len({_group(m) for m in _LIST_MARK.finditer(rest)} - {letter}) >= 2:
        return None
    named = _option_of(rest.lstrip(" ).:-–—*"), choices)
    return None if named is not None and named != letter else letter


def _letter_after(text: str, pos: int, letters: str, choices: Sequence[str] | None) -> object:
    """The option stated at ``pos`` (after an answer marker, or a box's contents): a letter,
    ``None`` (no readable single option) or ``_SKIP`` (not an option at all; a box placeholder)."""
    pos = _HEDGE.match(text, pos).end()
    if _PLACEHOLDER.match(text, pos):
        return _SKIP
    match = _LETTER_AT.match(text, pos)
    letter = _letter_of(match, letters, text) if match is not None else _SKIP
    if isinstance(letter, str):
        return _checked_letter(text, match.end(), letter, letters, choices)
    if letter is None:
        return None
    named = _option_of(_sentence(text, pos), choices)
    return named if named is not None else _SKIP


def _box_letter(span: str, letters: str, choices: Sequence[str] | None) -> str | None:
    value = _letter_after(unwrap_latex(span), 0, letters, choices)
    return value if isinstance(value, str) else None


def _choice_statements(plain: str, boxes: list[str], letters: str,
                       choices: Sequence[str] | None) -> list[_Candidate]:
    """Explicit choices: boxes, "the answer is C", "the correct option is C", "I choose C",
    "option C is correct"."""
    found = _box_candidates(plain, boxes, lambda span: _box_letter(span, letters, choices))
    for match in _CHOICE_MARK.finditer(plain):
        value = _letter_after(plain, match.end(), letters, choices)
        if value is not _SKIP:
            found.append((match.start(), value))
    for match in _LETTER_IS.finditer(plain):
        if _group(match).upper() in letters:
            found.append((match.start(), _group(match).upper()))
    for match in _REVISION.finditer(plain):
        letter = _LETTER_AT.match(plain, _HEDGE.match(plain, match.end()).end())
        value = _letter_of(letter, letters, plain) if letter is not None else None
        if isinstance(value, str) and _CLAUSE_END.match(plain, letter.end()):
            found.append((match.start(), value))
        elif _letter_after(plain, match.end(), letters, choices) is None:  # "C or D": no single option
            found.append((match.start(), None))
    return found


def _in_option_list(lines: list[str], i: int) -> bool:
    """Whether line ``i`` restates options: it names two options "(A) .. (B) ..", or it starts
    with an option marker ("C) ..", "C. ..") next to another line that starts with one."""
    if len({_group(m) for m in _LIST_MARK.finditer(lines[i])}) >= 2:
        return True
    mark = _LINE_MARK.match(lines[i])
    if mark is None:
        return False
    for neighbour in lines[max(0, i - 1):i] + lines[i + 1:i + 2]:
        other = _LINE_MARK.match(neighbour)
        if other is not None and other.group(1) != mark.group(1):
            return True
    return False


def _line_choice(line: str, final: bool, letters: str, choices: Sequence[str] | None) -> object:
    """The choice a line states at an answer position: the line is only the choice, ends with a
    bold letter, or (the final line) starts with it; else ``_SKIP``."""
    match = _LINE_ONLY.fullmatch(line) or _BOLD_LETTER_END.search(line)
    if match is not None:
        return match.group(1) if match.group(1) in letters else _SKIP
    match = _LINE_START.match(line) if final else None
    if match is not None and _group(match) in letters:
        return _checked_letter(line, match.end(), _group(match), letters, choices)
    return _SKIP


def _choice_fallback(plain: str, letters: str, choices: Sequence[str] | None) -> str | None:
    """Without an explicit statement: a one-line output that is an option's text, else the last
    answer-position line (:func:`_line_choice`) outside restated option lists."""
    lines = _lines(plain)
    if len(lines) == 1 and _option_of(lines[0], choices) is not None:
        return _option_of(lines[0], choices)
    found = None
    for i, line in enumerate(lines):
        if _in_option_list(lines, i):
            continue
        value = _line_choice(line, i == len(lines) - 1, letters, choices)
        if value is not _SKIP:
            found = value
    return found


def extract_choice(text: str, n_choices: int = 4, choices: Sequence[str] | None = None) -> str | None:
    """The option letter (``"A"``...) chosen in ``text`` (rules 2-6 of the module doc).

    1. explicit statements, the last one winning: ``\\boxed{C}``, ``Answer: C``, ``the answer is
       (c)``, ``the correct option is C``, ``I choose option C``, ``option C is correct``; with
       ``choices`` (the option texts, in order) also the text of one option ("The answer is
       10^-4 eV");
    2. else the last line that is only the choice ("C", "(C)", "**C**", "Option C"), or ends
       with a bold letter, or, for the final line, starts with it ("C. 10^-8 eV"); restated
       option lists do not count; a one-line output that is one option's text.

    Two options side by side, a restated list in the answer statement, or a letter outside the
    options give ``None``. ``n_choices`` is ``len(choices)`` when ``choices`` is given.
    """
    if choices:
        n_choices = len(choices)
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices = {n_choices}: must be in [1, {len(LETTERS)}]")
    letters = LETTERS[:n_choices]
    plain, boxes = _plain(text)
    statements = _choice_statements(plain, boxes, letters, choices)
    if statements:
        value = _last(statements)
        return value if isinstance(value, str) else None
    return _choice_fallback(plain, letters, choices)


def grade_choice(text: str, gold: str, n_choices: int = 4, choices: Sequence[str] | None = None) -> Grade:
    """Grade a multiple-choice answer: :func:`extract_choice` on the stripped text vs the gold letter.

    ``choices`` (the option texts in prompt order), when given, lets an answer that names an
    option by its text count, and sets ``n_choices``.

    >>> grade_choice("<think>maybe (B)?</think>Answer: C", "C")
    Grade(answer='C', correct=True, reason='match')
    """
    n = len(choices) if choices else n_choices
    gold_letter = gold.strip().upper()
    if len(gold_letter) != 1 or gold_letter not in LETTERS[:n]:
        raise ValueError(f"gold = {gold!r}: expected one of the letters {LETTERS[:n]}")
    letter = extract_choice(strip_reasoning(text), n, choices)
    if letter is None:
        return UNPARSEABLE
    return _graded(letter, letter == gold_letter)


# --------------------------------------------------------------------------------------------
# Text answers

_TEXT_END = re.compile(r"\n|[.!?;](?=\s|$)|,?\s+(?:since|because|which)\b", re.IGNORECASE)


def normalize_text(answer: str) -> str:
    """Lower case, TeX decoration and surrounding punctuation removed, whitespace collapsed."""
    answer = _clean_span(answer)
    answer = re.sub(r"\s+", " ", answer).strip().strip(".,;:!\"'`*").strip()
    return answer.casefold()


def _text_after(plain: str, pos: int) -> object:
    """The text answer stated at ``pos``: up to the end of its sentence or a "since/because"
    clause; ``None`` for "either X or Y"; ``_SKIP`` when nothing (or a box) follows."""
    pos = re.compile(r"[\s*_:#>]*").match(plain, pos).end()
    if _PLACEHOLDER.match(plain, pos):
        return _SKIP
    end = _TEXT_END.search(plain, pos)
    span = plain[pos:end.start() if end else len(plain)]
    if re.match(r"either\b", span, re.IGNORECASE):
        return None
    return normalize_text(span) or _SKIP


def _text_answer(text: str) -> str | None:
    """The text answer: the last explicit statement (box, "answer is ...", "Answer: ..."), else a
    one-line output of at most five words."""
    plain, boxes = _plain(text)
    found = _box_candidates(plain, boxes, lambda span: normalize_text(span) or None)
    for match in _ANSWER_MARK.finditer(plain):
        value = _text_after(plain, match.end())
        if value is not _SKIP:
            found.append((match.start(), value))
    if found:
        value = _last(found)
        return value if isinstance(value, str) else None
    lines = _lines(plain)
    if len(lines) == 1 and len(lines[0].split()) <= 5:
        return normalize_text(lines[0]) or None
    return None


def grade_text(text: str, gold: str) -> Grade:
    """Grade a short free-text answer: the last explicit statement (``\\boxed{...}``, "the answer
    is ...", "Answer: ..."), else a bare one-line answer; compared after :func:`normalize_text`,
    then, when the gold answer looks mathematical (a digit, ``\\``, ``^``, ``_``, ``=``, ``+``,
    ``*`` or ``/``), with Math-Verify, gold first."""
    answer = _text_answer(strip_reasoning(text))
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
    :func:`grade_aime`, ``"any"`` :func:`grade_integer`; ``choices`` go to :func:`grade_choice`."""
    if answer_type == "integer":
        return grade_aime(text, gold) if integer_range == "aime" else grade_integer(text, gold)
    if answer_type == "choice":
        return grade_choice(text, gold, len(choices) if choices else 4, choices)
    if answer_type == "text":
        return grade_text(text, gold)
    raise ValueError(f"answer_type = {answer_type!r}: must be 'integer', 'choice' or 'text'")
