"""Benchmark: the refinement loop with and without KV-cache reuse between steps.

4 steps on SmolLM2 with a forced ~1k generated tokens per step (min_new_tokens =
max_new_tokens), with reuse against without, interleaved (the order alternating) and repeated.
Prints per step the tokens prefilled, the prefill time (start of generate to the first logits)
and the step's wall time, and the ratios over steps 2..4; writes JSON (``--out``). Step 1 is the
same work in both modes: its spread shows the machine's noise.

    python scripts/bench_refine.py --tokens 1024 --reps 2 --out bench_results/refine.json
    python scripts/bench_refine.py --history continuation --tokens 256 --out bench_results/refine_continuation.json
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from tje_hf import DecodeConfig, RefineConfig, SignalConfig, load_model
from tje_hf.models.families import make_family
from tje_hf.records import write_result
from tje_hf.refinement import refine

QUESTION = [{"role": "user", "content": "Explain, step by step, how a steam engine turns heat into motion."}]


def one_run(lm, reuse: bool, tokens: int, steps: int, history: str) -> list[dict]:
    decode = DecodeConfig(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.7, seed=0,
                          signals=SignalConfig())
    config = RefineConfig(steps=steps, reuse_cache=reuse, history=history)
    result = refine(lm.backend, make_family(lm.family), [QUESTION], ["bench"], config, decode)[0]
    return [{"step": s.step, "prompt_tokens": s.generation.prompt_tokens, "prefilled": s.reuse.prefilled,
             "reused": s.reuse.reused, "generated": s.generation.n_generated, "prefill_s": s.prefill_time_s,
             "wall_s": s.wall_time_s} for s in result.steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="generated tokens per step (forced)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--history", default="template", choices=["template", "continuation"])
    parser.add_argument("--out", default="bench_results/refine.json")
    args = parser.parse_args()
    lm = load_model()
    one_run(lm, True, 8, 2, args.history)  # warm-up
    runs = {"reuse": [], "no_reuse": []}
    for rep in range(args.reps):  # interleaved: machine drift hits both alike
        for mode in ("reuse", "no_reuse") if rep % 2 == 0 else ("no_reuse", "reuse"):
            runs[mode].append(one_run(lm, mode == "reuse", args.tokens, args.steps, args.history))
            print(f"rep {rep + 1}/{args.reps} {mode}: step wall s "
                  f"{[round(s['wall_s'], 1) for s in runs[mode][-1]]}", flush=True)

    def med(mode: str, step: int, key: str) -> float:
        return statistics.median(r[step][key] for r in runs[mode])

    print(f"\nSmolLM2-135M, {args.tokens} generated tokens a step, {args.history} history, "
          f"median of {args.reps} interleaved runs, {torch.get_num_threads()} threads")
    print("| step | prompt tokens | prefilled (reuse / none) | prefill s (reuse / none) | step s (reuse / none) |")
    print("|---|---|---|---|---|")
    for k in range(args.steps):
        print(f"| {k + 1} | {runs['reuse'][0][k]['prompt_tokens']} | {runs['reuse'][0][k]['prefilled']} / "
              f"{runs['no_reuse'][0][k]['prefilled']} | {med('reuse', k, 'prefill_s'):.2f} / "
              f"{med('no_reuse', k, 'prefill_s'):.2f} | {med('reuse', k, 'wall_s'):.1f} / "
              f"{med('no_reuse', k, 'wall_s'):.1f} |")
    later = range(1, args.steps)
    wall_ratio = sum(med("no_reuse", k, "wall_s") for k in later) / sum(med("reuse", k, "wall_s") for k in later)
    prefill_ratio = (sum(med("no_reuse", k, "prefill_s") for k in later)
                     / sum(med("reuse", k, "prefill_s") for k in later))
    print(f"\nsteps 2..{args.steps}: wall time without reuse / with reuse = {wall_ratio:.2f}x; "
          f"prefill time ratio = {prefill_ratio:.1f}x")
    out = write_result(args.out, {"args": vars(args), "runs": runs, "wall_ratio_steps_2_on": wall_ratio,
                                  "prefill_ratio_steps_2_on": prefill_ratio, "model_revision": lm.revision,
                                  "threads": torch.get_num_threads()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
