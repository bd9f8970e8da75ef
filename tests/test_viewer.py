"""The token-level trace viewer: the embedded data (no browser) and the page itself (headless Chromium).

The run is synthetic: records and a trace sidecar written through ``tje_hf.records`` with known
per-token entropies, segments and alternatives, so every displayed number can be checked exactly.
"""

from __future__ import annotations

import html
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import time
from importlib.resources import as_file, files
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from needs import unavailable
from synthetic_runs import BIG, COLUMNS, H_MAX, N_ALT, build_run, step_record, step_trace, trace_means

from tje_hf.analysis.calibration import METHODS, calibrate_records
from tje_hf.records import RunDir, read_records, read_trace
from tje_hf.viewer import (
    COLOR_STOPS,
    entropy_color,
    read_payload,
    signal_scale,
    write_viewer,
)
from tje_hf.viewer.page import asset

SIGNAL = "topk_entropy@20"
WORDS = [" the", " answer", " is", "\n", " 4", "2", ".", " <b>", " &", " x", " so", " Let", "'s", " check", ":"]


def decode(token_id: int) -> str:
    return WORDS[token_id % len(WORDS)]


GATE_TAU = 1.0


def build_gate_run(path: Path, tau: float = GATE_TAU) -> Path:
    """A policy-gate run (tau 1 bit on topk_entropy@20, N 3) built by hand: the problems whose step-1 mean is at
    or below tau have one step recorded (g-0 and g-1), the others three."""
    rng = np.random.default_rng(3)
    cfg = {"refine": {"steps": 3, "policy": "gate", "tau": tau, "gate_column": SIGNAL, "gate_segment": "all"},
           "task": {"name": "arith"}, "model": {"name_or_path": "synthetic"}, "decode": {"max_new_tokens": 128}}
    run = RunDir.open(path, cfg, "cafe0003")
    plan = [("g-0", [True, True, True], 0.4), ("g-1", [True, False, True], 0.6), ("g-2", [False, False, True], 1.6),
            ("g-3", [None, True, True], 1.2), ("g-4", [False, True, False], 2.0)]
    for index, (pid, correct, level) in enumerate(plan):
        steps = []
        for k, ok in enumerate(correct):
            n = int(rng.integers(30, 90))
            trace = step_trace(rng, n, level)
            ref = run.append_trace(trace, COLUMNS)
            signals, counts = trace_means(trace)
            steps.append(step_record(k, ok, n, signals, counts, ref))
            if k == 0 and signals["all"][SIGNAL] <= tau:
                break
        run.append({"schema": 1, "config_hash": "cafe0003", "problem_id": pid, "index": index, "task": "arith",
                    "gold": "42", "model": "synthetic", "model_revision": "local", "family": "generic",
                    "prompt_hash": "0" * 16, "policy": "gate", "n_steps": len(steps), "steps": steps,
                    "finished_at": "2025-01-01T00:00:00Z"})
    return path


@pytest.fixture(scope="module")
def gate_html(tmp_path_factory) -> Path:
    return write_viewer(build_gate_run(tmp_path_factory.mktemp("gate") / "run"), decode=decode)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("viewer") / "run")


@pytest.fixture(scope="module")
def html_path(run_dir: Path) -> Path:
    return write_viewer(run_dir, decode=decode)


def xss(field: str) -> str:
    """Markup that runs script if it reaches innerHTML unescaped, in text or in a quoted attribute."""
    return f'"><img src=x data-field={field} onerror=window.__pwned=1>'


CRAFTED_TAUS = {"low": -1.0, xss("threshold"): 99.0}  # "low" never stops, the other always does


def crafted_decode(token_id: int) -> str:
    return xss("token") if token_id % 2 else decode(token_id)


