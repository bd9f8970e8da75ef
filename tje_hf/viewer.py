"""A token-level trace viewer: one run directory in, one self-contained HTML file out (``tje view``).

What lives here: turning the records and the per-token trace sidecar of a run (read through
:mod:`tje_hf.records`, never parsed here) into ONE HTML file that opens from disk with no network,
no external script, font or image. The page has an index of problems (sortable) and one view per
problem that shows every refinement step's tokens coloured by their per-token entropy, the
reasoning / answer / header segments, the step means, the early-stop gate's decision for each
threshold, and each token's recorded top-k alternatives on hover or keyboard focus.

What does not live here: reading or writing run files (``records.py``), threshold math
(``calibration.py``: the thresholds are computed there, in-sample, and only displayed here), and
plots or summary statistics (``report.py``).

The colour scale is documented once, in :data:`COLOR_STOPS` and :func:`entropy_color`; the page's
JavaScript evaluates the same piecewise-linear interpolation, so tests can compute a token's
expected colour in Python.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from .records import CONFIG, load_config, load_environment, read_records, read_trace

log = logging.getLogger(__name__)

DEFAULT_SIGNAL = "topk_entropy@20"
#: Tokens per lazily rendered chunk (a chunk ends at the first newline token after this many, or at 2x).
CHUNK_TOKENS = 512
#: The sequential colour scale, low to high entropy: ColorBrewer OrRd, its six lightest classes, so that
#: black text keeps a contrast ratio of at least 6.6:1 on every colour. Equally spaced on [0, h_max].
COLOR_STOPS: tuple[tuple[int, int, int], ...] = (
    (255, 247, 236), (254, 232, 200), (253, 212, 158), (253, 187, 132), (252, 141, 89), (239, 101, 72))
SEGMENT_NAMES = ("reasoning", "answer", "header")
_TOPK = re.compile(r"^topk_entropy@(\d+)$")


def signal_scale(signal: str, observed_max: float = 0.0) -> tuple[float, str]:
    """The upper end ``h_max`` (bits) of the colour scale of ``signal`` and a label for the legend.

    ``topk_entropy@K`` spans ``[0, log2 K]`` (its mathematical range); ``full_entropy`` spans
    ``[0, observed_max]`` rounded up to a whole bit. Other columns are not entropies (their direction
    is the opposite) and raise ``ValueError``.
    """
    m = _TOPK.match(signal)
    if m:
        k = int(m.group(1))
        if k < 2:
            raise ValueError(f"signal {signal!r}: k = {k} gives a constant 0-bit entropy; use k >= 2")
        return math.log2(k), f"top-{k} entropy"
    if signal == "full_entropy":
        return float(max(1.0, math.ceil(observed_max))), "full-vocabulary entropy"
    raise ValueError(f"signal {signal!r}: the viewer colours tokens by entropy (bits); "
                     "use 'topk_entropy@K' or 'full_entropy'")


def entropy_color(h: float | None, h_max: float) -> tuple[int, int, int] | None:
    """The background colour ``(r, g, b)`` of a token with entropy ``h`` bits (None: no value).

    ``t = clamp(h / h_max, 0, 1)`` is placed on :data:`COLOR_STOPS` (equally spaced) and each channel
    is interpolated linearly between the two neighbouring stops and rounded half up. Higher entropy
    (more uncertain) is darker and redder. The page's JavaScript computes exactly this.
    """
    if h is None or not math.isfinite(h):
        return None
    t = h / h_max
    t = 0.0 if t < 0 else 1.0 if t > 1 else t
    n = len(COLOR_STOPS)
    x = t * (n - 1)
    i = min(math.floor(x), n - 2)
    f = x - i
    a, b = COLOR_STOPS[i], COLOR_STOPS[i + 1]
    return tuple(math.floor(a[j] + (b[j] - a[j]) * f + 0.5) for j in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Token text


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: byte -> the printable character that stands for it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tokenizer_decoder(tokenizer) -> Callable[[int], str]:
    """``decode(id) -> str`` for one token with a Transformers tokenizer, special tokens kept.

    A byte-level BPE token that holds part of a multi-byte character decodes to U+FFFD on its own;
    such a token is shown by its bytes instead (``\\xe4\\xbd``), so that it stays distinguishable.
    """
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}

    def decode(token_id: int) -> str:
        text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if "\ufffd" in text:
            piece = tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and piece and all(ch in byte_of for ch in piece):
                return bytes(byte_of[ch] for ch in piece).decode("utf-8", "backslashreplace")
        return text

    return decode


def default_decode(run_dir: str | Path) -> Callable[[int], str] | None:
    """The run's tokenizer as a decoder, when ``environment.json`` names a local ``model_source``
    directory that holds one; None otherwise (the viewer then shows token ids as ``⟨id⟩``)."""
    source = load_environment(run_dir).get("model_source")
    if not source or not Path(source).is_dir():
        log.info("viewer: no local tokenizer (model_source=%r); showing token ids", source)
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        log.warning("viewer: could not load the tokenizer of %s (%s); showing token ids", source, exc)
        return None
    return tokenizer_decoder(tokenizer)


def _id_text(token_id: int) -> str:
    return f"⟨{token_id}⟩"


# --------------------------------------------------------------------------------------------
# Payload


def _num(x) -> float | None:
    """A JSON-safe float: None for null, NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _step_mean(step: dict, segment: str, signal: str) -> float | None:
    return _num(((step.get("signals") or {}).get(segment) or {}).get(signal))


def _thresholds(records: list[dict], signal: str, thresholds: Mapping[str, float] | None) -> tuple[list, str]:
    """``([{"name", "tau", "note"}], note on where they came from)``; tau None when not finite."""
    if thresholds is not None:
        return [{"name": str(k), "tau": _num(v), "note": ""} for k, v in thresholds.items()], "given by the caller"
    from .calibration import calibrate_records

    try:
        cal = calibrate_records(records, signal=signal, segment="all", step=1)
    except ValueError as exc:  # no record with a finite step-1 value, or a run without step 1
        log.warning("viewer: no thresholds: %s", exc)
        return [], f"not available ({exc})"
    taus = []
    for name in ("mean", "info", "bayes", "universal"):
        tau = getattr(cal, "tau_" + name)
        note = cal.fallbacks.get(name, "")
        if math.isinf(tau) and tau < 0:
            note = note or "tau = -inf: never stop"
        taus.append({"name": name, "tau": _num(tau), "note": note})
    note = (f"calibrated in-sample on the step-1 results of this run ({cal.n_c} correct, {cal.n_i} incorrect or "
            f"unparseable{f', {cal.n_excluded} without a value' if cal.n_excluded else ''}): for inspection, "
            "not an evaluation")
    return taus, note


