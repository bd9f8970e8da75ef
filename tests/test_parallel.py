"""Data parallel: ``accelerate launch`` with 2 CPU processes gives the records of a single process.

Each process runs a disjoint shard of the problems into its own records shard; rank 0 merges them
when both are done. Sampling seeds are per (run seed, problem, step), so a problem's tokens do not
depend on which process or batch ran it; the signal means agree to float32 rounding (a different
batch means different padding, which moves the last bits of the logits).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from needs import unavailable
from small_runs import small_config

from tje_hf.cli import main
from tje_hf.errors import ConfigError, RunDirError
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


def _rank(config, rank: int, world: int = 2) -> subprocess.Popen:
    """One rank as a launcher starts it, but without one: no rendezvous address, so any collective
    operation would fail; a rank must need none."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank), "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1"})
    return subprocess.Popen([sys.executable, "-m", "tje_hf.cli", "run", "--config", str(config), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_rank_zero_waits_for_a_shard_that_ends_long_after_its_own(tmp_path, smollm2):
    """Rank 1 starts only once rank 0's own shard is on disk: rank 0 waits for it (no barrier that
    could time out, no process group at all), then merges both shards."""
    config = small_config(tmp_path, "late", task={"size": 4, "seed": 5}, refine={"steps": 1}, batch_size=2)
    first = _rank(config, 0)
    shard0 = tmp_path / "late" / "shards" / "records-0.jsonl"
    deadline = time.monotonic() + 600
    while len(read_records(shard0, regrades=False)) < 2:  # rank 0's own shard: problems 0 and 2
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "rank 0 did not finish its shard"
        time.sleep(0.5)
    time.sleep(6)  # rank 0 is now waiting (it polls every 5 s)
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = _rank(config, 1)
    out1, err1 = second.communicate(timeout=600)
    assert second.returncode == 0, err1[-3000:]
    assert "records:" not in out1  # rank 1 leaves the merge and the summary to rank 0
    out0, err0 = first.communicate(timeout=600)
    assert first.returncode == 0, err0[-3000:]
    assert "waiting for the other shards (problems left: rank 1: 2)" in err0
    assert "(4 problems, 4 new," in out0, out0[-2000:]
    assert [r["index"] for r in read_records(tmp_path / "late")] == [0, 1, 2, 3]


def test_rank_zero_stops_when_another_rank_failed(tmp_path):
    """A shard marked failed in this launch stops the wait with that rank's error; an earlier
    launch's failure does not count; the wait ends when every shard holds its problems."""
    from tje_hf.config import TaskConfig
    from tje_hf.records import mark_shard_failed, shard_records_name
    from tje_hf.runner import wait_for_shards
    from tje_hf.tasks import load_task

    task = load_task(TaskConfig(name="arith", size=5, seed=1))  # rank 1 of 2: problems 1 and 3
    ids = [p.id for p in task.problems]
    (tmp_path / "shards").mkdir()
    shard1 = tmp_path / shard_records_name(1)
    mark_shard_failed(tmp_path, 1, "an earlier launch", "CUDA out of memory")
    polls = []

    def rank_one_writes(_seconds):  # each poll, rank 1 finishes one more problem
        polls.append(len(polls))
        with shard1.open("a") as f:
            f.write(json.dumps({"problem_id": ids[2 * len(polls) - 1], "steps": []}) + "\n")

    wait_for_shards(tmp_path, task, 2, launch="this launch", poll_s=0, sleep=rank_one_writes)
    assert len(polls) == 2
    shard1.unlink()
    mark_shard_failed(tmp_path, 1, "this launch", "CUDA out of memory")
    with pytest.raises(RunDirError, match="rank 1 stopped: CUDA out of memory"):
        wait_for_shards(tmp_path, task, 2, launch="this launch", poll_s=0, sleep=lambda s: None)


def test_one_model_over_every_gpu_is_refused_with_several_processes(tmp_path):
    from tje_hf.config import load_run_config
    from tje_hf.runner import run_data_parallel

    cfg = load_run_config(small_config(tmp_path, "spread", model={"device_map": "auto"}))
    with pytest.raises(ConfigError, match="model.device_map = 'auto' with 2 processes"):
        run_data_parallel(cfg, 0, 2, 0)
    assert not (tmp_path / "spread").exists()
