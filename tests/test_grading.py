"""Answer extraction and grading: tables of realistic outputs, each row saying what it covers."""

from __future__ import annotations

import threading

import pytest

from tje_hf.tasks.grading import (
    Grade,
    boxed_contents,
    extract_choice,
    extract_integer_span,
    grade_aime,
    grade_answer,
    grade_choice,
    grade_integer,
    grade_text,
    strip_reasoning,
    unwrap_latex,
)

HARMONY = ("<|channel|>analysis<|message|>We need the number of ... Let's test 17: fails. Try 204: works."
           "<|end|><|start|>assistant<|channel|>final<|message|>{final}<|return|>")
QWEN3 = ("Okay, let me think. If the speed is 3 km/h the walk takes 17 minutes... no, that gives 17, "
         "which contradicts the second condition. So the answer is \\boxed{{17}}? No.\n</think>\n\n{final}")


# --------------------------------------------------------------------------------------------
# Reasoning segments


@pytest.mark.parametrize("text, answer", [
    # harmony: only the final channel counts, up to its end marker
    (HARMONY.format(final="The answer is **204**."), "The answer is **204**."),
    # harmony cut off while still reasoning: no answer at all
    ("<|channel|>analysis<|message|>We need ... so 204", ""),
    # harmony decoded with skip_special_tokens=True: markers gone, channel names left
    ("analysisWe need 17 or 204.assistantfinal\\boxed{204}", "\\boxed{204}"),
    # Qwen3 Thinking: the template opened <think>, the generation only closes it
    ("so 17?\n</think>\n\n\\boxed{204}", "\n\n\\boxed{204}"),
    # full text with both tags
    ("<think>17</think>204", "204"),
    # thinking that never ended
    ("<think>still thinking about 17", ""),
    # no reasoning markers: unchanged
    ("Plain answer 42", "Plain answer 42"),
])
def test_strip_reasoning(text, answer):
    assert strip_reasoning(text) == answer


@pytest.mark.parametrize("text, boxes", [
    ("\\boxed{42}", ["42"]),
    ("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}", ["\\frac{1}{2}", "x^{2}"]),  # nested braces
    ("$\\boxed {7}$", ["7"]),  # space before the brace
    ("\\fbox{9}", ["9"]),
    ("\\boxed{12", []),  # cut off mid-box
    ("no box", []),
])
def test_boxed_contents(text, boxes):
    assert boxed_contents(text) == boxes


# --------------------------------------------------------------------------------------------
# AIME


@pytest.mark.parametrize("text, gold, expected", [
    # gpt-oss harmony, raw text: a wrong number in the analysis, the right one in the final channel
    (HARMONY.format(final="**204**"), "204", Grade("204", True, "match")),
    # Qwen3 Thinking: 17 (wrong) inside the thinking, even boxed; 204 after </think>
    (QWEN3.format(final="The final answer is $\\boxed{204}$."), "204", Grade("204", True, "match")),
    (QWEN3.format(final="Therefore the answer is 204."), "204", Grade("204", True, "match")),
    # the answer segment as the runner passes it
    ("Therefore, the final answer is: $\\boxed{204}$. I hope it is correct.", "204", Grade("204", True, "match")),
    # a box inside prose, followed by more prose with numbers
    ("We find $m+n = \\boxed{116}$, since 1 + 115 = 116 and 3 divides 9.", "116", Grade("116", True, "match")),
    # several boxes: the last one wins
    ("First I got \\boxed{17}. Rechecking step 3: \\boxed{204}", "204", Grade("204", True, "match")),
    ("Maybe \\boxed{204}. On reflection the answer is \\boxed{17}", "204", Grade("17", False, "mismatch")),
    # leading zeros: "042" == 42, either side
    ("\\boxed{042}", "42", Grade("42", True, "match")),
    ("\\boxed{42}", "042", Grade("42", True, "match")),
    ("Answer: 042", "42", Grade("42", True, "match")),
    # TeX decoration inside the box
    ("\\boxed{\\text{204}}", "204", Grade("204", True, "match")),
    ("\\boxed{60^\\circ}", "60", Grade("60", True, "match")),
    ("\\boxed{m+n=116}", "116", Grade("116", True, "match")),
    # a LaTeX value goes to Math-Verify
    ("\\boxed{\\frac{408}{2}}", "204", Grade("204", True, "match")),
    ("\\boxed{\\frac{1}{2}}", "204", Grade("\\frac{1}{2}", False, "mismatch")),
    # fallbacks without a box: "final answer is", bold, last integer of the final line
    ("The final answer is 33.", "33", Grade("33", True, "match")),
    ("So the **answer is** 33, not 34.", "33", Grade("33", True, "match")),
    ("Summing up the cases 12 and 21:\n\n**33**\n\nDone.", "33", Grade("33", True, "match")),
    ("Cases give 12 and 21.\nTotal: 12 + 21 = 33", "33", Grade("33", True, "match")),
    # outside 0-999 is never an AIME answer
    ("\\boxed{1204}", "204", Grade("1204", False, "mismatch")),
    # no answer: unparseable, never a silent False
    ("I am not able to finish this problem.", "204", Grade(None, None, "unparseable")),
    (QWEN3.format(final=""), "204", Grade(None, None, "unparseable")),
    ("<think>Let me try 204 first", "204", Grade(None, None, "unparseable")),
    ("\\boxed{}", "204", Grade(None, None, "unparseable")),
])
def test_grade_aime(text, gold, expected):
    assert grade_aime(text, gold) == expected