def _step_payload(run_dir: Path, step: dict, signal: str, decode: Callable[[int], str], vocab: dict,
                  max_alt: int | None) -> dict:
    """The per-token data of one step: ids, entropies (3 decimals), segments, alternatives."""
    ref = step.get("trace")
    if not ref:
        return {"n": 0}
    columns = list(ref["columns"])
    if signal not in columns:
        raise ValueError(f"signal {signal!r} is not a trace column; the trace has {columns}")
    tr = read_trace(run_dir, ref)
    h = np.round(tr["values"][:, columns.index(signal)].astype(np.float64), 3)
    seg = tr["segment"].astype(np.int64)
    if len(seg) and (seg.min() < 0 or seg.max() > 2):
        raise ValueError(f"trace segment labels must be 0, 1 or 2; found {sorted(set(seg.tolist()))}")
    tokens = tr["token"].tolist()
    out = {"n": len(tokens), "tok": tokens,
           "h": [v if math.isfinite(v) else None for v in h.tolist()],
           "seg": (seg.astype(np.uint8) + 48).tobytes().decode("ascii"), "A": 0}
    ids = set(tokens)
    n_alt = int(ref.get("n_alt", 0))
    if max_alt is not None:
        n_alt = min(n_alt, max_alt)
    if n_alt:
        alt_ids = tr["alt_ids"][:, :n_alt]
        out["A"] = n_alt
        out["alt"] = alt_ids.reshape(-1).tolist()
        # float16 bit patterns: exact, and 5 digits at most; the page turns them back into floats.
        out["lp16"] = np.ascontiguousarray(tr["alt_logprobs"][:, :n_alt]).view(np.uint16).reshape(-1).tolist()
        ids.update(out["alt"])
    for i in ids:
        if i >= 0 and i not in vocab:  # a negative id (no alternative) has no text; the page shows ⟨id⟩
            vocab[i] = decode(i)
    return out


def build_payload(run_dir: str | Path, signal: str = DEFAULT_SIGNAL,
                  thresholds: Mapping[str, float] | None = None, *,
                  decode: Callable[[int], str] | None = None, problems: Iterable[str] | None = None,
                  max_alternatives: int | None = None) -> tuple[dict, list[dict | None]]:
    """The data the page embeds: ``(index, per_problem)``.

    ``index`` describes the run and every problem (ids, correctness per step, step means, tokens
    per step, thresholds, colour scale); ``per_problem[i]`` holds problem i's per-token data
    ``{"steps": [{"n", "tok", "h", "seg", "A", "alt", "lp16"}], "vocab": {id: text}}`` (None when
    the problem is not embedded). ``h`` is the signal in bits rounded to 3 decimals (None: no
    value), ``seg`` a string of segment digits, ``alt`` the ``n * A`` alternative ids row by row
    and ``lp16`` their float16 log-probabilities (nats) as bit patterns.
    """
    run_dir = Path(run_dir)
    signal_scale(signal)  # fail before reading anything when the signal is not an entropy
    records = read_records(run_dir)
    cfg = load_config(run_dir).get("config", {}) if (run_dir / CONFIG).exists() else {}
    own_decode = decode
    if own_decode is None:
        own_decode = default_decode(run_dir)
    decoded = own_decode is not None
    decode_fn = own_decode or _id_text
    wanted = None if problems is None else {str(p) for p in problems}

    taus, tau_note = _thresholds(records, signal, thresholds)
    index_rows, per_problem = [], []
    observed_max = 0.0
    for rec in records:
        pid = str(rec["problem_id"])
        steps = rec.get("steps", [])
        row = {"id": pid, "index": rec.get("index"), "task": rec.get("task"), "gold": rec.get("gold"),
               "policy": rec.get("policy"), "n_steps": rec.get("n_steps", len(steps)),
               "h1": _step_mean(steps[0], "all", signal) if steps else None,
               "steps": [{"step": s.get("step"), "correct": s.get("correct"), "answer": s.get("answer"),
                          "n": s.get("n_generated"), "stop": s.get("stop_reason"),
                          "grade": s.get("grade_reason"),
                          "means": {seg: _step_mean(s, seg, signal) for seg in ("all", "reasoning", "answer")},
                          "counts": s.get("counts") or {},
                          "traced": bool(s.get("trace"))} for s in steps]}
        embed = wanted is None or pid in wanted
        row["embedded"] = embed
        index_rows.append(row)
        if not embed:
            per_problem.append(None)
            continue
        vocab: dict[int, str] = {}
        step_data = [_step_payload(run_dir, s, signal, decode_fn, vocab, max_alternatives) for s in steps]
        for sd in step_data:
            finite = [v for v in sd.get("h", []) if v is not None]
            if finite:
                observed_max = max(observed_max, max(finite))
        per_problem.append({"steps": step_data, "vocab": {str(k): v for k, v in vocab.items()}})

    h_max, label = signal_scale(signal, observed_max)
    refine = cfg.get("refine", {}) if isinstance(cfg, dict) else {}
    model = cfg.get("model", {}).get("name_or_path") if isinstance(cfg.get("model"), dict) else None
    index = {
        "schema": 1,
        "run": str(run_dir.resolve().name),
        "model": (records[0].get("model") if records else None) or model,
        "task": (records[0].get("task") if records else None) or (cfg.get("task") or {}).get("name"),
        "n_steps_config": refine.get("steps"),
        "signal": signal, "label": label, "unit": "bits",
        "scale": {"max": h_max, "stops": [list(c) for c in COLOR_STOPS]},
        "thresholds": taus, "threshold_note": tau_note,
        "decoded": decoded, "chunk": CHUNK_TOKENS,
        "problems": index_rows,
    }
    return index, per_problem


# --------------------------------------------------------------------------------------------
# HTML


