"""Measure the default model's step-1 accuracy on the built-in arithmetic task.

The built-in task must give SmolLM2-135M-Instruct a real mix of right and wrong answers (25-75%)
in short generations; this script is how that was checked. Run offline::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/measure_arith.py --size 60 --max-new-tokens 32

It prints the accuracy, the unparseable count, the mean number of generated tokens and the time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from tje_hf import DecodeConfig, generate_with_entropy, load_model
from tje_hf.config import TaskConfig
from tje_hf.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=60, help="number of problems (task.size)")
    parser.add_argument("--digits", type=int, default=1, help="operand digits (task.digits)")
    parser.add_argument("--task-seed", type=int, default=0, help="task.seed: which problems")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (decode.seed)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 avoids spin-wait slowdowns on a busy machine)")
    parser.add_argument("--show", type=int, default=8, help="print this many outputs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = load_task(TaskConfig(name="arith", size=args.size, digits=args.digits, seed=args.task_seed))
    loaded = load_model()
    decode = DecodeConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    grades, tokens, texts = [], [], []
    start = time.perf_counter()
    for first in range(0, len(task.problems), args.batch_size):
        batch = task.problems[first:first + args.batch_size]
        prompts = [[{"role": "user", "content": problem.question}] for problem in batch]
        # Distinct sampling seeds per batch, so that batches are not copies of one another's noise.
        out = generate_with_entropy(loaded.model, loaded.tokenizer, prompts,
                                    dataclasses.replace(decode, seed=args.seed + first))
        for problem, result in zip(batch, out.results, strict=True):
            grades.append(task.grade(problem, result.text))
            tokens.append(result.n_generated)
            texts.append(result.text)
    wall = time.perf_counter() - start

    n = len(grades)
    n_correct = sum(g.correct is True for g in grades)
    n_unparseable = sum(g.reason == "unparseable" for g in grades)
    for problem, grade, text in list(zip(task.problems, grades, texts, strict=True))[: args.show]:
        print(f"{problem.id}  gold={problem.gold:>3}  {grade.reason:<11} answer={grade.answer!s:>4}  {text!r}")
    print(f"problems={n} digits={args.digits} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature} seed={args.seed}")
    print(f"accuracy={n_correct / n:.3f} ({n_correct}/{n})  unparseable={n_unparseable}  "
          f"mean_generated_tokens={sum(tokens) / n:.1f}  truncated={sum(t >= args.max_new_tokens for t in tokens)}  "
          f"wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
