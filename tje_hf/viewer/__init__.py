"""A token-level trace viewer: one run directory in, one self-contained HTML file out (``tje view``).

The contract: :func:`write_viewer` turns the records and the per-token trace sidecar of a run (read
through :mod:`tje_hf.records`, never parsed here) into ONE HTML file that opens from disk with no
network, no external script, font or image; :func:`read_payload` returns the data embedded in such
a file. The page has an index of problems (sortable) and one view per problem that shows every
refinement step's tokens coloured by their per-token entropy, the reasoning / answer / header
segments, the step means, the early-stop gate's decision for each threshold, and each token's
recorded top-k alternatives on hover or keyboard focus. Every value of the run that the page
displays is escaped, whatever its JSON type.

Layout: :mod:`.payload` builds the JSON the page embeds (records and traces, token text,
thresholds, the colour scale :data:`COLOR_STOPS` / :func:`entropy_color`, which the page's
JavaScript evaluates identically); :mod:`.page` fills ``static/page.html`` with
``static/viewer.css``, ``static/viewer.js`` and that JSON.

What does not live here: reading or writing run files (``records.py``), threshold math
(``calibration.py``: the thresholds are computed there, in-sample, and only displayed here), and
plots or summary statistics (``report.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..errors import RunDirError
from ..records import VIEWER
from .page import read_payload, write_page
from .payload import (
    CHUNK_TOKENS,
    COLOR_STOPS,
    DEFAULT_SIGNAL,
    SEGMENT_NAMES,
    build_payload,
    default_decode,
    entropy_color,
    signal_scale,
    tokenizer_decoder,
)

__all__ = [
    "CHUNK_TOKENS", "COLOR_STOPS", "DEFAULT_SIGNAL", "SEGMENT_NAMES", "build_payload", "default_decode",
    "entropy_color", "read_payload", "signal_scale", "tokenizer_decoder", "write_viewer",
]

log = logging.getLogger(__name__)


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
        thresholds: ``{name: tau}`` in bits; None computes the thresholds of every method of
            :data:`tje_hf.analysis.calibration.METHODS` (docs/method.md section 3) with
            :func:`tje_hf.analysis.calibration.calibrate_records` on every problem's step 1 (in-sample:
            shown for inspection, not an evaluation, and labelled so). A ``policy: gate`` run is
            shown with the tau it used (its config.json) and each problem's actual decision, never
            re-calibrated on itself; given thresholds follow the run's. Colours: the palette of
            :mod:`tje_hf.analysis.style`, the one the report's plots use.
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
    if not (run_dir / "records.jsonl").is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no records.jsonl); nothing written")
    out = Path(out_path) if out_path is not None else run_dir / VIEWER
    index, per_problem = build_payload(run_dir, signal, thresholds, decode=decode, problems=problems,
                                       max_alternatives=max_alternatives)
    write_page(out, index, per_problem)
    log.info("viewer: wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
