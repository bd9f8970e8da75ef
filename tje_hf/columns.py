"""Signal columns: the names, units and directions of every per-token signal, written once.

A *signal* is one per-token quantity (``topk_entropy``, ``full_entropy``, ...); a *column* is a
signal as it is recorded: ``topk_entropy@K`` for top-k entropy at a given k, the signal's own
name for the others. Step means are stored per segment (:data:`SEGMENTS`) and column.

Direction: every consumer (the live gate, the in-step window stop, calibration, evaluation,
reports, the viewer) reads it from :func:`higher_is_uncertain` and orients values with
:func:`uncertainty`, so that "at or below tau" always means "confident enough".

Torch-free: imported by the configs, the analysis and the CLI.
"""

from __future__ import annotations

SIGNAL_NAMES = ("topk_entropy", "full_entropy", "deepconf_confidence", "self_certainty", "token_logprob")
SIGNAL_UNITS = {
    "topk_entropy": "bits",
    "full_entropy": "bits",
    "deepconf_confidence": "nats",
    "self_certainty": "nats",
    "token_logprob": "nats",
}
# True: a higher value means a less certain model (entropies). False: a confidence (DeepConf's
# confidence, self-certainty, the sampled token's log-probability).
HIGHER_IS_UNCERTAIN = {
    "topk_entropy": True,
    "full_entropy": True,
    "deepconf_confidence": False,
    "self_certainty": False,
    "token_logprob": False,
}
# The column the gate, calibration, reports and the viewer use unless told otherwise: the
# method's signal, top-20 entropy in bits.
DEFAULT_COLUMN = "topk_entropy@20"
# Step means are kept over all generated tokens and over each segment of them.
SEGMENTS = ("all", "reasoning", "answer")


def signal_columns(ks: tuple[int, ...]) -> tuple[str, ...]:
    """The recorded columns for top-k sizes ``ks``, in trace order: ``topk_entropy@K`` for each
    K, then the other signals."""
    return tuple(f"topk_entropy@{k}" for k in ks) + SIGNAL_NAMES[1:]


def signal_of(column: str) -> str:
    """``"topk_entropy@20" -> "topk_entropy"``; raises ``ValueError`` for an unknown column."""
    base, _, k = column.partition("@")
    if base not in HIGHER_IS_UNCERTAIN or (base == "topk_entropy") != bool(k) or (k and not k.isdigit()):
        raise ValueError(f"unknown signal {column!r}; known columns: topk_entropy@K (K a recorded top-k "
                         f"size), {', '.join(SIGNAL_NAMES[1:])}")
    return base


def column_error(column: str, ks: tuple[int, ...]) -> str | None:
    """Why ``column`` cannot be read from a run that records top-k sizes ``ks`` (None: it can)."""
    try:
        signal = signal_of(column)
    except ValueError as exc:
        return str(exc)
    if signal == "topk_entropy" and int(column.partition("@")[2]) not in ks:
        return f"top-k size not recorded (signals.ks = {list(ks)})"
    return None


def unit_of(column: str) -> str:
    return SIGNAL_UNITS[signal_of(column)]


def higher_is_uncertain(column: str) -> bool:
    return HIGHER_IS_UNCERTAIN[signal_of(column)]


def uncertainty(value: float, column: str) -> float:
    """``value`` oriented so that higher means more uncertain (a confidence is negated)."""
    return value if higher_is_uncertain(column) else -value
