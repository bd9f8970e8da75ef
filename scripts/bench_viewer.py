"""Benchmark of the trace viewer on a long problem: open time and scrolling in headless Chromium.

Builds a synthetic run with one problem of STEPS x TOKENS tokens and ALT alternatives a token
(default 4 x 8192 x 20, the paper's budget), writes its viewer, then REPEATS times: loads the
problem's page from disk and measures

- ``ready_ms``: navigation start to the problem view being interactive (the first chunk of every
  step rendered and painted: ``window.__tjeReady``, set after two animation frames);
- ``jump_ms``: from a jump to the bottom of the page to the last chunk of the last step being
  rendered and painted (lazy rendering on demand);
- ``scroll_*``: a fast scroll from top to bottom, 400 px an animation frame: frame intervals (median,
  95th percentile, max) and how many frames took longer than 50 ms;
- ``all_rendered_ms``: navigation start to every token span existing (rendered in idle time).

Usage: python scripts/bench_viewer.py [--out bench_results/viewer.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tje_hf.records import RunDir, pack_trace, write_result
from tje_hf.viewer import write_viewer

COLUMNS = ("topk_entropy@5", "topk_entropy@10", "topk_entropy@15", "topk_entropy@20",
           "full_entropy", "deepconf_confidence", "self_certainty", "token_logprob")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def synthetic_words(n: int, seed: int = 0) -> list[str]:
    """Token texts: mostly ' word' pieces, some digits and punctuation, and newlines."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for i in range(n):
        if i % 97 == 0:
            out.append("\n")
        elif i % 13 == 0:
            out.append(str(i % 10))
        elif i % 11 == 0:
            out.append(".")
        else:
            out.append(" " + "".join(rng.choice(letters, int(rng.integers(2, 9)))))
    return out


def build_run(path: Path, steps: int, tokens: int, n_alt: int, vocab: int = 5000, seed: int = 0) -> Path:
    """One problem, ``steps`` steps of ``tokens`` tokens, ``n_alt`` alternatives a token."""
    rng = np.random.default_rng(seed)
    run = RunDir.open(path, {"refine": {"steps": steps}}, "bench", overwrite=True)
    step_records = []
    for k in range(steps):
        seg = np.zeros(tokens, np.int8)
        seg[:2] = 2
        seg[-400:-1] = 1
        seg[-402:-400] = 2
        seg[-1] = 2
        h = np.clip(rng.gamma(1.0, 0.6, tokens), 0, math.log2(20)).astype(np.float32)
        values = np.repeat(h[:, None], len(COLUMNS), axis=1)
        ids = rng.integers(0, vocab, tokens)
        # Mostly newline-free text with a newline token every ~40 tokens, as in reasoning traces.
        ids[rng.random(tokens) < 1 / 40] = 0
        alt_ids = rng.integers(0, vocab, (tokens, n_alt)).astype(np.int32)
        alt_ids[:, 0] = ids
        alt_lp = np.sort(-rng.exponential(2.0, (tokens, n_alt)), axis=1)[:, ::-1].astype(np.float16)
        trace = pack_trace(COLUMNS, values, seg, ids.tolist(), alt_ids, alt_lp)
        ref = run.append_trace(trace, COLUMNS)
        means = {c: float(h.mean()) for c in COLUMNS}
        step_records.append({
            "step": k + 1, "seed": k, "text": "", "answer_text": "", "answer": "1", "correct": k % 2 == 0,
            "grade_reason": "match", "n_generated": tokens, "prompt_tokens": 100, "prefilled_tokens": 100,
            "reused_tokens": 0, "cache": "none", "stop_reason": "max_new_tokens", "wall_time_s": 1.0,
            "signals": {"all": means, "reasoning": means, "answer": means},
            "counts": {"all": tokens, "reasoning": int((seg == 0).sum()), "answer": int((seg == 1).sum())},
            "n_invalid": 0, "trace": ref.to_json()})
    run.append({"schema": 1, "config_hash": "bench", "problem_id": "long", "index": 0, "task": "bench", "gold": "1",
                "model": "synthetic", "model_revision": "local", "family": "generic", "prompt_hash": "0" * 16,
                "policy": "all", "n_steps": steps, "steps": step_records, "finished_at": "2025-01-01T00:00:00Z"})
    return path