def _json_for_script(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>`` can occur)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def write_viewer(run_dir: str | Path, out_path: str | Path | None = None, signal: str = DEFAULT_SIGNAL,
                 thresholds: Mapping[str, float] | None = None, *,
                 decode: Callable[[int], str] | None = None, problems: Iterable[str] | None = None,
                 max_alternatives: int | None = None) -> Path:
    """Write the run's token-level viewer as one self-contained HTML file; returns its path.

    Args:
        run_dir: a run directory (``records.jsonl``, ``traces.bin`` when traces were recorded).
        out_path: where to write; default ``RUN_DIR/viewer.html``.
        signal: the trace column that colours the tokens and that the gate compares, in bits:
            ``topk_entropy@K`` (scale ``0 .. log2 K``) or ``full_entropy``. Higher = more uncertain.
        thresholds: ``{name: tau}`` in bits; None computes the four thresholds of METHOD.md section 3
            with :func:`tje_hf.calibration.calibrate_records` on every problem's step 1 (in-sample:
            shown for inspection, not an evaluation).
        decode: ``token_id -> text``; None uses the run's tokenizer when ``environment.json`` names a
            local ``model_source`` directory, else shows ids as ``⟨id⟩``. The model is never loaded.
        problems: embed the tokens of these problem ids only (the index still lists every problem);
            with 20 alternatives a 4 x 8192-token problem takes about 8 MB of HTML.
        max_alternatives: embed at most this many alternatives a token (None: all recorded).

    Example::

        >>> from tje_hf.viewer import write_viewer
        >>> write_viewer("runs/demo")                       # doctest: +SKIP
        PosixPath('runs/demo/viewer.html')
    """
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path is not None else run_dir / "viewer.html"
    index, per_problem = build_payload(run_dir, signal, thresholds, decode=decode, problems=problems,
                                       max_alternatives=max_alternatives)
    title = f"tje viewer: {index['model'] or 'run'} on {index['task'] or '?'} ({index['run']})"
    parts = [_HEAD.replace("__TITLE__", html.escape(title)).replace("__CSS__", _CSS),
             f'<script type="application/json" id="tje-index">{_json_for_script(index)}</script>\n']
    for i, data in enumerate(per_problem):
        if data is not None:
            parts.append(f'<script type="application/json" id="tje-p-{i}">{_json_for_script(data)}</script>\n')
    parts.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(parts)
    tmp.replace(out)
    log.info("viewer: wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def read_payload(html_path: str | Path) -> tuple[dict, dict[int, dict]]:
    """The embedded data of a viewer file: ``(index, {problem position: per-problem data})``."""
    text = Path(html_path).read_text(encoding="utf-8")
    blocks = dict(re.findall(r'<script type="application/json" id="tje-([^"]+)">(.*?)</script>', text, re.DOTALL))
    index = json.loads(blocks.pop("index"))
    return index, {int(k[2:]): json.loads(v) for k, v in blocks.items() if k.startswith("p-")}


_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header class="bar" id="bar"></header>
<main id="main" tabindex="-1"><p>Loading…</p></main>
<div id="tje-tip" class="tip" aria-hidden="true" hidden></div>
<div id="tje-live" class="sr-only" aria-live="polite" aria-atomic="true"></div>
<noscript><p class="noscript">This viewer needs JavaScript (it runs locally; nothing is fetched).</p></noscript>
"""

_CSS = r"""
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--focus:#0b57d0;--ok:#1a7f37;--bad:#cf222e;
--ans:#0b57d0;--hdr:#6e7781;--mono:ui-monospace,"SF Mono","Cascadia Mono","DejaVu Sans Mono","Liberation Mono",Menlo,Consolas,monospace}
*{box-sizing:border-box}
html{scroll-padding-top:7rem}
body{margin:0;color:var(--fg);background:#fff;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",Arial,sans-serif}
a{color:#0a58ca}
a:focus-visible,button:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
h1:focus,h2:focus{outline:none}
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
.bar{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid var(--line);padding:.55rem 1.25rem;
display:flex;gap:.6rem 1.6rem;align-items:center;flex-wrap:wrap;box-shadow:0 1px 3px rgba(0,0,0,.06)}
.bar .brand{font-weight:650}
.bar .nav{display:flex;gap:.9rem;align-items:center}
.bar .steps{display:flex;gap:.3rem;align-items:center}
.btn{font:inherit;font-size:14px;border:1px solid var(--line);background:var(--soft);border-radius:6px;padding:.15rem .55rem;cursor:pointer;color:var(--fg)}
.btn:hover{background:#eaeef2}
main{padding:1rem 1.5rem 5rem;max-width:1280px;margin:0 auto}
main:focus{outline:none}
h1{font-size:1.45rem;margin:.6rem 0 .3rem}
h2{font-size:1.12rem;margin:0}
.muted{color:var(--muted)}
.num{text-align:right;font-variant-numeric:tabular-nums}
table{border-collapse:collapse}
.tbl th,.tbl td{padding:.32rem .7rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
.tbl thead th{background:var(--soft);font-weight:600;font-size:14px;white-space:nowrap}
.tbl tbody tr:hover{background:#f6f8fa}
.tbl th.num,.tbl td.num{text-align:right}
th .sort{font:inherit;font-weight:600;background:none;border:0;padding:.1rem .2rem;cursor:pointer;color:var(--fg);border-radius:4px}
th .sort:hover{text-decoration:underline}
th .sort:focus-visible{outline:3px solid var(--focus);outline-offset:1px}
th .arrow{display:inline-block;width:1em;color:var(--muted)}
.ok{color:var(--ok);font-weight:700}.bad{color:var(--bad);font-weight:700}.unk{color:var(--muted);font-weight:700}
.marks span{display:inline-block;width:1.25em;text-align:center}
.gauge{position:relative;display:inline-block;width:150px;height:14px;vertical-align:middle;margin-left:.6rem;background:linear-gradient(#d1d9e0,#d1d9e0) 0 50%/100% 2px no-repeat}
.gauge i{position:absolute;top:0;width:3px;height:14px;margin-left:-1px;border-radius:1px}
.gauge b{position:absolute;top:2px;width:10px;height:10px;margin-left:-5px;border-radius:50%;background:#1f2328;border:2px solid #fff;box-shadow:0 0 0 1px #1f2328}
.sw{display:inline-block;width:.8em;height:.8em;border-radius:2px;vertical-align:-.05em;margin-right:.35em}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:.5rem 0 1rem}
.card{border:1px solid var(--line);border-radius:8px;padding:.6rem .9rem;background:#fff}
.legend{display:flex;align-items:center;gap:.6rem;font-size:14px}
.legend .grad{position:relative;width:260px;height:14px;border:1px solid #8c959f;border-radius:3px}
.legend .ticks{position:relative;width:260px;height:1.1em;font-size:12px;color:var(--muted);font-variant-numeric:tabular-nums}
.legend .ticks span{position:absolute;transform:translateX(-50%);white-space:nowrap}
.legend .ticks span::before{content:"";position:absolute;left:50%;top:-3px;width:1px;height:4px;background:#8c959f}
.seglegend{display:flex;gap:.8rem;font-size:14px;align-items:center}
.gate td,.gate th{padding:.28rem .7rem}
.step{margin:1.6rem 0 0;border-top:2px solid var(--line);padding-top:.8rem}
.stephead{display:flex;gap:.4rem 1.4rem;flex-wrap:wrap;align-items:baseline;margin-bottom:.45rem}
.meta{font-size:14px;color:var(--muted)}
.meta b{color:var(--fg);font-weight:600}
.strip{display:flex;height:10px;border-radius:3px;overflow:hidden;margin:.25rem 0 .6rem;border:1px solid var(--line)}
.strip span{display:block;height:100%}
.g0{background:#b7c3cf}.g1{background:var(--ans)}.g2{background:repeating-linear-gradient(135deg,#d0d7de 0 4px,#f6f8fa 4px 8px)}
.toks{font:15px/1.9 var(--mono);white-space:pre-wrap;overflow-wrap:anywhere;padding:.2rem 0;tab-size:4}
.chunk{display:block}
.chunk.r{content-visibility:auto}
.t{border-right:1px solid #fff;cursor:default;padding:.12em 0}
.t:hover{outline:1px solid #57606a}
.t:focus{outline:3px solid var(--focus);outline-offset:1px;position:relative;z-index:1}
.t.s1{border-bottom:3px solid var(--ans)}
.t.s2{color:var(--hdr);font-style:italic}
.t.nan{background-image:repeating-linear-gradient(135deg,#d0d7de 0 2px,transparent 2px 5px)}
.badge{display:inline-block;font:600 11px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;letter-spacing:.04em;text-transform:uppercase;border-radius:4px;padding:0 .45em;margin:0 .35em 0 .15em;vertical-align:.15em;white-space:nowrap}
.badge.b0{background:#eaeef2;color:#424a53;border:1px solid #b7c3cf}
.badge.b1{background:var(--ans);color:#fff}
.badge.b2{background:#fff;color:#57606a;border:1px dashed #8c959f}
.ph{background:repeating-linear-gradient(180deg,transparent 0 26px,#f3f4f6 26px 28px)}
.tip{position:fixed;z-index:20;max-width:min(440px,94vw);background:#fff;border:1px solid #8c959f;border-radius:8px;
box-shadow:0 6px 24px rgba(0,0,0,.18);padding:.55rem .7rem;font-size:14px;pointer-events:none}
.tip .tok{font-family:var(--mono);background:var(--soft);border:1px solid var(--line);border-radius:3px;padding:0 .3em}
.tip table{margin-top:.35rem;width:100%}
.tip td{padding:0 .45rem 0 0;line-height:1.3;white-space:nowrap}
.tip td.a{font-family:var(--mono);max-width:220px;overflow:hidden;text-overflow:ellipsis}
.tip td.p{text-align:right;font-variant-numeric:tabular-nums}
.tip td.pb{width:80px}.tip td.pb span{display:block;height:8px;background:#8c959f;border-radius:2px;min-width:1px}
.tip tr.chosen td{font-weight:700}.tip tr.chosen td.pb span{background:var(--focus)}
.tip .foot{margin-top:.3rem;color:var(--muted);font-size:13px}
.note{font-size:14px;color:var(--muted);max-width:62rem}
.noscript{padding:2rem}
"""

_JS = r"""
(function () {
"use strict";
performance.mark("tje-start");
const D = JSON.parse(document.getElementById("tje-index").textContent);
const main = document.getElementById("main"), bar = document.getElementById("bar");
const tip = document.getElementById("tje-tip"), live = document.getElementById("tje-live");
const SEG = ["reasoning", "answer", "header"];
const TAU_COLORS = ["#0969da", "#8250df", "#1a7f37", "#bc4c00", "#cf222e", "#57606a"];
const STOPS = D.scale.stops, HMAX = D.scale.max, CHUNK = D.chunk || 512;
const byId = new Map(D.problems.map((p, i) => [p.id, i]));
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const fmt = (x, d = 3) => (x === null || x === undefined || !isFinite(x)) ? "—" : x.toFixed(d);
const mark = c => c === true ? '<span class="ok" title="correct">✓</span>' : c === false
  ? '<span class="bad" title="incorrect">✗</span>' : '<span class="unk" title="unknown (unparseable)">?</span>';
const markWord = c => c === true ? "correct" : c === false ? "incorrect" : "unknown";
const sigLabel = D.label + " (" + D.unit + ")";

// The colour scale: the same piecewise-linear interpolation as tje_hf.viewer.entropy_color.
function color(h) {
  if (h === null || h === undefined) return null;
  let t = h / HMAX; t = t < 0 ? 0 : t > 1 ? 1 : t;
  const n = STOPS.length, x = t * (n - 1);
  const i = Math.min(Math.floor(x), n - 2), f = x - i, a = STOPS[i], b = STOPS[i + 1];
  return "rgb(" + Math.floor(a[0] + (b[0] - a[0]) * f + 0.5) + "," + Math.floor(a[1] + (b[1] - a[1]) * f + 0.5)
    + "," + Math.floor(a[2] + (b[2] - a[2]) * f + 0.5) + ")";
}
function f16(bits) {  // an IEEE half-precision bit pattern -> its exact value
  const s = bits & 0x8000 ? -1 : 1, e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * Math.pow(2, e - 15);
}
function legendHtml() {
  const grad = "linear-gradient(90deg," + STOPS.map((c, i) => "rgb(" + c.join(",") + ") "
    + (100 * i / (STOPS.length - 1)).toFixed(2) + "%").join(",") + ")";
  const ticks = [];
  for (let v = 0; v < HMAX - 0.45; v += 1) ticks.push([v, String(v)]);
  ticks.push([HMAX, HMAX.toFixed(2)]);
  return '<div class="legend" role="img" aria-label="Colour scale: ' + esc(sigLabel) + ' from 0 (lightest, confident) to '
    + HMAX.toFixed(2) + ' bits (darkest, uncertain)"><span>' + esc(D.label) + '</span><div><div class="grad" style="background:'
    + grad + '"></div><div class="ticks">' + ticks.map(([v, l]) => '<span style="left:' + (100 * v / HMAX).toFixed(2)
    + '%">' + l + '</span>').join("") + '</div></div><span class="muted">bits</span></div>';
}
function segLegendHtml() {
  return '<div class="seglegend" aria-label="segments"><span class="badge b0">reasoning</span>'
    + '<span class="badge b1">answer</span><span class="badge b2">header</span>'
    + '<span class="muted">answer tokens underlined</span></div>';
}

// ------------------------------------------------------------------ index
const tauList = D.thresholds.filter(t => t.tau !== null);
function stopsOf(p) { return p.h1 === null ? null : tauList.filter(t => p.h1 <= t.tau).length; }
function totalTokens(p) { return p.steps.reduce((a, s) => a + (s.n || 0), 0); }
const SORT_KEYS = {
  index: p => p.index, id: p => p.id, correct: p => p.steps.length ? p.steps.map(s => s.correct === true ? 2
    : s.correct === false ? 0 : 1).reduce((a, v) => a * 3 + v, 0) : null,
  h1: p => p.h1, stops: p => stopsOf(p), tokens: p => totalTokens(p),
};
let sortState = {key: "index", dir: 1}, lastProblem = null;
function sorted() {
  const f = SORT_KEYS[sortState.key], d = sortState.dir;
  const rows = D.problems.map((p, i) => [i, f(p)]);
  rows.sort((a, b) => {
    const x = a[1], y = b[1];
    if (x === null || x === undefined) return (y === null || y === undefined) ? a[0] - b[0] : 1;
    if (y === null || y === undefined) return -1;
    const c = typeof x === "string" ? x.localeCompare(y, undefined, {numeric: true}) : x - y;
    return c ? c * d : a[0] - b[0];
  });
  return rows.map(r => r[0]);
}
let gaugeLo = 0, gaugeHi = 1;
(function () {
  const vs = D.problems.map(p => p.h1).concat(tauList.map(t => t.tau)).filter(v => v !== null);
  if (vs.length) { gaugeLo = Math.min(...vs); gaugeHi = Math.max(...vs); }
  const pad = Math.max((gaugeHi - gaugeLo) * 0.06, 0.02); gaugeLo -= pad; gaugeHi += pad;
})();
const gx = v => (100 * (v - gaugeLo) / (gaugeHi - gaugeLo)).toFixed(2) + "%";
function gaugeHtml(h) {
  if (h === null) return "";
  return '<span class="gauge" aria-hidden="true">' + tauList.map((t, j) => '<i style="left:' + gx(t.tau)
    + ';background:' + TAU_COLORS[j % TAU_COLORS.length] + '"></i>').join("") + '<b style="left:' + gx(h) + '"></b></span>';
}
function rowHtml(i) {
  const p = D.problems[i], st = stopsOf(p);
  const marks = p.steps.map(s => mark(s.correct)).join("");
  const marksLabel = p.steps.map(s => "step " + s.step + " " + markWord(s.correct)).join(", ");
  const stopNames = tauList.filter(t => p.h1 !== null && p.h1 <= t.tau).map(t => t.name).join(", ");
  const link = p.embedded ? '<a href="#p=' + encodeURIComponent(p.id) + '">' + esc(p.id) + '</a>'
    : esc(p.id) + ' <span class="muted">(tokens not embedded)</span>';
  return '<tr data-i="' + i + '"><td class="num">' + (p.index ?? "") + '</td><td>' + link + '</td><td class="marks" aria-label="'
    + marksLabel + '">' + marks + '</td><td class="num" style="white-space:nowrap">' + fmt(p.h1) + gaugeHtml(p.h1) + '</td><td>'
    + (st === null ? "—" : st + " of " + tauList.length + (stopNames ? ' <span class="muted">(' + esc(stopNames) + ')</span>' : ""))
    + '</td><td class="num">' + p.steps.map(s => s.n ?? "—").join(" · ") + '</td><td class="num">' + totalTokens(p) + '</td></tr>';
}
const COLS = [["index", "#", "num"], ["id", "problem", ""], ["correct", "correct by step", ""],
  ["h1", "step-1 mean " + D.label + " (bits)", "num"], ["stops", "gate stops after step 1", ""],
  ["tokens", "tokens per step", "num", true], ["tokens", "total tokens", "num"]];
function showIndex() {
  teardown();
  document.title = "tje viewer: " + (D.model || "run") + " on " + (D.task || "?");
  bar.innerHTML = '<span class="brand">tje viewer</span><span>' + esc(D.model || "?") + ' · ' + esc(D.task || "?")
    + ' · ' + D.problems.length + ' problems</span><span class="muted">' + esc(D.run) + '</span>';
  const nStop = t => D.problems.filter(p => p.h1 !== null && p.h1 <= t.tau).length;
  const anyNote = D.thresholds.some(t => t.note);
  let h = '<h1 tabindex="-1">Problems</h1><div class="cards"><div class="card"><table class="tbl"><caption class="sr-only">Thresholds</caption>'
    + '<thead><tr><th>threshold</th><th class="num">τ (bits)</th><th class="num">stops after step 1</th>' + (anyNote ? '<th>note</th>' : '')
    + '</tr></thead><tbody>';
  D.thresholds.forEach((t, j) => {
    h += '<tr><td><span class="sw" style="background:' + TAU_COLORS[j % TAU_COLORS.length] + '"></span>' + esc(t.name)
      + '</td><td class="num">' + fmt(t.tau) + '</td><td class="num">' + (t.tau === null ? "—" : nStop(t) + " of " + D.problems.length) + '</td>'
      + (anyNote ? '<td class="note">' + esc(t.note || "") + '</td>' : '') + '</tr>';
  });
  if (!D.thresholds.length) h += '<tr><td colspan="3" class="muted">no thresholds</td></tr>';
  h += '</tbody></table><p class="note">Thresholds ' + esc(D.threshold_note) + '. The gate stops after step 1 when the step-1 mean '
    + esc(D.label) + ' (' + esc(D.signal) + ') ≤ τ.</p></div></div>';
  h += '<table class="tbl idx" id="idx"><caption class="sr-only">Problems; column headers are buttons that sort the table</caption><thead><tr>';
  COLS.forEach(([key, label, cls, nosort]) => {
    if (nosort) { h += '<th class="' + cls + '" scope="col">' + esc(label) + '</th>'; return; }
    h += '<th class="' + cls + '" scope="col" data-key="' + key + '" aria-sort="none"><button type="button" class="sort" data-key="'
      + key + '">' + esc(label) + '<span class="arrow" aria-hidden="true"></span></button></th>';
  });
  h += '</tr></thead><tbody></tbody></table>';
  main.innerHTML = h;
  fillRows();
  main.querySelector("#idx thead").addEventListener("click", e => {
    const b = e.target.closest("button.sort"); if (!b) return;
    const key = b.dataset.key;
    sortState = sortState.key === key ? {key, dir: -sortState.dir} : {key, dir: 1};
    fillRows();
  });
  const back = lastProblem !== null && main.querySelector('tr[data-i="' + lastProblem + '"] a');
  if (back) { back.focus(); } else { window.scrollTo(0, 0); }
}
function fillRows() {
  const tb = main.querySelector("#idx tbody");
  tb.innerHTML = sorted().map(rowHtml).join("");
  main.querySelectorAll("#idx thead th[data-key]").forEach(th => {
    const on = th.dataset.key === sortState.key && th.querySelector("button");
    th.setAttribute("aria-sort", on ? (sortState.dir > 0 ? "ascending" : "descending") : "none");
    const arrow = th.querySelector(".arrow"); if (arrow) arrow.textContent = on ? (sortState.dir > 0 ? "▲" : "▼") : "";
  });
}

// ------------------------------------------------------------------ problem view
let cur = null;
function teardown() {
  hideTip();
  if (!cur) return;
  if (cur.io) cur.io.disconnect();
  if (cur.idle) (window.cancelIdleCallback || clearTimeout)(cur.idle);
  cur = null;
}
const textCache = new Map();
function tokText(V, id) { const s = V[id]; return (s === undefined || s === "") ? "⟨" + id + "⟩" : s; }
function tokHtml(V, id) {
  let s = textCache.get(id);
  if (s === undefined) { s = esc(tokText(V, id)).replace(/\n/g, "↵\n"); textCache.set(id, s); }
  return s;
}
const visible = s => s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
function chunkBounds(S, V) {
  const out = []; let a = 0;
  for (let i = 0; i < S.n; i++) {
    const len = i - a + 1;
    if ((len >= CHUNK && tokText(V, S.tok[i]).endsWith("\n")) || len >= 2 * CHUNK) { out.push([a, i + 1]); a = i + 1; }
  }
  if (a < S.n) out.push([a, S.n]);
  return out;
}
function renderChunk(st, c) {
  const ch = st.chunks[c];
  if (ch.done) return;
  const S = st.S, V = cur.V, seg = S.seg;
  let h = "";
  for (let i = ch.a; i < ch.b; i++) {
    const g = seg.charCodeAt(i) - 48;
    if (i === 0 || seg.charCodeAt(i - 1) !== seg.charCodeAt(i)) h += '<span class="badge b' + g + '">' + SEG[g] + '</span>';
    const col = color(S.h[i]);
    h += '<span class="t s' + g + (col ? "" : " nan") + '" tabindex="' + (i === st.roving ? 0 : -1) + '" data-i="' + i + '"'
      + (col ? ' style="background:' + col + '"' : "") + '>' + tokHtml(V, S.tok[i]) + '</span>';
  }
  ch.el.innerHTML = h;
  ch.el.classList.remove("ph"); ch.el.classList.add("r");
  ch.el.style.height = "";
  ch.el.style.containIntrinsicSize = "auto " + ch.est + "px";
  ch.done = true; cur.pending--;
  if (c === 0) st.toks.removeAttribute("tabindex");
  if (cur.io) cur.io.unobserve(ch.el);
}
function chunkOf(st, i) {
  let lo = 0, hi = st.chunks.length - 1;
  while (lo < hi) { const m = (lo + hi + 1) >> 1; if (st.chunks[m].a <= i) lo = m; else hi = m - 1; }
  return lo;
}
function tokenEl(st, i) {
  const c = chunkOf(st, i); renderChunk(st, c);
  return st.chunks[c].el.querySelector('[data-i="' + i + '"]');
}
function scheduleIdle() {
  const ric = window.requestIdleCallback || (cb => setTimeout(() => cb({timeRemaining: () => 8}), 16));
  const me = cur;
  const work = dl => {
    if (cur !== me) return;
    while (cur.queue.length && dl.timeRemaining() > 2) { const [s, c] = cur.queue.shift(); renderChunk(cur.steps[s], c); }
    while (cur.queue.length && cur.steps[cur.queue[0][0]].chunks[cur.queue[0][1]].done) cur.queue.shift();
    if (cur.queue.length) cur.idle = ric(work, {timeout: 300});
    else { cur.idle = null; window.__tjeAllRendered = performance.now(); document.documentElement.dataset.allRendered = "1"; }
  };
  cur.idle = ric(work, {timeout: 300});
}
function measureChars(toks) {  // characters per line and pixels per line of the token font
  const probe = document.createElement("span"); probe.textContent = "0123456789".repeat(10);
  toks.appendChild(probe);
  const w = probe.getBoundingClientRect().width / 100, lh = parseFloat(getComputedStyle(toks).lineHeight) || 28;
  probe.remove();
  return [Math.max(20, Math.floor(toks.clientWidth / (w || 9))), lh];
}
function loadProblem(i) {
  const el = document.getElementById("tje-p-" + i);
  return el ? JSON.parse(el.textContent) : null;
}
function gateRows(p) {
  const last = p.steps[p.steps.length - 1], first = p.steps[0];
  const full = p.policy === "all" || p.steps.length > 1;
  return D.thresholds.map((t, j) => {
    const sw = '<span class="sw" style="background:' + TAU_COLORS[j % TAU_COLORS.length] + '"></span>';
    if (t.tau === null || p.h1 === null) return '<tr><td>' + sw + esc(t.name) + '</td><td class="num">' + fmt(t.tau)
      + '</td><td colspan="3" class="muted">' + (p.h1 === null ? "no step-1 value" : esc(t.note || "no threshold")) + '</td></tr>';
    const stop = p.h1 <= t.tau;
    const res = stop ? first : (full ? last : null);
    return '<tr><td>' + sw + esc(t.name) + '</td><td class="num">' + fmt(t.tau) + '</td><td>' + fmt(p.h1) + (stop ? " ≤ " : " > ") + fmt(t.tau)
      + '</td><td><b>' + (stop ? "stop after step 1" : "run all " + (D.n_steps_config || p.n_steps) + " steps") + '</b></td><td>'
      + (res ? 'answer ' + esc(res.answer ?? "none") + ' (step ' + res.step + ') ' + mark(res.correct) : '<span class="muted">not run (gated run)</span>')
      + '</td></tr>';
  }).join("");
}
function showProblem(i) {
  teardown();
  performance.mark("tje-open");
  const p = D.problems[i], data = loadProblem(i);
  performance.mark("tje-parsed");
  lastProblem = i;
  document.title = "Problem " + p.id + " · tje viewer";
  const prev = i > 0 ? '<a href="#p=' + encodeURIComponent(D.problems[i - 1].id) + '">‹ previous</a>' : "";
  const next = i + 1 < D.problems.length ? '<a href="#p=' + encodeURIComponent(D.problems[i + 1].id) + '">next ›</a>' : "";
  bar.innerHTML = '<nav class="nav" aria-label="problems"><a href="#">← all problems</a>' + prev + next + '</nav>'
    + '<div class="steps" role="group" aria-label="jump to step">' + p.steps.map((s, k) => '<button type="button" class="btn" data-jump="'
    + k + '">step ' + s.step + '</button>').join("") + '</div>' + legendHtml() + segLegendHtml();
  let h = '<h1 tabindex="-1">Problem ' + esc(p.id) + '</h1><p class="meta">' + esc(D.task || "") + (p.index !== null ? ' #' + p.index : "")
    + ' · gold answer <b>' + esc(p.gold ?? "?") + '</b> · ' + p.steps.length + ' step' + (p.steps.length === 1 ? "" : "s") + ' recorded (policy '
    + esc(p.policy || "?") + ') · model ' + esc(D.model || "?") + '</p>';
  h += '<section aria-labelledby="gate-h"><h2 id="gate-h">Gate</h2><p class="note">Step-1 mean ' + esc(D.label) + ' H₁ = <b>' + fmt(p.h1)
    + '</b> bits. Stop after step 1 when H₁ ≤ τ, else run all steps and return the last answer.</p>'
    + '<table class="tbl gate"><thead><tr><th>threshold</th><th class="num">τ</th><th>H₁ vs τ</th><th>decision</th><th>returned</th></tr></thead><tbody>'
    + (D.thresholds.length ? gateRows(p) : '<tr><td colspan="5" class="muted">no thresholds</td></tr>') + '</tbody></table></section>';
  p.steps.forEach((s, k) => {
    const m = s.means, cnt = s.counts || {};
    const meanTxt = ["all", "reasoning", "answer"].map(g => g + " <b>" + fmt(m[g]) + "</b>" + (cnt[g] !== undefined ? ' <span class="muted">(' + cnt[g] + ')</span>' : "")).join(" · ");
    h += '<section class="step" data-s="' + k + '" aria-labelledby="st-' + k + '"><div class="stephead"><h2 id="st-' + k + '">Step ' + s.step + '</h2>'
      + '<span class="meta">answer <b>' + esc(s.answer ?? "none") + '</b> ' + mark(s.correct) + ' · ' + (s.n ?? 0) + ' tokens · stop: ' + esc(s.stop || "?")
      + '</span><span class="meta">mean ' + esc(D.label) + ' (bits): ' + meanTxt + '</span></div>';
    const S = data && data.steps[k];
    if (!S || !S.n) { h += '<p class="muted">' + (data ? "No per-token trace recorded for this step (signals.trace was off)." : "Tokens not embedded in this file.") + '</p></section>'; return; }
    h += '<div class="strip" aria-hidden="true"></div><div class="toks" tabindex="0" role="group" aria-label="Step ' + s.step + ' tokens, ' + S.n
      + '. Arrow keys move between tokens; Home and End jump to the first and last."></div></section>';
  });
  main.innerHTML = h;
  cur = {i, V: data ? data.vocab : {}, steps: [], queue: [], pending: 0, io: null, idle: null};
  window.__tjeReady = undefined; window.__tjeAllRendered = undefined;
  delete document.documentElement.dataset.ready; delete document.documentElement.dataset.allRendered;
  const sections = main.querySelectorAll("section.step");
  let metrics = null;
  sections.forEach(sec => {
    const k = +sec.dataset.s, S = data && data.steps[k];
    const st = {k, S, roving: 0, chunks: [], toks: sec.querySelector(".toks")};
    cur.steps.push(st);
    if (!st.toks) return;
    if (!metrics) metrics = measureChars(st.toks);
    const [cpl, lh] = metrics;
    const runs = []; let a = 0;
    for (let j = 1; j <= S.n; j++) if (j === S.n || S.seg[j] !== S.seg[a]) { runs.push([S.seg.charCodeAt(a) - 48, a, j]); a = j; }
    sec.querySelector(".strip").innerHTML = runs.map(([g, x, y]) => '<span class="g' + g + '" style="width:' + (100 * (y - x) / S.n)
      + '%" title="' + SEG[g] + ': tokens ' + (x + 1) + '–' + y + '"></span>').join("");
    const frag = document.createDocumentFragment();
    chunkBounds(S, cur.V).forEach(([x, y], c) => {
      let chars = 0, lines = 1;
      for (let j = x; j < y; j++) { const t = tokText(cur.V, S.tok[j]); chars += t.length + 0.3; if (t.indexOf("\n") >= 0) lines++; }
      const est = Math.ceil((chars / cpl + lines) * lh);
      const el = document.createElement("div"); el.className = "chunk ph"; el.style.height = est + "px"; el.dataset.c = c;
      frag.appendChild(el);
      st.chunks.push({a: x, b: y, el, est, done: false}); cur.pending++; if (c) cur.queue.push([k, c]);
    });
    st.toks.appendChild(frag);
  });
  performance.mark("tje-built");
  // First paint: the first chunk of step 1; the IntersectionObserver adds what is near the viewport.
  // Idle time renders the first chunk of every other step next (the keyboard's entry points), then the rest.
  const firsts = cur.steps.filter(st => st.chunks.length).map(st => [st.k, 0]);
  if (firsts.length) renderChunk(cur.steps[firsts[0][0]], 0);
  cur.queue = firsts.slice(1).concat(cur.queue);
  performance.mark("tje-rendered");
  const io = new IntersectionObserver(es => {
    for (const e of es) if (e.isIntersecting) { const sec = e.target.closest("section.step"); renderChunk(cur.steps[+sec.dataset.s], +e.target.dataset.c); }
  }, {rootMargin: "1200px 0px"});
  cur.io = io;
  cur.steps.forEach(st => st.chunks.forEach(ch => { if (!ch.done) io.observe(ch.el); }));
  scheduleIdle();
  window.scrollTo(0, 0);
  main.querySelector("h1").focus({preventScroll: true});
  const me = cur;
  requestAnimationFrame(() => requestAnimationFrame(() => {
    if (cur !== me) return;
    window.__tjeReady = performance.now(); document.documentElement.dataset.ready = "1";
  }));
}

// ------------------------------------------------------------------ tooltip and keyboard
function stepOf(t) { const sec = t.closest("section.step"); return sec && cur ? cur.steps[+sec.dataset.s] : null; }
function describe(st, i) {
  const S = st.S, V = cur.V, id = S.tok[i], g = S.seg.charCodeAt(i) - 48, A = S.A || 0;
  const alts = [];
  let mass = 0;
  for (let r = 0; r < A; r++) {
    const aid = S.alt[i * A + r], p = Math.exp(f16(S.lp16[i * A + r]));
    mass += p; alts.push({id: aid, text: tokText(V, aid), p, chosen: aid === id});
  }
  return {id, text: tokText(V, id), g, h: S.h[i], alts, mass, A, n: S.n};
}
function showTip(t) {
  const st = stepOf(t); if (!st || !st.S) return;
  const i = +t.dataset.i, d = describe(st, i);
  let h = '<div><span class="tok">' + esc(visible(d.text)) + '</span> <span class="muted">id ' + d.id + ' · token ' + (i + 1) + ' of ' + d.n
    + ' · ' + SEG[d.g] + '</span></div><div>' + esc(D.label) + ': <b class="h">' + fmt(d.h) + '</b> bits</div>';
  if (d.A) {
    h += '<table aria-hidden="true"><tbody>' + d.alts.map((a, r) => '<tr class="alt' + (a.chosen ? " chosen" : "") + '"><td class="muted">' + (r + 1)
      + '</td><td class="a">' + esc(visible(a.text)) + '</td><td class="p">' + a.p.toFixed(3) + '</td><td class="pb"><span style="width:'
      + Math.min(100, 100 * a.p).toFixed(1) + '%"></span></td></tr>').join("") + '</tbody></table><div class="foot">top ' + d.A
      + ' alternatives (full-vocabulary probability); together ' + d.mass.toFixed(3) + (d.alts.some(a => a.chosen) ? "" : "; the generated token is not among them") + '</div>';
  } else {
    h += '<div class="foot">no alternatives recorded (signals.trace_alternatives = 0)</div>';
  }
  tip.innerHTML = h; tip.hidden = false;
  tip.style.left = "0px"; tip.style.top = "0px";
  // Below the token, else above, else beside it: never over the token itself.
  const r = t.getBoundingClientRect(), w = tip.offsetWidth, ht = tip.offsetHeight, W = innerWidth, H = innerHeight;
  let x = Math.max(8, Math.min(r.left, W - w - 8)), y;
  if (r.bottom + 6 + ht <= H - 8) y = r.bottom + 6;
  else if (r.top - 6 - ht >= 8) y = r.top - 6 - ht;
  else {
    y = Math.max(8, Math.min(r.top + r.height / 2 - ht / 2, H - ht - 8));
    x = r.right + 12 + w <= W - 8 ? r.right + 12 : Math.max(8, r.left - 12 - w);
  }
  tip.style.left = x + "px"; tip.style.top = y + "px";
}
function hideTip() { tip.hidden = true; }
function announce(t) {
  const st = stepOf(t); if (!st || !st.S) return;
  const i = +t.dataset.i, d = describe(st, i);
  let s = "Token " + JSON.stringify(d.text) + ", " + (i + 1) + " of " + d.n + ", " + SEG[d.g] + ", entropy " + fmt(d.h) + " bits.";
  if (d.A) s += " Alternatives: " + d.alts.map(a => JSON.stringify(a.text) + " " + a.p.toFixed(3)).join(", ") + ".";
  live.textContent = s;
}
function focusToken(st, j) {
  const el = tokenEl(st, Math.max(0, Math.min(st.S.n - 1, j)));
  if (el) el.focus();
}
function vertical(st, t, dir) {  // the token above or below, at the same horizontal position
  const lh = parseFloat(getComputedStyle(st.toks).lineHeight) || 28;
  let r = t.getBoundingClientRect();
  if (dir > 0 && r.bottom + lh > innerHeight - 4) { window.scrollBy(0, lh * 3); r = t.getBoundingClientRect(); }
  if (dir < 0 && r.top - lh < 90) { window.scrollBy(0, -lh * 3); r = t.getBoundingClientRect(); }
  const y = dir > 0 ? r.bottom + lh * 0.5 : r.top - lh * 0.5;
  const box = st.toks.getBoundingClientRect();
  const at = x => { const e = document.elementFromPoint(x, y), u = e && e.closest && e.closest(".t");
    return u && u !== t && stepOf(u) === st ? +u.dataset.i : null; };
  // Nearest token on that line: leftwards first (the line may be shorter), then rightwards (past a label).
  for (let x = r.left + 2; x >= box.left; x -= 6) { const j = at(x); if (j !== null) return j; }
  for (let x = r.left + 8; x <= box.right; x += 6) { const j = at(x); if (j !== null) return j; }
  return +t.dataset.i + dir;
}
main.addEventListener("mouseover", e => { const t = e.target.closest && e.target.closest(".t"); if (t) showTip(t); });
main.addEventListener("mouseout", e => {
  const t = e.target.closest && e.target.closest(".t");
  if (!t || (e.relatedTarget && e.relatedTarget.closest && e.relatedTarget.closest(".t"))) return;
  const f = document.activeElement;
  if (f && f.classList && f.classList.contains("t")) showTip(f); else hideTip();
});
main.addEventListener("focusin", e => {
  const t = e.target;
  if (t.classList && t.classList.contains("toks") && cur) {  // Tab reached a step whose first chunk is not rendered yet
    const st = cur.steps[+t.closest("section.step").dataset.s]; if (st && st.chunks.length) focusToken(st, st.roving);
    return;
  }
  if (!t.classList || !t.classList.contains("t")) return;
  const st = stepOf(t);
  if (st && st.roving !== +t.dataset.i) {
    const old = st.toks.querySelector('.t[tabindex="0"]'); if (old) old.tabIndex = -1;
    t.tabIndex = 0; st.roving = +t.dataset.i;
  }
  showTip(t); announce(t);
});
main.addEventListener("focusout", e => {
  const n = e.relatedTarget;
  if (e.target.classList && e.target.classList.contains("t") && !(n && n.classList && n.classList.contains("t"))) hideTip();
});
main.addEventListener("keydown", e => {
  const t = e.target;
  if (!t.classList || !t.classList.contains("t") || e.altKey || e.ctrlKey || e.metaKey) return;
  const st = stepOf(t), i = +t.dataset.i;
  let j;
  switch (e.key) {
    case "ArrowRight": j = i + 1; break;
    case "ArrowLeft": j = i - 1; break;
    case "ArrowDown": j = vertical(st, t, 1); break;
    case "ArrowUp": j = vertical(st, t, -1); break;
    case "PageDown": j = i + 100; break;
    case "PageUp": j = i - 100; break;
    case "Home": j = 0; break;
    case "End": j = st.S.n - 1; break;
    case "Escape": hideTip(); return;
    default: return;
  }
  e.preventDefault();
  focusToken(st, j);
});
bar.addEventListener("click", e => {
  const b = e.target.closest("button[data-jump]"); if (!b || !cur) return;
  const st = cur.steps[+b.dataset.jump];
  const sec = main.querySelector('section.step[data-s="' + b.dataset.jump + '"]');
  sec.scrollIntoView({block: "start"});
  if (st && st.chunks.length) focusToken(st, st.roving); else sec.querySelector("h2").focus();
});
let scrollQueued = false;
window.addEventListener("scroll", () => {  // keep the focused token's tooltip attached; drop a hover tooltip
  if (tip.hidden || scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    const f = document.activeElement;
    if (f && f.classList && f.classList.contains("t")) showTip(f); else hideTip();
  });
}, {passive: true});
window.addEventListener("resize", () => { if (!tip.hidden) hideTip(); });

function route() {
  const m = /^#p=(.*)$/.exec(location.hash);
  if (m) {
    const id = decodeURIComponent(m[1]);
    if (byId.has(id)) return showProblem(byId.get(id));
  }
  showIndex();
}
window.addEventListener("hashchange", route);
route();
})();
"""
