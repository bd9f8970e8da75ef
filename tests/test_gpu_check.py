"""``scripts/gpu_check.py --tiny``: the GPU check's code path on the CPU with tiny configs.

Runs the script in a subprocess and checks that its JSON holds every measurement with sane
values: positive throughputs for both paths at every batch, sync counts recorded ("n/a" without
CUDA), peak memory "n/a" on the CPU, the weight estimate equal to the parameters built, and the
reused-prefix prefill faster than the fresh one, with only the new tokens prefilled.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_tiny(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["device"] == "cpu" and report["ok"] is True
    assert set(report["models"]) == {"gpt-oss-20b", "qwen3-30b-a3b"}
    for name, r in report["models"].items():
        assert "error" not in r, r.get("traceback")
        assert r["params"] > 0 and r["weights_bytes_estimated"] == r["weights_bytes_measured"]
        d = r["decode"]
        assert d["tokens"] >= 1 and d["reps"] >= 1
        for batch in (1, 8):
            e = d[f"batch_{batch}"]
            assert e["plain_tok_s"] > 0 and e["tracker_tok_s"] > 0, (name, e)
            assert math.isfinite(e["overhead_pct"])
            assert e["peak_bytes_plain"] == e["peak_bytes_tracker"] == "n/a"
            assert e["estimate_total_bytes"] > r["weights_bytes_estimated"]
        s = r["syncs"]
        assert s["plain_per_step"] == s["tracker_per_step"] == s["added_per_step"] == "n/a"
        u = r["reuse"]
        assert u["plan"]["mode"] == "reused"
        assert u["plan"]["prefilled"] == u["suffix"] + 1  # the step-1 token and the new turn
        assert u["plan"]["reused"] == u["context"]
        assert 0 < u["reuse_prefill_min_s"] < u["fresh_prefill_min_s"], (name, u)
        assert u["same_first_token"] is True  # float32: reuse changes nothing but the work
        assert all(r["checks"].values()), r["checks"]
    assert "| model | batch |" in proc.stdout and "wrote" in proc.stdout
