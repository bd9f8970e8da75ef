"""What keeping a sliding-window layer's past costs, per decoding step, at gpt-oss's layer shape.

The refinement loop cuts its KV cache back to a prefix between steps, so gpt-oss's sliding-window
layers (window 128) must keep every token, not only their window. Three ways, each a
Transformers 5.24 cache layer fed the same keys and values (16 sequences, 8 key/value heads of
64 dims, bf16, gpt-oss-20b's sliding layers), first a prefill of C tokens, then one-token
decoding steps:

- ``window``: ``DynamicSlidingWindowLayer`` as a plain ``generate`` uses it (keeps window - 1;
  the cache cannot be cut back past that);
- ``hf-record``: the same with ``activate_past_recording()``: it keeps the past by concatenating
  the whole of it with each new token (a copy of the layer's history per step);
- ``tje-record``: ``tje_hf.generation.kvcache.RecordingSlidingLayer``: the same window, and the
  past in preallocated blocks (a step writes its one token).

Prints, per context C, the median time of a decoding step's ``update`` (of one layer; gpt-oss-20b
has 12 such layers, gpt-oss-120b 18), the bytes it copies and the bytes the layer holds; writes
JSON. Interleaved rounds, medians: only the ratios carry over to a GPU, where a step copies at
memory bandwidth (the bytes copied column is what a GPU pays).

    python scripts/bench_sliding_cache.py --contexts 4096 13312 --steps 16 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

from tje_hf.generation.kvcache import RecordingSlidingLayer
from tje_hf.records import write_result

BATCH, KV_HEADS, HEAD_DIM, WINDOW = 16, 8, 64, 128  # gpt-oss-20b's sliding layers, batch 16
KINDS = ("window", "hf-record", "tje-record")


def make_layer(kind: str):
    if kind == "tje-record":
        return RecordingSlidingLayer(sliding_window=WINDOW)
    layer = DynamicSlidingWindowLayer(sliding_window=WINDOW)
    if kind == "hf-record":
        layer.activate_past_recording()
    return layer


def held_bytes(layer) -> int:
    tensors = layer.tensors() if isinstance(layer, RecordingSlidingLayer) else [layer.keys, layer.values]
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def run(kind: str, context: int, steps: int, dtype: torch.dtype) -> dict:
    """Prefill ``context`` tokens, then ``steps`` one-token updates; per-step seconds and bytes held."""
    g = torch.Generator().manual_seed(0)
    shape = (BATCH, KV_HEADS, context, HEAD_DIM)
    layer = make_layer(kind)
    layer.update(torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype))
    one = (BATCH, KV_HEADS, 1, HEAD_DIM)
    times = []
    for _ in range(steps):
        k, v = torch.randn(one, generator=g, dtype=dtype), torch.randn(one, generator=g, dtype=dtype)
        t0 = time.perf_counter()
        layer.update(k, v)
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "held_bytes": held_bytes(layer)}


def copied_bytes(kind: str, context: int, esize: int) -> int:
    """Bytes one decoding step's update writes (keys and values): the window's concatenation
    (every kind: Transformers builds the window plus the new token), plus the whole past
    (``hf-record``) or the one new token (``tje-record``)."""
    token = 2 * BATCH * KV_HEADS * HEAD_DIM * esize
    window = WINDOW * token
    return window + {"window": 0, "hf-record": context * token, "tje-record": token}[kind]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 13312])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="bench_results/sliding_cache.json")
    args = p.parse_args(argv)
    dtype = torch.bfloat16
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for context in args.contexts:
        per = {kind: [] for kind in KINDS}
        held = {}
        for rep in range(args.reps):
            for kind in KINDS[rep % 3:] + KINDS[:rep % 3]:  # interleaved, the order rotating
                r = run(kind, context, args.steps, dtype)
                per[kind].append(r["step_s"])
                held[kind] = r["held_bytes"]
        for kind in KINDS:
            rows.append({"context": context, "kind": kind, "step_s": statistics.median(per[kind]),
                         "step_s_runs": per[kind], "copied_bytes_per_step": copied_bytes(kind, context, esize),
                         "held_bytes": held[kind]})
    print("| context | layer | update per step, ms (median) | vs window | bytes copied per step | held MiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["context"] == row["context"] and r["kind"] == "window")
        print(f"| {row['context']} | {row['kind']} | {1000 * row['step_s']:.3f} | {row['step_s'] / base['step_s']:.1f}x "
              f"| {row['copied_bytes_per_step'] / 2**20:.2f} MiB | {row['held_bytes'] / 2**20:.1f} |")
    path = write_result(args.out, {"batch": BATCH, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "window": WINDOW,
                                   "dtype": "bfloat16", "steps": args.steps, "reps": args.reps, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
