"""Synthetic runs built by hand, so that every number a test checks can be worked out exactly.

``HAND``, ``make_record``, ``hand_records``, ``gate_records`` and ``write_run`` build the six-problem run of
``test_evaluation`` (and its policy-gate variant) whose accuracies, savings and costs are worked out in the
comments below; ``build_run`` writes a seven-problem run with a trace sidecar (known per-token entropies,
segments and ``N_ALT`` alternatives) for the trace viewer. Used by ``test_evaluation``, ``test_viewer``,
``test_report``, ``test_export``, ``test_cli`` and ``test_bad_inputs`` (``test_imports`` still imports
``build_run`` through ``test_viewer``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tje_hf.records import RunDir, pack_trace

# The hand-built run: 6 problems, 3 steps. H = topk_entropy@20 (bits) per step; correct None = unparseable.
#
#   problem  H1   H2   H3   correct (s1, s2, s3)   tokens (s1, s2, s3)   all steps
#   a        0.5  0.4  0.3  T  T  T                100  50   50          200
#   b        1.0  0.6  0.5  T  T  T                200  100  100         400
#   c        1.5  2.0  1.0  T  F  F                100  100  100         300
#   d        2.0  2.1  0.7  F  T  T                300  100  100         500
#   e        2.5  1.9  0.9  F  F  T                100  100  100         300
#   f        3.0  2.2  1.2  -  F  F                100  100  100         300
#                                                                        ----
#                                                                        2000
# step-1 accuracy 3/6 (f is unparseable: incorrect); 3-step accuracy (a, b, d, e) 4/6.
# topk_entropy@5 at step 1 (for the ablation): a 0.5, b 1.2, c 0.9, d 1.0, e 0.4, f 1.1.
HAND = {
    "a": ((0.5, 0.4, 0.3), (True, True, True), (100, 50, 50), 0.5),
    "b": ((1.0, 0.6, 0.5), (True, True, True), (200, 100, 100), 1.2),
    "c": ((1.5, 2.0, 1.0), (True, False, False), (100, 100, 100), 0.9),
    "d": ((2.0, 2.1, 0.7), (False, True, True), (300, 100, 100), 1.0),
    "e": ((2.5, 1.9, 0.9), (False, False, True), (100, 100, 100), 0.4),
    "f": ((3.0, 2.2, 1.2), (None, False, False), (100, 100, 100), 1.1),
}


def make_record(index: int, pid: str, hs, corrects, tokens, h5_step1: float | None = None) -> dict:
    """One record as docs/FORMAT.md describes it (schema 1)."""
    steps = []
    for k, (h, ok, n) in enumerate(zip(hs, corrects, tokens, strict=True), start=1):
        sig = {"topk_entropy@20": h, "topk_entropy@5": h5_step1 if k == 1 and h5_step1 is not None else h / 2,
               "full_entropy": 2 * h, "deepconf_confidence": 10 - h, "self_certainty": 5 - h, "token_logprob": -h}
        steps.append({
            "step": k, "seed": 1000 * index + k, "text": "...", "answer_text": "...",
            "answer": None if ok is None else "42", "correct": ok,
            "grade_reason": "unparseable" if ok is None else ("match" if ok else "mismatch"),
            "n_generated": n, "prompt_tokens": 50, "prefilled_tokens": 50, "reused_tokens": 0,
            "cache": "none", "stop_reason": "eos", "wall_time_s": 0.5,
            "signals": {"all": sig, "reasoning": sig, "answer": sig}, "counts": {"all": n, "reasoning": n - 5,
                                                                                  "answer": 5},
            "n_invalid": 0, "trace": None})
    return {"schema": 1, "config_hash": "0123456789abcdef", "problem_id": pid, "index": index, "task": "arith",
            "gold": "42", "model": "test/model-a", "model_revision": "local", "family": "generic",
            "prompt_hash": "feedfacefeedface", "policy": "all", "n_steps": len(steps), "steps": steps,
            "finished_at": "2025-01-01T00:00:00Z"}


def hand_records() -> list[dict]:
    return [make_record(j, pid, *row) for j, (pid, row) in enumerate(HAND.items())]


# The hand-built gate run: the same six problems run with policy "gate", tau = 1.5 bits on topk_entropy@20
# (segment all), N = 3, decode.max_new_tokens = 512. a (0.5), b (1.0), c (1.5) stop after step 1; d, e, f run
# all three steps (their steps are those of HAND).
#   final answers: a T(s1) b T(s1) c T(s1) | d T(s3) e T(s3) f F(s3): 5/6; stopped 3/3 right, continued 2/3
#   calls 3 * 1 + 3 * 3 = 12 of 18 (6 not made); tokens 100 + 200 + 100 + 500 + 300 + 300 = 1500
#   later steps of the continued problems: six calls of 100 tokens: estimate 6 * 100 = 600; at most 6 * 512 = 3072
HAND_GATE_TAU = 1.5
GATE_REFINE = {"steps": 3, "policy": "gate", "tau": HAND_GATE_TAU, "gate_column": "topk_entropy@20", "gate_segment": "all"}


def gate_records() -> list[dict]:
    recs = hand_records()
    for r in recs:
        r["policy"] = "gate"
        if r["steps"][0]["signals"]["all"]["topk_entropy@20"] <= HAND_GATE_TAU:
            r["steps"] = r["steps"][:1]
        r["n_steps"] = len(r["steps"])
    return recs


def write_run(run_dir: Path, records: list[dict], model: str = "test/model-a", task: str = "arith",
              refine: dict | None = None, decode: dict | None = None) -> Path:
    """A run directory as records.RunDir writes it: config.json and records.jsonl, written with json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": {"name_or_path": model}, "task": {"name": task},
              "refine": refine or {"steps": 3, "policy": "all"}, **({"decode": decode} if decode else {})}
    (run_dir / "config.json").write_text(json.dumps({"schema": 1, "config_hash": "0123456789abcdef",
                                                     "config": config}, indent=2))
    with open(run_dir / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r, allow_nan=True, separators=(",", ":")) + "\n" for r in records)
    return run_dir


