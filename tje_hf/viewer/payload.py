"""The viewer's data: one run directory in, the JSON the page embeds out (no HTML here).

Reads the records and the per-token trace sidecar of a run through :mod:`tje_hf.records` (never
parsing files here), decodes token ids to text (the run's tokenizer, or ``⟨id⟩``), takes the
thresholds from :mod:`tje_hf.analysis.calibration` (computed there, in-sample, only displayed here)
or, for a ``policy: gate`` run, the tau the run used (its config.json) with each problem's actual
decision, puts the thresholds' colours (:func:`tje_hf.analysis.style.palette`, the colours of the
report's plots) and labels into the payload, and defines the colour scale (:data:`COLOR_STOPS`, :func:`entropy_color`) that ``static/viewer.js``
evaluates identically, so that tests can compute a token's expected colour in Python.

Nothing from a run is trusted to have its documented JSON type: values are copied into the payload
as they are, and the page escapes everything it displays.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ..analysis.style import RUN_TAU_NAME
from ..columns import DEFAULT_COLUMN, higher_is_uncertain, unit_of
from ..records import CONFIG, load_config, load_environment, read_records, read_trace, with_steps

log = logging.getLogger(__name__)

DEFAULT_SIGNAL = DEFAULT_COLUMN
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
    from ..analysis.calibration import calibrate_records

    try:
        cal = calibrate_records(records, signal=signal, segment="all", step=1)
    except ValueError as exc:  # no record with a finite step-1 value, or a run without step 1
        log.warning("viewer: no thresholds: %s", exc)
        return [], f"not available ({exc})"
    taus = []
    for name, tau in cal.thresholds().items():  # every method of calibration.METHODS, in its order
        note = cal.fallbacks.get(name, "")
        if math.isinf(tau) and tau < 0:
            note = note or "tau = -inf: never stop"
        taus.append({"name": name, "tau": _num(tau), "note": note})
    note = (f"calibrated in-sample on the step-1 results of this run ({cal.n_c} correct, {cal.n_i} incorrect or "
            f"unparseable{f', {cal.n_excluded} without a value' if cal.n_excluded else ''}): for inspection, "
            "not an evaluation")
    return taus, note


def _gate_run(records: list[dict], cfg: dict) -> tuple[dict | None, list[dict | None]]:
    """``(gate_run, per-problem gate)`` of a ``policy: gate`` run, ``(None, [None] * Q)`` otherwise.

    ``gate_run``: the tau, column, segment and N the run used (its config.json), the unit, whether the
    column is a confidence (then the threshold is on its negation), and how many problems it stopped.
    Per problem: the step-1 gate value as recorded (``value``), oriented higher = more uncertain
    (``u``), and the run's own decision (``stopped``: only step 1 recorded while N > 1).
    """
    from ..analysis.gate_run import gate_settings, run_policy

    if run_policy(cfg, records) != "gate":
        return None, [None] * len(records)
    try:
        st = gate_settings(cfg, records)
        unit, up = unit_of(st.column), higher_is_uncertain(st.column)
    except ValueError as exc:
        log.warning("viewer: a policy='gate' run without a usable threshold: %s", exc)
        return None, [None] * len(records)
    rows = []
    for rec in records:
        steps = rec.get("steps") or []
        value = _step_mean(steps[0], st.segment, st.column) if steps else None
        rows.append({"value": value, "u": None if value is None else (value if up else -value),
                     "stopped": len(steps) == 1 and st.n_steps > 1})
    info = {"tau": _num(st.tau), "column": st.column, "segment": st.segment, "unit": unit, "n_steps": st.n_steps,
            "negated": not up, "n_stopped": sum(r["stopped"] for r in rows), "policy": "gate"}
    return info, rows


def _run_threshold(gate_run: dict) -> dict:
    """The threshold row of the tau a gate run used."""
    neg = " (a confidence: the threshold is on its negation)" if gate_run["negated"] else ""
    return {"name": RUN_TAU_NAME, "tau": gate_run["tau"],
            "note": f"used by the run: config.json refine.tau on the step-1 mean {gate_run['column']} "
                    f"({gate_run['unit']}{neg}), segment {gate_run['segment']}"}


def _threshold_style(taus: list[dict]) -> dict:
    """The palette (``tje_hf.analysis.style``: the colours of the report's plots) and the labels of the
    thresholds shown; ``reconstructed``: ``{name: note}`` for the reconstructed methods."""
    from ..analysis.calibration import threshold_method
    from ..analysis.style import method_title, palette

    names = [t["name"] for t in taus]
    recon = {}
    for n in names:
        m = threshold_method(n)
        if m is not None and m.reconstruction:
            recon[n] = m.note
    # The page marks a reconstruction with a badge of its own, so the label does not repeat it.
    labels = {n: ("the run's tau" if n == RUN_TAU_NAME else method_title(n, mark_reconstruction=False)) for n in names}
    return {"colors": palette(names), "labels": labels, "reconstructed": recon}


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


def _index_row(rec: dict, signal: str) -> dict:
    """One problem's row of the index (the values of the record as they are: the page escapes them)."""
    steps = rec.get("steps", [])
    return {"id": str(rec["problem_id"]), "index": rec.get("index"), "task": rec.get("task"), "gold": rec.get("gold"),
            # the question and the rendered step-1 prompt (records of schema 2; None before)
            "question": rec.get("question"), "prompt": rec.get("prompt"),
            "policy": rec.get("policy"), "n_steps": rec.get("n_steps", len(steps)),
            "h1": _step_mean(steps[0], "all", signal) if steps else None,
            "steps": [{"step": s.get("step"), "correct": s.get("correct"), "answer": s.get("answer"),
                       "n": s.get("n_generated"), "stop": s.get("stop_reason"),
                       "grade": s.get("grade_reason"),
                       "means": {seg: _step_mean(s, seg, signal) for seg in ("all", "reasoning", "answer")},
                       "counts": s.get("counts") or {},
                       "traced": bool(s.get("trace"))} for s in steps]}


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
    records = with_steps(read_records(run_dir))  # a problem that ran no step has no token to show
    cfg = load_config(run_dir).get("config", {}) if (run_dir / CONFIG).exists() else {}
    own_decode = decode
    if own_decode is None:
        own_decode = default_decode(run_dir)
    decoded = own_decode is not None
    decode_fn = own_decode or _id_text
    wanted = None if problems is None else {str(p) for p in problems}

    gate_run, gate_rows = _gate_run(records, cfg if isinstance(cfg, dict) else {})
    if gate_run is not None:
        # A gate run is shown with the tau it used and its own decisions, never re-calibrated on itself.
        given, _ = _thresholds(records, signal, thresholds) if thresholds is not None else ([], "")
        taus, kind = [_run_threshold(gate_run)] + given, "run"
        tau_note = (f"the threshold this run used (config.json refine.tau) on the step-1 mean {gate_run['column']} "
                    f"over segment {gate_run['segment']}; every decision shown is the run's own"
                    + ("; the others are given by the caller" if given else ""))
    else:
        taus, tau_note = _thresholds(records, signal, thresholds)
        kind = "given" if thresholds is not None else "in-sample"
    index_rows, per_problem = [], []
    observed_max = 0.0
    for rec, gate_row in zip(records, gate_rows, strict=True):
        row = _index_row(rec, signal)
        row["gate"] = gate_row
        pid, steps = row["id"], rec.get("steps", [])
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
        "thresholds": taus, "threshold_note": tau_note, "threshold_kind": kind, "gate_run": gate_run,
        **_threshold_style(taus),
        "decoded": decoded, "chunk": CHUNK_TOKENS,
        "problems": index_rows,
    }
    return index, per_problem