def build_crafted_run(path: Path) -> Path:
    """Two problems whose "numeric" fields (index, step, n_generated, counts, n_steps, the configured
    number of steps) and text fields hold markup instead; the signals and traces are genuine."""
    rng = np.random.default_rng(11)
    cfg = {"refine": {"steps": xss("config_steps")}, "task": {"name": xss("config_task")},
           "model": {"name_or_path": xss("config_model")}}
    run = RunDir.open(path, cfg, "cafe0002")
    for index in range(2):
        steps = []
        for k in range(2):
            trace = step_trace(rng, 40, 1.0 + index)
            ref = run.append_trace(trace, COLUMNS)
            signals, counts = trace_means(trace)
            steps.append({"step": xss("step"), "seed": k, "answer": xss("answer"), "correct": k == 1,
                          "grade_reason": xss("grade"), "n_generated": xss("n_generated"),
                          "stop_reason": xss("stop_reason"), "signals": signals,
                          "counts": {g: xss(f"counts_{g}") for g in counts}, "trace": ref.to_json()})
        run.append({"schema": 1, "problem_id": f"p-{index}{xss('problem_id')}", "index": xss("index"),
                    "task": xss("task"), "gold": xss("gold"), "model": xss("model") + " {{JS}} {{PAYLOAD}}",
                    "question": xss("question"), "prompt": xss("prompt"),
                    "policy": xss("policy"), "n_steps": xss("n_steps"), "steps": steps})
    return path


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory) -> Path:
    return build_crafted_run(tmp_path_factory.mktemp("crafted") / "run")


# --------------------------------------------------------------------------------------------
# No browser


def test_colour_scale_ends_and_order():
    assert entropy_color(0.0, H_MAX) == COLOR_STOPS[0]
    assert entropy_color(H_MAX, H_MAX) == COLOR_STOPS[-1]
    assert entropy_color(99.0, H_MAX) == COLOR_STOPS[-1] and entropy_color(-1.0, H_MAX) == COLOR_STOPS[0]
    assert entropy_color(None, H_MAX) is None and entropy_color(float("nan"), H_MAX) is None
    # Midway between stops 2 and 3 (t = 0.5 on six stops): the channel means, rounded half up.
    assert entropy_color(H_MAX / 2, H_MAX) == (253, 200, 145)
    greens = [entropy_color(h, H_MAX)[1] for h in np.linspace(0, H_MAX, 50)]
    assert all(a >= b for a, b in itertools.pairwise(greens)) and greens[0] > greens[-1]
    assert signal_scale("topk_entropy@20")[0] == pytest.approx(4.321928)
    with pytest.raises(ValueError, match="deepconf_confidence"):
        signal_scale("deepconf_confidence")


def test_html_is_self_contained(html_path: Path):
    text = html_path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    for bad in ("http://", "https://", "<link", "@import", "url("):
        assert bad not in text, bad
    assert not re.search(r"""\ssrc\s*=""", text)
    # Token text with markup is escaped inside the JSON blocks: no premature </script>.
    assert text.count("</script>") == text.count("<script")


def test_payload_round_trips(run_dir: Path, html_path: Path):
    index, problems = read_payload(html_path)
    records = read_records(run_dir)
    assert [p["id"] for p in index["problems"]] == [r["problem_id"] for r in records]
    assert index["signal"] == SIGNAL and index["scale"]["max"] == pytest.approx(H_MAX)
    assert index["scale"]["stops"] == [list(c) for c in COLOR_STOPS]
    col = COLUMNS.index(SIGNAL)
    for i, rec in enumerate(records):
        data = problems[i]
        assert index["problems"][i]["h1"] == pytest.approx(rec["steps"][0]["signals"]["all"][SIGNAL])
        assert [s["correct"] for s in index["problems"][i]["steps"]] == [s["correct"] for s in rec["steps"]]
        for step, sd in zip(rec["steps"], data["steps"], strict=True):
            tr = read_trace(run_dir, step["trace"])
            assert sd["n"] == len(tr) == step["n_generated"]
            assert sd["tok"] == tr["token"].tolist()
            assert sd["h"] == [round(float(v), 3) for v in tr["values"][:, col]]
            assert sd["seg"] == "".join(str(int(g)) for g in tr["segment"])
            assert sd["A"] == N_ALT and sd["alt"] == tr["alt_ids"].reshape(-1).tolist()
            lp = np.array(sd["lp16"], dtype=np.uint16).view(np.float16).reshape(-1, N_ALT)
            np.testing.assert_array_equal(lp, tr["alt_logprobs"])
            assert all(data["vocab"][str(t)] == decode(t) for t in sd["tok"] + sd["alt"])