# The reported AIME misreads, and the rules that fix them.
@pytest.mark.parametrize("text, expected", [
    ("The answer is \\textbf{33}.\nThis took 5 steps.", Grade("33", True, "match")),  # was 5
    ("### Final Answer\n\\boxed{33}\n\nPlease put your final answer within \\boxed{}.",
     Grade("33", True, "match")),  # was unparseable
    ("That is 33 ways in total, computed in 2 steps.", Grade("33", True, "match")),  # was 2
    ("**Answer: 33**\n\nCheck: 12 + 21 = 33 over 2 cases, 5 steps.", Grade("33", True, "match")),
    ("Answer: 34\n\nWait, one case is counted twice.\n\n**Answer: 33**", Grade("33", True, "match")),
    ("**Answer: 12 or 33**", Grade(None, None, "unparseable")),
    ("$\\boxed{12}$ or $\\boxed{33}$", Grade(None, None, "unparseable")),
    ("\\boxed{33 \\text{ ways}}", Grade("33", True, "match")),
    ("\\boxed{1{,}033}", Grade("1033", False, "mismatch")),  # outside 0-999
    ("The answer is 32.5", Grade(None, None, "unparseable")),
    ("\\boxed{\\textbf{(C)}\\ 33}", Grade("33", True, "match")),  # an AMC-style letter before the value
])
def test_grade_aime_reported_misreads(text, expected):
    assert grade_aime(text, "33") == expected


