"""Data parallel: ``accelerate launch`` with 2 CPU processes gives the records of a single process.

Each process runs a disjoint shard of the problems into its own records shard; rank 0 merges them
when both are done. Sampling seeds are per (run seed, problem, step), so a problem's tokens do not
depend on which process or batch ran it; the signal means agree to float32 rounding (a different
batch means different padding, which moves the last bits of the logits).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from needs import unavailable
from small_runs import small_config

from tje_hf.cli import main
from tje_hf.records import read_records


def _launch(config, n: int) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    # --multi_gpu starts one process per rank through torchrun; without CUDA they run on the CPU
    # (gloo). accelerate's --cpu flag would start a single process.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tje_hf.cli", "run",
           "--config", str(config), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def test_two_processes_give_the_single_process_records(tmp_path, smollm2):
    if shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None:
        unavailable("accelerate's launcher is not installed")
    single = small_config(tmp_path, "single", task={"size": 6, "seed": 5}, batch_size=2)
    assert main(["run", "--config", str(single), "--no-progress"]) == 0
    reference = read_records(tmp_path / "single")

    parallel = small_config(tmp_path, "parallel", task={"size": 6, "seed": 5}, batch_size=2)
    proc = _launch(parallel, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0's summary counts every shard's records as new (not "0 new, 0 s")
    assert re.search(r"\(6 problems, 6 new, [1-9]\d* s\)", proc.stdout), proc.stdout[-2000:]
    merged = read_records(tmp_path / "parallel")
    shards = [read_records(tmp_path / "parallel" / "shards" / f"records-{r}.jsonl") for r in (0, 1)]
    assert sorted(len(s) for s in shards) == [3, 3]
    assert not {r["problem_id"] for r in shards[0]} & {r["problem_id"] for r in shards[1]}
    assert [r["problem_id"] for r in merged] == [r["problem_id"] for r in reference]
    for a, b in zip(merged, reference, strict=True):
        assert a["config_hash"] == b["config_hash"]
        for sa, sb in zip(a["steps"], b["steps"], strict=True):
            for key in ("text", "answer", "correct", "n_generated", "seed", "stop_reason", "prompt_tokens"):
                assert sa[key] == sb[key], key
            for seg in ("all", "answer"):
                for col, value in sb["signals"][seg].items():
                    assert sa["signals"][seg][col] == pytest.approx(value, abs=1e-4), (seg, col)

    # resume works per shard: launching again finds every shard complete and adds nothing
    again = _launch(parallel, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_records(tmp_path / "parallel")) == 6
    assert "(6 problems, 0 new," in again.stdout, again.stdout[-2000:]