def test_default_thresholds_come_from_calibration(run_dir: Path, html_path: Path):
    index, _ = read_payload(html_path)
    cal = calibrate_records(read_records(run_dir), signal=SIGNAL, segment="all", step=1)
    taus = {t["name"]: t["tau"] for t in index["thresholds"]}
    assert taus == pytest.approx({"mean": cal.tau_mean, "info": cal.tau_info, "bayes": cal.tau_bayes,
                                  "universal": cal.tau_universal})
    assert "in-sample" in index["threshold_note"]


def test_options_ids_without_tokenizer_and_given_thresholds(run_dir: Path, tmp_path: Path):
    out = write_viewer(run_dir, tmp_path / "v.html", thresholds={"mine": 0.5}, problems=["p-1"], max_alternatives=2)
    index, problems = read_payload(out)
    assert index["thresholds"] == [{"name": "mine", "tau": 0.5, "note": ""}]
    assert list(problems) == [1] and [p["embedded"] for p in index["problems"]].count(True) == 1
    assert not index["decoded"]  # environment.json names a directory that does not exist
    sd = problems[1]["steps"][0]
    assert sd["A"] == 2 and len(sd["alt"]) == 2 * sd["n"]
    assert problems[1]["vocab"][str(sd["tok"][0])] == f"⟨{sd['tok'][0]}⟩"


def test_run_without_alternatives(tmp_path: Path):
    run = build_run(tmp_path / "run", with_alternatives=False)
    _, problems = read_payload(write_viewer(run, decode=decode))
    assert problems[0]["steps"][0]["A"] == 0 and "alt" not in problems[0]["steps"][0]


def test_default_thresholds_are_every_calibration_method(run_dir: Path, html_path: Path, tmp_path: Path,
                                                        monkeypatch):
    index, _ = read_payload(html_path)
    assert [t["name"] for t in index["thresholds"]] == list(METHODS)
    # The names come from tje_hf.analysis.calibration, not from a list of the viewer's own.
    monkeypatch.setattr("tje_hf.analysis.calibration.METHODS", ("bayes", "mean"))
    index, _ = read_payload(write_viewer(run_dir, tmp_path / "v.html", decode=decode, problems=[]))
    assert [t["name"] for t in index["thresholds"]] == ["bayes", "mean"]


def test_threshold_colours_and_labels_come_from_the_analysis_palette(html_path: Path, run_dir: Path, tmp_path: Path):
    from tje_hf.analysis.calibration import UNIVERSAL_NOTE
    from tje_hf.analysis.style import EXTRA_COLORS, METHOD_COLORS

    index, _ = read_payload(html_path)
    # One palette (tje_hf.analysis.style), the one the report's PNGs use; the page has no table of its own.
    assert index["colors"] == METHOD_COLORS
    assert "TAU_COLORS" not in asset("viewer.js") and "#8250df" not in asset("viewer.js")
    assert index["threshold_kind"] == "in-sample" and index["gate_run"] is None
    assert index["labels"]["universal"] == "tau_universal (scale-invariant)"
    assert index["reconstructed"] == {"universal": UNIVERSAL_NOTE}
    index, _ = read_payload(write_viewer(run_dir, tmp_path / "v.html", thresholds={"bayes": 1.0, "mine": 0.5},
                                         decode=decode, problems=[]))
    assert index["colors"] == {"bayes": METHOD_COLORS["bayes"], "mine": EXTRA_COLORS[0]}
    assert index["threshold_kind"] == "given"


def test_gate_run_shows_the_tau_it_used_and_its_own_decisions(gate_html: Path):
    from tje_hf.analysis.style import RUN_TAU_COLOR

    index, problems = read_payload(gate_html)
    records = read_records(gate_html.parent)
    # Never re-calibrated on itself: one threshold, the run's, from config.json.
    assert [t["name"] for t in index["thresholds"]] == ["run"] and index["thresholds"][0]["tau"] == GATE_TAU
    assert "config.json refine.tau" in index["thresholds"][0]["note"] and index["threshold_kind"] == "run"
    assert index["gate_run"] == {"tau": GATE_TAU, "column": SIGNAL, "segment": "all", "unit": "bits", "n_steps": 3,
                                 "negated": False, "n_stopped": 2, "policy": "gate"}
    assert index["colors"] == {"run": RUN_TAU_COLOR}
    for p, rec in zip(index["problems"], records, strict=True):
        h1 = rec["steps"][0]["signals"]["all"][SIGNAL]
        assert p["gate"]["stopped"] == (len(rec["steps"]) == 1)
        assert p["gate"]["stopped"] == (h1 <= GATE_TAU) and p["gate"]["u"] == pytest.approx(h1)
    assert [p["id"] for p in index["problems"] if p["gate"]["stopped"]] == ["g-0", "g-1"]
    assert len(problems[0]["steps"]) == 1 and len(problems[2]["steps"]) == 3