_JUMP = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
window.scrollTo(0, document.documentElement.scrollHeight);
const secs = document.querySelectorAll('section.step');
const last = secs[secs.length - 1].querySelector('.toks').lastElementChild;
(function poll() {
  const r = last.getBoundingClientRect();
  if (last.classList.contains('r') && r.top < innerHeight) {
    requestAnimationFrame(() => done(performance.now() - t0));
    return;
  }
  window.scrollTo(0, document.documentElement.scrollHeight);  // placeholders may have changed height
  requestAnimationFrame(poll);
})();
"""

_SCROLL = """
const done = arguments[arguments.length - 1];
window.scrollTo(0, 0);
const gaps = []; let prev = null; const t0 = performance.now();
function frame(t) {
  if (prev !== null) gaps.push(t - prev);
  prev = t;
  const max = document.documentElement.scrollHeight - innerHeight;
  if (window.scrollY >= max - 1 || gaps.length > 5000) { done({gaps, total: performance.now() - t0, height: max}); return; }
  window.scrollBy(0, 400);
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
"""


def _driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(120)
    drv.set_script_timeout(120)
    return drv


def _wait(drv, script: str, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(script))


def measure(drv, url: str) -> dict:
    drv.get("about:blank")
    drv.get(url)
    _wait(drv, "return document.documentElement.dataset.ready === '1'")
    nav = drv.execute_script("const n = performance.getEntriesByType('navigation')[0], m = {};"
                             "performance.getEntriesByType('mark').forEach(e => { m[e.name] = e.startTime; });"
                             "return {dom_interactive: n.domInteractive, dcl: n.domContentLoadedEventEnd, marks: m,"
                             " ready: window.__tjeReady, spans: document.querySelectorAll('.t').length}")
    jump = drv.execute_async_script(_JUMP)
    _wait(drv, "return document.documentElement.dataset.allRendered === '1'")
    all_rendered = drv.execute_script("return window.__tjeAllRendered")
    spans = drv.execute_script("return document.querySelectorAll('.t').length")
    scroll = drv.execute_async_script(_SCROLL)
    gaps = sorted(scroll["gaps"]) or [0.0]
    marks = nav["marks"]
    return {"ready_ms": nav["ready"], "dom_interactive_ms": nav["dom_interactive"], "dcl_ms": nav["dcl"],
            "json_parse_ms": marks["tje-parsed"] - marks["tje-open"], "build_ms": marks["tje-rendered"] - marks["tje-parsed"],
            "load1": os.getloadavg()[0],
            "spans_at_ready": nav["spans"], "jump_ms": jump, "all_rendered_ms": all_rendered, "spans": spans,
            "scroll_frames": len(scroll["gaps"]), "scroll_total_ms": scroll["total"], "page_height_px": scroll["height"],
            "scroll_p50_ms": statistics.median(gaps), "scroll_p95_ms": gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))],
            "scroll_max_ms": gaps[-1], "scroll_long_frames": sum(g > 50 for g in gaps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--alt", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_results/viewer.json")
    ap.add_argument("--keep", help="write the run and viewer here instead of a temporary directory")
    args = ap.parse_args(argv)
    for p in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(p):
            print(f"bench_viewer: {p} is missing (bash scripts/install_browser.sh)", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        run = build_run(base / "run", args.steps, args.tokens, args.alt)
        words = synthetic_words(5000)
        t0 = time.perf_counter()
        html = write_viewer(run, decode=lambda i: words[i])
        write_s = time.perf_counter() - t0
        size = html.stat().st_size
        url = html.resolve().as_uri() + "#p=long"
        drv = _driver(base / "profile")
        try:
            rows = [measure(drv, url) for _ in range(args.repeats)]
            version = drv.capabilities.get("browserVersion", "?")
        finally:
            drv.quit()

    keys = ["ready_ms", "dom_interactive_ms", "json_parse_ms", "build_ms", "spans_at_ready", "jump_ms", "all_rendered_ms", "scroll_frames", "scroll_p50_ms",
            "scroll_p95_ms", "scroll_max_ms", "scroll_long_frames", "load1"]
    print(f"viewer bench: {args.steps} steps x {args.tokens} tokens x {args.alt} alternatives = "
          f"{args.steps * args.tokens} token spans; HTML {size / 1e6:.1f} MB written in {write_s:.2f} s; "
          f"Chromium {version}; {os.cpu_count()} CPUs")
    print("ms; load1 = 1-minute load average of the machine (2 cores: > 2 means contention)")
    print(f"{'run':<4} " + " ".join(f"{k.removesuffix('_ms'):>{max(7, len(k) - 3)}}" for k in keys))
    median = {k: statistics.median(r[k] for r in rows) for k in keys}
    for i, r in enumerate([*rows, median]):
        label = "med" if i == len(rows) else str(i + 1)
        print(f"{label:<4} " + " ".join(f"{r[k]:>{max(7, len(k) - 3)}.{0 if k.endswith(('spans_at_ready', 'frames')) else 1}f}"
                                       for k in keys))
    assert all(r["spans"] == args.steps * args.tokens for r in rows), "not every token was rendered"

    try:
        chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        chromium = version
    out = write_result(args.out, {
        "benchmark": "viewer", "steps": args.steps, "tokens_per_step": args.tokens, "alternatives": args.alt,
        "html_bytes": size, "write_s": write_s, "browser": chromium, "cpus": os.cpu_count(),
        "platform": platform.platform(), "runs": rows, "median": median,
        "target": {"ready_ms": 2000, "met": median["ready_ms"] < 2000}})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
