"""The palette and labels of the threshold methods, defined once for every figure and the viewer.

``report.py`` draws its PNGs with these colours and line styles; ``tje_hf.viewer.payload`` puts
:func:`palette` into the page's data, and ``static/viewer.js`` reads the colours from there (it has no
table of its own), so a method has one colour everywhere.

The built-in colours are from the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies); a method added with :func:`tje_hf.analysis.calibration.register_threshold` takes its
own ``color`` if it gave one, else the next unused colour of :data:`EXTRA_COLORS`.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import calibration

#: One colour per built-in threshold method.
METHOD_COLORS: dict[str, str] = {
    "mean": "#0072B2",       # blue
    "info": "#009E73",       # bluish green
    "bayes": "#D55E00",      # vermillion
    "universal": "#CC79A7",  # reddish purple
}
#: Colours for further methods (or thresholds given by name), in order.
EXTRA_COLORS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#8C6D31", "#7F7F7F", "#332288", "#117733")
#: The threshold a ``policy: gate`` run used (config.json ``refine.tau``).
RUN_TAU_COLOR = "#000000"
RUN_TAU_NAME = "run"
#: matplotlib line styles of the built-ins; further methods cycle through :data:`EXTRA_LINESTYLES`.
METHOD_LINESTYLES: dict[str, str] = {"mean": "-", "info": "--", "bayes": "-.", "universal": ":"}
EXTRA_LINESTYLES: tuple = ((0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1)))
#: The two uniform baselines of the budget comparison (docs/method.md section 5).
UNIFORM_CAP_COLOR, UNIFORM_SPEND_COLOR = "#000000", "#6E6E6E"
#: Histogram bars: greys (the incorrect ones hatched), so that the coloured threshold lines stand out.
CORRECT_COLOR, INCORRECT_COLOR = "#D0D0D0", "#8C8C8C"


def palette(names: Iterable[str]) -> dict[str, str]:
    """``{name: "#rrggbb"}``: a registered method's own colour, else the built-in one, else the next
    unused colour of :data:`EXTRA_COLORS` (cycling), in the order of ``names``. ``"run"`` (the
    threshold of a gate run) is black."""
    out: dict[str, str] = {}
    names = list(names)
    taken: set[str] = set()
    for name in names:
        method = calibration.threshold_method(name)
        color = (method.color if method is not None else None) or METHOD_COLORS.get(name)
        if name == RUN_TAU_NAME and color is None:
            color = RUN_TAU_COLOR
        if color is not None:
            out[name] = color
            taken.add(color.lower())
    free = [c for c in EXTRA_COLORS if c.lower() not in taken] or list(EXTRA_COLORS)
    j = 0
    for name in names:
        if name not in out:
            out[name] = free[j % len(free)]
            j += 1
    return out


def linestyles(names: Iterable[str]) -> dict:
    """``{name: matplotlib line style}``, the built-ins' own, the others from :data:`EXTRA_LINESTYLES`."""
    out, j = {}, 0
    for name in names:
        if name in METHOD_LINESTYLES:
            out[name] = METHOD_LINESTYLES[name]
        else:
            out[name] = EXTRA_LINESTYLES[j % len(EXTRA_LINESTYLES)]
            j += 1
    return out


def method_title(name: str, *, mark_reconstruction: bool = True) -> str:
    """``"tau_universal (scale-invariant; reconstruction)"``: the name, the registered label, and the
    word *reconstruction* when the formula is ours rather than the paper's (unless the caller marks it
    otherwise: ``mark_reconstruction=False``)."""
    method = calibration.threshold_method(name)
    if method is None:
        return f"tau_{name}"
    label = method.label if method.label != name else ""
    if method.reconstruction and mark_reconstruction:
        label = f"{label}; reconstruction" if label else "reconstruction"
    return f"tau_{name} ({label})" if label else f"tau_{name}"


def is_reconstruction(name: str) -> bool:
    method = calibration.threshold_method(name)
    return bool(method is not None and method.reconstruction)