def _outside_payload(text: str) -> str:
    return re.sub(r'<script type="application/json" id="tje-[^"]+">.*?</script>', "", text, flags=re.DOTALL)


@pytest.mark.parametrize("thresholds", [None, CRAFTED_TAUS], ids=["calibrated", "given"])
def test_crafted_values_stay_data_in_the_html(crafted_run: Path, tmp_path: Path, thresholds):
    text = write_viewer(crafted_run, tmp_path / "v.html", thresholds=thresholds,
                        decode=crafted_decode).read_text(encoding="utf-8")
    # Inside the JSON blocks every "<" is \u003c; outside them the markup occurs once, HTML-escaped, in <title>.
    assert "<img" not in text and "\\u003cimg src=x" in text
    assert text.count("<script") == text.count("</script>")
    title = html.escape(f"tje viewer: {xss('model')} {{{{JS}}}} {{{{PAYLOAD}}}} on {xss('task')} (run)")
    assert f"<title>{title}</title>" in text  # placeholders in a value are not filled
    rest = _outside_payload(text).replace(f"<title>{title}</title>", "", 1)
    assert "data-field" not in rest and "onerror" not in rest and "<img" not in rest
    assert text.count(asset("viewer.js")) == 1 and text.count(asset("viewer.css")) == 1
    index, problems = read_payload(tmp_path / "v.html")
    assert index["problems"][0]["index"] == xss("index") and index["n_steps_config"] == xss("config_steps")
    assert index["problems"][1]["steps"][0]["counts"]["all"] == xss("counts_all") and len(problems) == 2


