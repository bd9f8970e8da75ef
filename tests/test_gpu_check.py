"""``scripts/gpu_check.py --tiny``: the GPU check's code path on the CPU with tiny configs.

Runs the script in a subprocess and checks that its JSON holds every measurement with sane
values: both decoding configurations (the packaged sampled one and greedy) at every batch, plain
and tje_hf throughputs, tje_hf's per-step share split into tracker, sampler and criteria (the
sampler's zero when greedy), sync counts recorded ("n/a" without CUDA), the peak memory measured
against the estimate, the implementations that ran, the weight estimate equal to the parameters
built, and the reused-prefix prefill faster than the fresh one, with only the new tokens
prefilled. The README's goals are evaluated on a GPU only; the tables and the README block are
written from the JSON.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    sys.path.insert(0, str(ROOT / "scripts"))  # as when it runs: it imports bench_sampling beside it
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu" and report["ok"] is True
    assert report["goals"] == {"share_pct": 2.0, "added_syncs_per_step": 0, "estimate_error": 0.1, "evaluated": False}
    assert set(report["models"]) == {"gpt-oss-20b", "qwen3-30b-a3b"}
    for name, r in report["models"].items():
        assert "error" not in r, r.get("traceback")
        assert r["params"] > 0 and r["weights_bytes_estimated"] == r["weights_bytes_measured"]
        assert r["attention"] == ("eager" if name == "gpt-oss-20b" else "sdpa")
        assert set(r["moe"].values()) == {"grouped_mm"}  # the CPU keeps grouped_mm while decoding
        d = r["decode"]
        assert d["tokens"] >= 1 and d["reps"] >= 3
        for batch in (1, 8):
            for kind in ("sampled", "greedy"):
                e = d[f"batch_{batch}_{kind}"]
                assert e["plain_tok_s"] > 0 and e["tje_tok_s"] > 0, (name, e)
                assert len(e["ratio_runs"]) == d["reps"] and all(x > 0 for x in e["ratio_runs"])
                shares = e["share_pct"]
                assert shares["tracker"]["median"] > 0 and shares["criteria"]["median"] > 0
                assert (shares["sampler"]["median"] > 0) == (kind == "sampled")
                total = e["share_total_pct"]["median"]
                assert 0 < total < 100 and math.isfinite(total)
        s = r["syncs"]
        assert s["sampled_added_per_step"] == s["greedy_added_per_step"] == "n/a"
        m = r["memory"]
        assert m["peak_bytes"] > m["weights_bytes"] > 0 and m["measured_by"].startswith("weights + AllocationMeter")
        assert 0.5 < m["estimate_over_peak"] < 1.5, m
        u = r["reuse"]
        assert u["plan"]["mode"] == "reused"
        assert u["plan"]["prefilled"] == u["suffix"] + 1  # the step-1 token and the new turn
        assert u["plan"]["reused"] == u["context"]
        assert 0 < u["reuse_prefill_min_s"] < u["fresh_prefill_min_s"], (name, u)
        assert u["same_first_token"] is True  # float32: reuse changes nothing but the work
        assert all(r["checks"].values()), r["checks"]
        assert not any("<=" in key for key in r["checks"])  # the goals are for a GPU
    assert "| model (attention, MoE) | batch | decoding |" in proc.stdout and "wrote" in proc.stdout
    # the sampler and the tracker against softmax + multinomial, on this device, both logits dtypes
    rows = report["components"]["rows"]
    assert {(r["B"], r["dtype"]) for r in rows} == {(b, d) for b in (1, 8) for d in ("float32", "bfloat16")}
    for r in rows:
        assert r["V"] == 4096 and r["hf_sampling_ms"] > 0
        assert all(r[c]["x_hf_sampling"] > 0 for c in ("sampler", "tracker", "tracker-topk"))
    assert "as a multiple of softmax + multinomial" in proc.stdout

    # --readme writes the same tables between the README's markers, and nothing else
    gpu_check = _script()
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- gpu-check -->\nold\n<!-- gpu-check -->\nafter\n")
    gpu_check.write_readme(gpu_check.table(report), readme)
    text = readme.read_text()
    assert text.startswith("before\n<!-- gpu-check -->\ncpu, torch ") and text.endswith("<!-- gpu-check -->\nafter\n")
    assert "| gpt-oss-20b (eager, grouped_mm) | 8 | sampled |" in text and "old" not in text


def test_readme_has_one_gpu_check_block():
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- gpu-check -->") == 2