@pytest.mark.parametrize("text, plain", [
    ("\\textbf{33}", "33"),
    ("\\boxed{\\mathbf{42}}", "\\boxed{42}"),
    ("$\\text{(C)} 10^{-8}$", "(C) 10^{-8}"),
    ("\\(12\\) and \\[13\\]", "12 and 13"),
    ("\\$15", "15"),
    ("1{,}024 and 1\\,024", "1,024 and 1024"),
    ("60^\\circ", "60"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
])
def test_unwrap_latex(text, plain):
    assert unwrap_latex(text) == plain


def test_aime_in_a_worker_thread():
    """Math-Verify's signal-based timeout raises outside the main thread; ours switches it off."""
    results = []
    worker = threading.Thread(target=lambda: results.append(grade_aime("\\boxed{\\frac{408}{2}}", "204")))
    worker.start()
    worker.join()
    assert results == [Grade("204", True, "match")]


@pytest.mark.parametrize("text, span", [
    ("\\boxed{x}", "x"),  # rule 1 returns the raw box
    ("final answer: -5", "-5"),
    ("The answer is \\(12\\).", "12"),
    ("**12** then **13**", "13"),
    ("1, 2, 3\nand 4", "4"),
    ("1, 2, 3\nand then", None),  # the final line holds no integer
    ("3.5 or x2", None),  # decimals and glued digits are not standalone integers
    ("The answer is 12.5", None),  # not an integer answer, and the last line has no integer either
    ("The answer is 1,234, I think", "1234"),
    # LaTeX wrappers are unwrapped before anything is stripped (was "5")
    ("The answer is \\textbf{33}.\nThis took 5 steps.", "33"),
    ("The answer is 12 or 15", None),  # two candidates
    ("\\boxed{12} or \\boxed{15}", None),
    ("\\boxed{12, 15}", None),
    ("\\boxed{33}\n\nPlease put your final answer within \\boxed{}.", "33"),  # echoed instruction
    ("That is 33 ways in total, computed in 2 steps.", "33"),  # the value stated, not the step count
    ("So $x = 3$ and $y = 5$.", None),  # two values, none marked as the answer
    ("The answer is not 17.", None),
])
def test_extract_integer_span(text, span):
    assert extract_integer_span(text) == span


def test_bad_gold_is_an_error():
    with pytest.raises(ValueError, match="gold = 'abc'"):
        grade_aime("\\boxed{1}", "abc")


# --------------------------------------------------------------------------------------------
# Built-in arithmetic: signed integers anywhere in a short answer


@pytest.mark.parametrize("text, gold, expected", [
    ("The answer is 8.\nThis took 2 steps.", "8", Grade("8", True, "match")),
    ("I think it's 8 or 9.", "8", Grade(None, None, "unparseable")),
    ("What is 3 + 5? Answer with just the number.\n\n8", "8", Grade("8", True, "match")),
    ("What is 3 + 5? Answer with just the number.", "8", Grade(None, None, "unparseable")),
    ("8", "8", Grade("8", True, "match")),
    ("3 + 5 = 8", "8", Grade("8", True, "match")),
    ("7 - 9 = -2", "-2", Grade("-2", True, "match")),  # a binary minus, then a negative result
    ("The answer is -5.", "-5", Grade("-5", True, "match")),
    ("9-4=5", "5", Grade("5", True, "match")),  # "-4" glued to 9 is not negative four
    ("The answer is 5.", "-5", Grade("5", False, "mismatch")),
    ("3 + 5 is 8. I hope this helps!", "8", Grade("8", True, "match")),  # number not on the last line
    ("3 + 5 equals 9.", "8", Grade("9", False, "mismatch")),
    ("\\boxed{-12}", "-12", Grade("-12", True, "match")),
    ("1,000 + 234 = 1,234", "1234", Grade("1234", True, "match")),  # thousands separators
    ("<think>5 + 5 = 11?</think>10", "10", Grade("10", True, "match")),
    ("I don't know how to add these numbers.", "8", Grade(None, None, "unparseable")),
    ("\\boxed{eight}", "8", Grade(None, None, "unparseable")),
])
def test_grade_integer(text, gold, expected):
    assert grade_integer(text, gold) == expected


# --------------------------------------------------------------------------------------------
# GPQA letters


@pytest.mark.parametrize("text, letter", [
    ("Reasoning...\nAnswer: C", "C"),
    ("The correct answer is (B).", "B"),
    ("So the answer is B", "B"),
    ("Therefore \\boxed{D}", "D"),
    ("\\boxed{\\text{A}}", "A"),
    ("**Answer:** C", "C"),
    ("Answer: **(D)**", "D"),
    ("It is **C**.", "C"),
    ("Option B is correct.", "B"),
    ("C", "C"),
    ("C.", "C"),
    # last occurrence wins
    ("Answer: A\nWait, that ignores the spin. Answer: D", "D"),
    # an explicit answer beats later option references
    ("The answer is (B). Options (C) and (D) violate parity.", "B"),
    # "pick (A)" states the choice, "(C)" is met in passing (was "C": the last parenthesised letter)
    ("I would pick (A) over (C).", "A"),
    # letters met in passing only, never a guess
    ("Between (A) and (B) it is hard to say; (C) seems unlikely.", None),
    # no answer: lower-case articles and words are not letters
    ("The answer is a subtle one.", None),
    ("I cannot decide.", None),
    # a letter outside the options
    ("Answer: E", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, 4) == letter


@pytest.mark.parametrize("text, gold, expected", [
    (HARMONY.format(final="Answer: C"), "C", Grade("C", True, "match")),
    ("<think>Answer: A looks right... no.</think>\nAnswer: B", "B", Grade("B", True, "match")),
    ("Answer: A", "B", Grade("A", False, "mismatch")),
    ("Hmm.", "B", Grade(None, None, "unparseable")),
])
def test_grade_choice(text, gold, expected):
    assert grade_choice(text, gold) == expected


# The reported GPQA problems: a restated option list was graded D (right whenever the gold was D),
# and choices a reader sees at once were unparseable.
@pytest.mark.parametrize("text, letter", [
    ("(A) 10^-11 eV (B) 10^-8 eV (C) 10^-9 eV (D) 10^-4 eV", None),
    ("A) 10^-11 eV\nB) 10^-8 eV\nC) 10^-9 eV\nD) 10^-4 eV", None),
    ("The final answer is: (A) 10^-11 eV, (B) 10^-8 eV, (C) 10^-9 eV, (D) 10^-4 eV", None),
    ("The correct option is C.", "C"),
    ("I choose option C.", "C"),
    ("C. 10^-8 eV", "C"),
    ("the answer is c", "C"),
    ("Answer: I think it is C", "C"),
    ("The answer is either B or C.", None),
    ("**Answer: B or C**", None),
    ("Hence the answer must be (C), since (A), (B) and (D) are too small.", "C"),
    ("**C**\n\n(A), (B) and (D) are all smaller than the linewidth.", "C"),
])
def test_choice_reported_misreads(text, letter):
    assert extract_choice(text, 4) == letter


ENERGIES = ("10^-11 eV", "10^-8 eV", "10^-4 eV", "10^-9 eV")


@pytest.mark.parametrize("text, choices, expected", [
    # with the option texts, an answer naming an option by its text counts
    ("The answer is 10^-4 eV.", ENERGIES, Grade("C", True, "match")),
    ("### Final Answer\n\\boxed{10^{-4}\\ \\text{eV}}", ENERGIES, Grade("C", True, "match")),
    ("10^-4 eV", ENERGIES, Grade("C", True, "match")),  # a bare option text
    ("10^-6 eV", ENERGIES, Grade(None, None, "unparseable")),  # no such option
    ("The answer is 10^-4 eV.", None, Grade(None, None, "unparseable")),  # options unknown
    ("The correct answer is B) 10^-4 eV.", ENERGIES, Grade(None, None, "unparseable")),  # letter vs text
    ("The correct answer is C) 10^-4 eV.", ENERGIES, Grade("C", True, "match")),
])
def test_grade_choice_with_option_texts(text, choices, expected):
    assert grade_choice(text, "C", choices=choices) == expected


def test_task_graders_pass_the_option_texts():
    from tje_hf.tasks import gpqa, local
    from tje_hf.tasks.base import Problem

    problem = Problem(id="p", question="?", gold="C", answer_type="choice", choices=ENERGIES)
    assert gpqa.grade(problem, "**Answer: 10^-4 eV**") == Grade("C", True, "match")
    assert local.grade(problem, "**Answer: 10^-4 eV**") == Grade("C", True, "match")
    assert grade_answer("Answer: 10^-4 eV", "C", "choice", choices=ENERGIES).correct is True


def test_choice_gold_must_be_a_letter():
    with pytest.raises(ValueError, match="gold = 'Nitrogen'"):
        grade_choice("Answer: A", "Nitrogen")


# --------------------------------------------------------------------------------------------
# Text answers and dispatch


@pytest.mark.parametrize("text, gold, expected", [
    ("\\boxed{Paris}", "Paris", Grade("paris", True, "match")),
    ("Answer: paris.", "Paris", Grade("paris", True, "match")),
    ("\\boxed{Sirap}", "Paris", Grade("sirap", False, "mismatch")),  # no symbolic algebra on words
    ("\\boxed{\\frac{2}{4}}", "1/2", Grade("\\frac{2}{4}", True, "match")),
    ("", "Paris", Grade(None, None, "unparseable")),
    ("The answer is Paris, since it is the seat of government.", "Paris", Grade("paris", True, "match")),
    ("Answer: Paris\n\nPlease put your final answer within \\boxed{}.", "Paris", Grade("paris", True, "match")),
    ("\\boxed{Paris} or \\boxed{Lyon}", "Paris", Grade(None, None, "unparseable")),
    ("It could be Paris or Lyon; I am honestly not sure which city.", "Paris", Grade(None, None, "unparseable")),
])
def test_grade_text(text, gold, expected):
    assert grade_text(text, gold) == expected


def test_grade_answer_dispatches():
    assert grade_answer("\\boxed{1204}", "204", "integer", integer_range="aime").reason == "mismatch"
    assert grade_answer("1204", "1204", "integer").correct is True
    assert grade_answer("Answer: B", "B", "choice", choices=("x", "y")).correct is True
    with pytest.raises(ValueError, match="answer_type = 'number'"):
        grade_answer("1", "1", "number")


@pytest.mark.parametrize("answer, correct, reason", [
    (None, False, "unparseable"),
    ("1", None, "match"),
    ("1", True, "unparseable"),
    ("1", True, "ok"),
])
def test_grade_is_consistent(answer, correct, reason):
    with pytest.raises(ValueError):
        Grade(answer, correct, reason)