def test_viewer_js_parses():
    node = shutil.which("node")
    if node is None:
        unavailable("node is not on PATH: cannot syntax-check tje_hf/viewer/static/viewer.js")
    with as_file(files("tje_hf.viewer") / "static" / "viewer.js") as js:
        done = subprocess.run([node, "--check", str(js)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_default_decode_uses_the_local_tokenizer(run_dir: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    from tje_hf.models.loading import builtin_smollm2_dir

    source, _ = builtin_smollm2_dir()  # converted from the packaged GGUF on first use
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "environment.json").write_text(json.dumps({"model_source": str(source)}))
    index, problems = read_payload(write_viewer(run, problems=["p-0"]))
    tok = AutoTokenizer.from_pretrained(source)
    assert index["decoded"]
    for t, text in list(problems[0]["vocab"].items())[:50]:
        expected = tok.decode([int(t)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert text == expected or "\ufffd" in expected


# --------------------------------------------------------------------------------------------
# Headless Chromium

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        unavailable(f"browser test needs {' and '.join(missing)} (bash scripts/install_browser.sh)")
    if importlib.util.find_spec("selenium") is None:
        unavailable("selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(drv, script: str, timeout: float = 15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def _open(drv, html_path: Path, problem: str | None = None):
    url = html_path.resolve().as_uri() + (f"#p={problem}" if problem else "")
    drv.get("about:blank")
    drv.get(url)
    if problem:
        _wait(drv, "return document.documentElement.dataset.ready === '1'")


def _rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])  # type: ignore[return-value]


def _alternatives(run_dir: Path, step: dict, i: int) -> list[str]:
    tr = read_trace(run_dir, step["trace"])
    return [f"{math.exp(float(lp)):.3f}" for lp in tr["alt_logprobs"][i]]


@pytest.mark.browser
def test_problem_view_renders_every_token_with_its_colour(driver, run_dir: Path, html_path: Path):
    _open(driver, html_path, BIG)
    rec = next(r for r in read_records(run_dir) if r["problem_id"] == BIG)
    # Rendered lazily in chunks (1300 tokens: at least two), all of them once idle time allows.
    assert driver.execute_script("return document.querySelectorAll('section.step[data-s=\"0\"] .chunk').length") >= 2
    _wait(driver, "return document.documentElement.dataset.allRendered === '1'")
    col = COLUMNS.index(SIGNAL)
    for k, step in enumerate(rec["steps"]):
        n = driver.execute_script(f"return document.querySelectorAll('section.step[data-s=\"{k}\"] .t').length")
        assert n == step["n_generated"]
    tr = read_trace(run_dir, rec["steps"][0]["trace"])
    h = [round(float(v), 3) for v in tr["values"][:, col]]
    lo, hi = int(np.argmin(h[2:])) + 2, int(np.argmax(h[2:])) + 2
    seen = {}
    for i in (0, 1, lo, hi):
        css = driver.execute_script(
            f"return getComputedStyle(document.querySelector('section.step[data-s=\"0\"] .t[data-i=\"{i}\"]'))"
            ".backgroundColor")
        seen[i] = _rgb(css)
        assert seen[i] == entropy_color(h[i], H_MAX), (i, h[i], css)
    assert seen[0] == COLOR_STOPS[0] and seen[1] == COLOR_STOPS[-1]
    assert sum(seen[hi]) < sum(seen[lo])  # higher entropy: darker
    # Segments are marked: one badge per run of equal labels, answer tokens carry class s1.
    seg = "".join(str(int(g)) for g in tr["segment"])
    runs = 1 + sum(a != b for a, b in itertools.pairwise(seg))
    assert driver.execute_script("return document.querySelectorAll('section.step[data-s=\"0\"] .badge').length") == runs
    n_answer = driver.execute_script("return document.querySelectorAll('section.step[data-s=\"0\"] .t.s1').length")
    assert n_answer == seg.count("1")


@pytest.mark.browser
def test_hover_and_keyboard_focus_show_alternatives(driver, run_dir: Path, html_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pid = "p-2"
    _open(driver, html_path, pid)
    rec = next(r for r in read_records(run_dir) if r["problem_id"] == pid)
    step = rec["steps"][1]
    tip = driver.find_element(By.ID, "tje-tip")

    # Hover a token of step 2.
    i = 7
    # Scrolling can re-render the lazily drawn chunks under the pointer: hover again (at most 3
    # times) until the element under it is the one the page keeps.
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException

    for attempt in range(3):
        try:
            el = driver.find_element(By.CSS_SELECTOR, f'section.step[data-s="1"] .t[data-i="{i}"]')
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
            _wait(driver, "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
            ActionChains(driver).move_to_element(el).perform()
            _wait(driver, "return !document.getElementById('tje-tip').hidden", timeout=5.0)
            break
        except (StaleElementReferenceException, TimeoutException):
            if attempt == 2:
                raise
    probs = [p.text for p in tip.find_elements(By.CSS_SELECTOR, "tr.alt td.p")]
    assert probs == _alternatives(run_dir, step, i)
    assert len(probs) == N_ALT
    first_alt = tip.find_element(By.CSS_SELECTOR, "tr.alt td.a").text
    tr = read_trace(run_dir, step["trace"])
    assert first_alt == decode(int(tr["alt_ids"][i][0])).replace(" ", "␣").replace("\n", "↵")
    assert tip.find_element(By.CSS_SELECTOR, "b.h").text == f"{round(float(tr['values'][i][3]), 3):.3f}"
    ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, "section.step h2")).perform()
    _wait(driver, "return document.getElementById('tje-tip').hidden")  # leaving a token hides it

    # Keyboard: Tab from the heading into step 1's tokens, then Tab to step 2's and arrow right.
    driver.execute_script("window.scrollTo(0, 0); document.querySelector('main h1').focus()")
    body = driver.switch_to.active_element
    body.send_keys(Keys.TAB)
    assert driver.execute_script("return document.activeElement.closest('section.step').dataset.s") == "0"
    driver.switch_to.active_element.send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.get_attribute("data-i") == "0" and active.get_attribute("class").startswith("t ")
    j = 4
    for _ in range(j):
        driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    active = driver.switch_to.active_element
    assert active.get_attribute("data-i") == str(j)
    assert driver.execute_script("return document.activeElement.closest('section.step').dataset.s") == "1"
    assert not driver.execute_script("return document.getElementById('tje-tip').hidden")
    expected = _alternatives(run_dir, step, j)
    assert [p.text for p in tip.find_elements(By.CSS_SELECTOR, "tr.alt td.p")] == expected
    live = driver.find_element(By.ID, "tje-live").get_attribute("textContent")
    assert f"entropy {round(float(tr['values'][j][3]), 3):.3f} bits" in live
    assert all(p in live for p in expected)
    outline = driver.execute_script("const s = getComputedStyle(document.activeElement);"
                                    "return [s.outlineStyle, s.outlineWidth]")
    assert outline == ["solid", "3px"]
    # Down and up: a token on the next line, then one on the original line again (page coordinates).
    where = "const e = document.activeElement; return [+e.dataset.i, e.getBoundingClientRect().top + scrollY]"
    top = driver.execute_script(where)[1]
    driver.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    down = driver.execute_script(where)
    assert down[0] > j and down[1] > top + 5
    driver.switch_to.active_element.send_keys(Keys.ARROW_UP)
    up = driver.execute_script(where)
    assert up[0] < down[0] and up[1] == pytest.approx(top, abs=2)
    # End jumps to the step's last token (rendering its chunk on demand); Tab order keeps the roving token.
    driver.switch_to.active_element.send_keys(Keys.END)
    assert driver.switch_to.active_element.get_attribute("data-i") == str(step["n_generated"] - 1)
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert driver.execute_script("return document.getElementById('tje-tip').hidden")


@pytest.mark.browser
def test_index_lists_problems_and_sorts_by_column(driver, run_dir: Path, html_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(driver, html_path)
    records = read_records(run_dir)
    rows = driver.find_elements(By.CSS_SELECTOR, "#idx tbody tr")
    assert len(rows) == len(records)
    marks = rows[3].find_element(By.CSS_SELECTOR, "td.marks").text.replace("\n", "")
    assert marks == "?✓✓"  # p-3: step 1 unparseable
    h1 = {r["problem_id"]: r["steps"][0]["signals"]["all"][SIGNAL] for r in records}

    def order():
        return [r.find_element(By.CSS_SELECTOR, "td:nth-child(2)").text
                for r in driver.find_elements(By.CSS_SELECTOR, "#idx tbody tr")]

    button = driver.find_element(By.CSS_SELECTOR, 'th[data-key="h1"] button')
    button.click()
    assert order() == sorted(h1, key=h1.get)
    th = driver.find_element(By.CSS_SELECTOR, 'th[data-key="h1"]')
    assert th.get_attribute("aria-sort") == "ascending"
    # The header is a button: Enter on it sorts again, descending.
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="h1"] button').send_keys(Keys.ENTER)
    assert order() == sorted(h1, key=h1.get, reverse=True)
    assert th.get_attribute("aria-sort") == "descending"
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="tokens"] button').click()
    totals = {r["problem_id"]: sum(s["n_generated"] for s in r["steps"]) for r in records}
    assert order() == sorted(totals, key=totals.get)
    # A row links to its problem view.
    driver.find_element(By.LINK_TEXT, "p-1").click()
    _wait(driver, "return document.documentElement.dataset.ready === '1'")
    assert driver.find_element(By.CSS_SELECTOR, "main h1").text == "Problem p-1"


_INJECTED = """return [window.__pwned === undefined ? null : String(window.__pwned),
  Array.from(document.querySelectorAll('img, [data-field]'), e => e.outerHTML)]"""


def _assert_nothing_injected(drv, where: str):
    time.sleep(0.3)  # an <img src=x> fails to load asynchronously; give its onerror the time to run
    pwned, elements = drv.execute_script(_INJECTED)
    assert pwned is None and elements == [], (where, pwned, elements)


@pytest.mark.browser
def test_crafted_run_cannot_inject_markup(driver, crafted_run: Path, tmp_path: Path):
    """Markup in a records.jsonl field, whatever its JSON type, is shown as text and never runs."""
    page = write_viewer(crafted_run, tmp_path / "v.html", thresholds=CRAFTED_TAUS, decode=crafted_decode)
    _open(driver, page)
    _assert_nothing_injected(driver, "index")
    cells = driver.execute_script("return Array.from(document.querySelectorAll('#idx tbody tr:first-child td'),"
                                  " td => td.textContent)")
    assert cells[0] == xss("index") and cells[5] == f"{xss('n_generated')} · {xss('n_generated')}"
    index, _ = read_payload(page)
    for p in index["problems"]:
        _open(driver, page, quote(p["id"], safe=""))
        assert driver.find_element("css selector", "main h1").text == f"Problem {p['id']}"
        assert driver.execute_script("return document.querySelector('#st-0').textContent") == f"Step {xss('step')}"
        _assert_nothing_injected(driver, f"problem view of {p['id']!r}")
        # Every token's tooltip (token text and alternatives hold markup).
        tips = driver.execute_script("""const out = [];
          for (const t of document.querySelectorAll('section.step .t')) {
            t.focus(); out.push(document.getElementById('tje-tip').querySelectorAll('img, [data-field]').length);
          }
          return out;""")
        assert len(tips) == 80 and not any(tips)
        assert xss("token") in driver.execute_script("return document.getElementById('tje-tip').textContent") \
            or xss("token") in driver.execute_script("return document.getElementById('main').textContent")
        _assert_nothing_injected(driver, f"tooltips of {p['id']!r}")


@pytest.mark.browser
def test_index_threshold_table_uses_the_palette_and_labels_the_reconstruction(driver, html_path: Path):
    from selenium.webdriver.common.by import By

    from tje_hf.analysis.style import METHOD_COLORS

    _open(driver, html_path)
    assert driver.find_element(By.CSS_SELECTOR, "#taus caption").text == "thresholds calibrated in-sample on this run"
    for name, colour in METHOD_COLORS.items():
        sw = driver.find_element(By.CSS_SELECTOR, f'#taus tr[data-name="{name}"] .sw')
        assert _rgb(sw.value_of_css_property("background-color")) == tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    row = driver.find_element(By.CSS_SELECTOR, '#taus tr[data-name="universal"]')
    assert row.find_element(By.CSS_SELECTOR, ".recon").text == "reconstruction"
    assert "does not publish its formula" in row.text
    assert not driver.find_elements(By.CSS_SELECTOR, '#taus tr[data-name="bayes"] .recon')


@pytest.mark.browser
def test_gate_run_page_shows_the_runs_decisions(driver, gate_html: Path):
    from selenium.webdriver.common.by import By

    _open(driver, gate_html)
    rows = driver.find_elements(By.CSS_SELECTOR, "#taus tbody tr")
    assert len(rows) == 1 and "the run's tau" in rows[0].text and "1.000 bits" in rows[0].text
    assert "2 of 5 (the run's decisions)" in rows[0].text
    cells = [r.find_element(By.CSS_SELECTOR, "td:nth-child(5)").text for r in driver.find_elements(By.CSS_SELECTOR,
                                                                                                   "#idx tbody tr")]
    assert cells == ["stopped after step 1"] * 2 + ["ran all 3 steps"] * 3
    _open(driver, gate_html, "g-1")
    gate_row = driver.find_element(By.CSS_SELECTOR, "table.gate tbody tr.run")
    assert "stopped after step 1 (the run's decision)" in gate_row.text and "(step 1)" in gate_row.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "section.step")) == 1
    _open(driver, gate_html, "g-2")
    gate_row = driver.find_element(By.CSS_SELECTOR, "table.gate tbody tr.run")
    assert "ran all 3 steps (the run's decision)" in gate_row.text and "(step 3)" in gate_row.text


def test_the_problem_page_shows_the_question_and_the_prompt(tmp_path: Path):
    run = build_run(tmp_path / "run")
    lines = (run / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for rec in records:
        rec["question"], rec["prompt"] = f"What is {rec['index']} + 1?", f"<|user|>What is {rec['index']} + 1?"
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    index, _ = read_payload(write_viewer(run, decode=decode))
    assert [p["question"] for p in index["problems"]] == [r["question"] for r in records]
    assert [p["prompt"] for p in index["problems"]] == [r["prompt"] for r in records]
    js = (files("tje_hf.viewer") / "static" / "viewer.js").read_text()
    assert "esc(p.question)" in js and "esc(p.prompt)" in js  # shown as text, never as markup