# The synthetic viewer run: records and a trace sidecar written through ``tje_hf.records``.
COLUMNS = ("topk_entropy@5", "topk_entropy@10", "topk_entropy@15", "topk_entropy@20",
           "full_entropy", "deepconf_confidence", "self_certainty", "token_logprob")
H_MAX = math.log2(20)
N_ALT = 5
BIG = "p-big"  # a problem with steps longer than a render chunk (512 tokens)


def step_trace(rng: np.random.Generator, n: int, level: float):
    """One step's trace: header, reasoning, header, answer, end; entropies around ``level`` bits."""
    n_ans = max(3, n // 8)
    seg = np.zeros(n, dtype=np.int8)
    seg[:2] = 2
    seg[n - n_ans - 3:n - n_ans - 1] = 2
    seg[n - n_ans - 1:n - 1] = 1
    seg[n - 1] = 2
    values = np.zeros((n, len(COLUMNS)), dtype=np.float32)
    h = np.clip(rng.gamma(2.0, level / 2.0, size=n), 0.0, H_MAX).astype(np.float32)
    h[0], h[1] = 0.0, H_MAX  # the scale's two ends
    for j, k in enumerate((5, 10, 15, 20)):
        values[:, j] = np.minimum(h, math.log2(k))
    values[:, 4] = h + 0.5
    values[:, 5] = 5.0 - h
    values[:, 6] = 8.0 - h
    values[:, 7] = -h / 2
    tokens = rng.integers(0, 1000, size=n)
    alt_ids = rng.integers(0, 1000, size=(n, N_ALT)).astype(np.int32)
    alt_ids[:, 0] = tokens
    alt_lp = np.sort(-rng.exponential(1.5, size=(n, N_ALT)), axis=1)[:, ::-1].astype(np.float16)
    return pack_trace(COLUMNS, values, seg, tokens.tolist(), alt_ids, alt_lp)


def trace_means(trace: np.ndarray) -> tuple[dict, dict]:
    signals, counts = {}, {}
    for name, mask in (("all", np.ones(len(trace), bool)), ("reasoning", trace["segment"] == 0),
                       ("answer", trace["segment"] == 1)):
        vals = trace["values"][mask]
        signals[name] = {c: (float(vals[:, j].mean()) if len(vals) else float("nan")) for j, c in enumerate(COLUMNS)}
        counts[name] = int(mask.sum())
    return signals, counts


def step_record(k: int, ok: bool | None, n: int, signals: dict, counts: dict, ref) -> dict:
    """Step ``k + 1`` of a synthetic record: answer 42 when ``ok``, 41 when not, none when None;
    ``n`` tokens whose means and counts are ``signals`` and ``counts``; its trace at ``ref``."""
    return {"step": k + 1, "seed": k, "text": "", "answer_text": "", "answer": None if ok is None else
            str(42 if ok else 41), "correct": ok, "grade_reason": "match" if ok else "mismatch",
            "n_generated": n, "prompt_tokens": 10, "prefilled_tokens": 10, "reused_tokens": 0,
            "cache": "none", "stop_reason": "eos", "wall_time_s": 0.1, "signals": signals,
            "counts": counts, "n_invalid": 0, "trace": ref.to_json()}


def build_run(path: Path, *, with_alternatives: bool = True) -> Path:
    """Seven problems: step-1 correct ones have low entropy, incorrect ones high; one has 1300-token steps."""
    rng = np.random.default_rng(7)
    run = RunDir.open(path, {"refine": {"steps": 3}, "task": {"name": "arith"}}, "cafe0001")
    run.write_environment({"model_source": str(path / "no-such-model")})
    plan = [("p-0", [True, True, True], 0.4), ("p-1", [True, False, True], 0.6), ("p-2", [False, False, True], 1.6),
            ("p-3", [None, True, True], 1.2), ("p-4", [False, True, False], 2.0), ("p-5", [True, True, True], 0.3),
            (BIG, [True, False, True], 0.9)]
    for index, (pid, correct, level) in enumerate(plan):
        steps = []
        for k, ok in enumerate(correct):
            n = 1300 if pid == BIG else int(rng.integers(30, 90))
            trace = step_trace(rng, n, level)
            if not with_alternatives:
                trace = pack_trace(COLUMNS, trace["values"], trace["segment"], trace["token"].tolist())
            ref = run.append_trace(trace, COLUMNS)
            signals, counts = trace_means(trace)
            steps.append(step_record(k, ok, n, signals, counts, ref))
        run.append({"schema": 1, "config_hash": "cafe0001", "problem_id": pid, "index": index, "task": "arith",
                    "gold": "42", "model": "synthetic", "model_revision": "local", "family": "generic",
                    "prompt_hash": "0" * 16, "policy": "all", "n_steps": len(steps), "steps": steps,
                    "finished_at": "2025-01-01T00:00:00Z"})
    return path
