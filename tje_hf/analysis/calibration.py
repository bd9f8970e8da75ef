"""Threshold calibration for the entropy gate (docs/method.md section 3): pure numpy, in memory.

What lives here: the threshold methods (:func:`calibrate`) and their registry
(:func:`register_threshold`, :data:`METHODS`: the four built-ins, and any a user adds, e.g. the
paper's scale-invariant formula once it is published), the Bayes boundary (:func:`bayes_threshold`),
Cohen's d (:func:`cohens_d`), and the reading of one step's signal out of records
(:func:`step_values`, :func:`calibrate_records`). What does not: evaluation of a gate on a
problem set (``table.py``, ``evaluation.py``, ``budget.py``, ``gate_run.py``), plots and files
(``report.py``), reading the run directory (``records.py``). Nothing here imports torch or touches
the disk (importing it through the ``tje_hf`` package still runs the package ``__init__``, which
imports torch).

Direction. Calibration assumes **higher value = more uncertain** everywhere: the gate stops after
step 1 when ``H <= tau``. The entropy signals already point that way. Signals that point the other
way (``deepconf_confidence``, ``self_certainty``, ``token_logprob``: higher = more confident) are
**negated** by :func:`step_values`, so a threshold on them is a threshold on ``-C`` (stop when
``-C <= tau``, i.e. ``C >= -tau``), in the signal's own unit.

Statistics. ``mu_c, sigma_c`` (``mu_i, sigma_i``) are the mean and the sample standard deviation
(``ddof=1``) of the values of the correct (incorrect) examples. Cohen's d uses the pooled sd
``s_p = sqrt((SS_c + SS_i) / (n_c + n_i - 2))`` (``SS`` the sum of squared deviations from the
class mean) and ``d = (mu_i - mu_c) / s_p``: d > 0 when wrong answers are less certain.

The thresholds (``d`` enters only as ``|d|``):

=================  ===========================================================================
``tau_mean``       ``mu_c``
``tau_info``       ``mu_c + sigma_c * ln(1 + |d|)``
``tau_bayes``      the root of ``a tau^2 + b tau + c = 0`` (see :func:`bayes_threshold`)
``tau_universal``  ``mu_c + sqrt|d| / (1 + sqrt|d|) * (mu_i - mu_c) * max(0, 1 - sigma_c / mu_c)``
=================  ===========================================================================

``tau_universal`` is a **reconstruction**: the paper does not publish its formula, only the clamp
``max(0, 1 - sigma_c / mu_c)`` is attested (docs/method.md section 3.4). It is registered with
``reconstruction=True``; :attr:`Calibration.reconstructed` and every report say so.

How the thresholds transform with the signal's unit. Write ``tau(H)`` for a threshold computed
from values ``H``. Under a positive rescaling ``H -> s H`` (``s > 0``; bits -> nats is
``s = ln 2``) every mean and sd scales by ``s``, and ``d``, ``sigma_c / mu_c``, the priors and
``ln(sigma_c / sigma_i)`` are unchanged. Under a shift ``H -> H + t`` means shift by ``t``, sds and
``d`` are unchanged, but ``sigma_c / mu_c`` changes.

=================  =====================  ==================  =====================================
threshold          scale ``tau(sH)``      shift ``tau(H+t)``  why
=================  =====================  ==================  =====================================
``tau_mean``       ``s tau(H)``           ``tau(H) + t``      a mean
``tau_info``       ``s tau(H)``           ``tau(H) + t``      ``sigma_c`` scales, ``d`` does not
``tau_bayes``      ``s tau(H)``           ``tau(H) + t``      see below
``tau_universal``  ``s tau(H)``           **no**              ``sigma_c / mu_c`` is scale-free but
                                                              not shift-free
=================  =====================  ==================  =====================================

``tau_bayes`` is scale-equivariant although ``c`` holds ``ln(sigma_c / sigma_i)`` and
``ln(pi_c / pi_i)``: under ``H -> s H``, ``a -> a / s^2``, ``b -> b / s``, and ``c`` is unchanged
(``mu^2 / sigma^2``, the ratio of sds and the priors are all scale-free), so
``(a/s^2)(s r)^2 + (b/s)(s r) + c = a r^2 + b r + c``: the roots scale by ``s``. The root selection
(between ``mu_c`` and ``mu_i``, else nearest their midpoint), the test "``|a|`` negligible" (made
relative to ``1 / (2 sigma^2)``) and every fallback condition are scale-free too. Under a shift,
the boundary of two Gaussians moves with them. ``tests/test_calibration.py`` checks each claim of
this table with hypothesis (up to floating-point rounding). So every method gives the same
decisions whether the entropy is in bits or in nats; only ``tau_universal`` depends on where zero
is (it assumes a signal with a natural zero, such as an entropy).

Fallbacks (each one is named in :attr:`Calibration.fallbacks`, key = method or ``"cohens_d"``):

- no correct examples: ``mu_c`` is undefined; every threshold is ``-inf`` (never stop: no step-1
  answer in the calibration set was right, so none is trusted);
- no incorrect examples: ``d`` is undefined; ``tau_info``, ``tau_bayes`` and ``tau_universal``
  fall back to ``tau_mean``;
- one example in a class: its sample sd (``ddof=1``) is undefined and is reported as NaN; the
  pooled sd ``s_p`` (the equal-variance assumption Cohen's d already makes; a single example adds
  nothing to ``SS``) stands in for it wherever a formula needs it;
- ``n_c + n_i < 3`` or ``s_p == 0`` (every value within each class equal): ``d`` is undefined;
  ``tau_info``, ``tau_bayes`` and ``tau_universal`` fall back to ``tau_mean``;
- Bayes with a class sd that is zero or undefined: both classes take ``s_p`` (equal variances, so
  the boundary is the linear one);
- Bayes with ``mu_i <= mu_c`` or no real root: ``tau_mean`` (docs/method.md);
- ``tau_universal`` with ``mu_c <= 0``: ``sigma_c / mu_c`` has no meaning for a signal without a
  positive mean (a negated confidence, or entropies that are all zero): ``tau_mean``.
  With ``mu_i < mu_c`` the formula itself is kept: it puts ``tau_universal`` below ``mu_c``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..columns import DEFAULT_COLUMN, higher_is_uncertain

METHODS: tuple[str, ...] = ()
"""The registered threshold methods, in registration order (the built-ins in docs/method.md's order:
``mean``, ``info``, ``bayes``, ``universal``). :func:`register_threshold` and
:func:`unregister_threshold` rebind it, so read it as ``calibration.METHODS`` at the time of use
(``from .calibration import METHODS`` keeps the tuple of import time). ``Calibration.tau_<method>``
holds each built-in; ``Calibration.taus`` every method."""


# |a| below this fraction of max(1/(2 sigma_c^2), 1/(2 sigma_i^2)) counts as zero (equal variances).
# Relative, so that the decision does not depend on the signal's unit.
_A_RTOL = 1e-9


@dataclass(frozen=True)
class Calibration:
    """Step-1 calibration statistics and the four thresholds (higher value = more uncertain).

    The gate stops after step 1 when ``H <= tau``. ``sigma_c`` / ``sigma_i`` are sample sds
    (``ddof=1``), NaN with fewer than two examples in the class; ``mu_i``, ``sigma_i`` are NaN
    without incorrect examples, ``mu_c``, ``sigma_c`` without correct ones. ``cohens_d`` is NaN when
    undefined. A threshold is ``-inf`` when there are no correct examples (never stop).
    ``fallbacks`` maps a method (or ``"cohens_d"``) to the reason a documented fallback was used;
    it is empty when every formula applied as written. ``n_excluded`` counts examples left out
    because their value was not finite (only :func:`calibrate_records` sets it).

    ``taus`` holds the threshold of every method registered when it was computed (the built-ins
    and any added with :func:`register_threshold`), in :data:`METHODS` order. ``reconstructed``
    maps each method whose formula is ours rather than the paper's (``universal`` by default:
    docs/method.md section 3.4) to the note that says so; every report names them.
    """

    mu_c: float
    sigma_c: float
    mu_i: float
    sigma_i: float
    n_c: int
    n_i: int
    cohens_d: float
    tau_mean: float
    tau_info: float
    tau_bayes: float
    tau_universal: float
    fallbacks: dict[str, str] = field(default_factory=dict)
    n_excluded: int = 0
    taus: dict[str, float] = field(default_factory=dict)
    reconstructed: dict[str, str] = field(default_factory=dict)

    def thresholds(self) -> dict[str, float]:
        """``{method: tau}`` for the methods of :data:`METHODS` (as it is now) that were computed."""
        if self.taus:
            return {m: self.taus[m] for m in METHODS if m in self.taus}
        return {m: getattr(self, f"tau_{m}") for m in METHODS if m in _BUILTIN}

    def to_json(self) -> dict:
        """A JSON-ready dict; NaN and infinities become ``None``. ``thresholds``: every method's tau
        (extensions included); ``reconstructed``: ``{method: note}`` for the reconstructions."""
        out: dict = {}
        for name in ("mu_c", "sigma_c", "mu_i", "sigma_i", "n_c", "n_i", "cohens_d", "tau_mean", "tau_info",
                     "tau_bayes", "tau_universal", "n_excluded"):
            value = getattr(self, name)
            out[name] = value if isinstance(value, int) else _finite_or_none(value)
        out["fallbacks"] = dict(self.fallbacks)
        out["thresholds"] = {m: _finite_or_none(t) for m, t in self.thresholds().items()}
        out["reconstructed"] = dict(self.reconstructed)
        return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# Statistics


def _mean(x: np.ndarray) -> float:
    # Equal values give their value exactly: np.mean([0.1] * 3) is 0.10000000000000002, and a
    # spread of 1e-17 around it would turn "zero variance" into a huge Cohen's d.
    return float(x[0]) if np.ptp(x) == 0 else float(x.mean())


def _ss(x: np.ndarray) -> float:
    """Sum of squared deviations from the mean; exactly 0 when every value is equal."""
    return 0.0 if len(x) == 0 or np.ptp(x) == 0 else float(np.sum((x - x.mean()) ** 2))


def _sd(x: np.ndarray) -> float:
    """Sample sd (``ddof=1``); NaN with fewer than two values."""
    return math.sqrt(_ss(x) / (len(x) - 1)) if len(x) >= 2 else math.nan


def pooled_sd(values_c: np.ndarray, values_i: np.ndarray) -> float:
    """``s_p = sqrt((SS_c + SS_i) / (n_c + n_i - 2))``; NaN when ``n_c + n_i < 3`` or a class is empty.

    ``SS`` is the sum of squared deviations from the class mean, so a class of one example adds 0
    (and its degree of freedom is the one its mean used up).
    """
    values_c, values_i = np.asarray(values_c, dtype=np.float64), np.asarray(values_i, dtype=np.float64)
    n_c, n_i = len(values_c), len(values_i)
    if n_c == 0 or n_i == 0 or n_c + n_i < 3:
        return math.nan
    return math.sqrt((_ss(values_c) + _ss(values_i)) / (n_c + n_i - 2))


def cohens_d(values_c: np.ndarray, values_i: np.ndarray) -> float:
    """Cohen's d = ``(mu_i - mu_c) / s_p`` (pooled sd, ``ddof=1``); > 0 when incorrect values are higher.

    NaN when undefined: a class is empty, ``n_c + n_i < 3``, or ``s_p == 0``.
    """
    values_c, values_i = np.asarray(values_c, dtype=np.float64), np.asarray(values_i, dtype=np.float64)
    s_p = pooled_sd(values_c, values_i)
    if not s_p > 0:  # NaN or zero
        return math.nan
    return (_mean(values_i) - _mean(values_c)) / s_p


def bayes_threshold(mu_c: float, sigma_c: float, mu_i: float, sigma_i: float, pi_c: float
                    ) -> tuple[float, str | None]:
    """The Bayes boundary of two Gaussians, and why it fell back (``None`` when it did not).

    Solves ``pi_c N(tau; mu_c, sigma_c) = pi_i N(tau; mu_i, sigma_i)`` (``pi_i = 1 - pi_c``), i.e.
    ``a tau^2 + b tau + c = 0`` with::

        a = 1/(2 sigma_c^2) - 1/(2 sigma_i^2)
        b = mu_i / sigma_i^2 - mu_c / sigma_c^2
        c = mu_c^2 / (2 sigma_c^2) - mu_i^2 / (2 sigma_i^2) + ln(sigma_c / sigma_i) - ln(pi_c / pi_i)

    Takes the real root in ``[mu_c, mu_i]``; if both or neither lie there, the one nearest
    ``(mu_c + mu_i) / 2``. When ``|a| <= 1e-9 * max(1/(2 sigma_c^2), 1/(2 sigma_i^2))`` (equal
    variances) it solves ``b tau + c = 0``, whose root is
    ``(mu_c + mu_i)/2 + sigma^2 ln(pi_c / pi_i) / (mu_i - mu_c)``. Falls back to ``mu_c`` (that is,
    ``tau_mean``) when ``mu_i <= mu_c`` or there is no real root. The quadratic is solved in the
    cancellation-free form (``q = -(b + sign(b) sqrt(b^2 - 4ac)) / 2``, roots ``q/a`` and ``c/q``).

    Args:
        mu_c, sigma_c: mean and sd (> 0) of the correct class's values.
        mu_i, sigma_i: mean and sd (> 0) of the incorrect class's values.
        pi_c: prior of the correct class, ``0 < pi_c < 1``.
    """
    if not (sigma_c > 0 and sigma_i > 0):
        raise ValueError(f"bayes_threshold needs sigma_c > 0 and sigma_i > 0, got sigma_c={sigma_c}, "
                         f"sigma_i={sigma_i}")
    if not 0 < pi_c < 1:
        raise ValueError(f"bayes_threshold needs 0 < pi_c < 1, got pi_c={pi_c}")
    if not mu_i > mu_c:
        return mu_c, f"mu_i = {mu_i:.6g} <= mu_c = {mu_c:.6g}: used tau_mean"
    vc, vi = sigma_c ** 2, sigma_i ** 2
    a = 1 / (2 * vc) - 1 / (2 * vi)
    b = mu_i / vi - mu_c / vc
    c = mu_c ** 2 / (2 * vc) - mu_i ** 2 / (2 * vi) + math.log(sigma_c / sigma_i) - math.log(pi_c / (1 - pi_c))
    if abs(a) <= _A_RTOL * max(1 / (2 * vc), 1 / (2 * vi)):
        # Equal variances: b = (mu_i - mu_c) / sigma^2 > 0 here, so the linear root exists.
        return -c / b, None
    disc = b * b - 4 * a * c
    if disc < 0:
        return mu_c, f"no real root (discriminant {disc:.6g} < 0): used tau_mean"
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    roots = [q / a] + ([c / q] if q != 0 else [])
    lo, hi, mid = mu_c, mu_i, 0.5 * (mu_c + mu_i)
    inside = [r for r in roots if lo <= r <= hi]
    if len(inside) == 1:
        return inside[0], None
    return min(roots, key=lambda r: abs(r - mid)), None


def calibrate(entropies, correct) -> Calibration:
    """The thresholds of docs/method.md section 3 from step-1 values with known correctness.

    Every method of the registry (:data:`METHODS`: the four built-ins, and any added with
    :func:`register_threshold`) is computed from the same :class:`ClassStats`.

    Args:
        entropies: ``(n,)`` finite floats, the step-1 signal (higher = more uncertain; negate a
            confidence first, as :func:`step_values` does), in any unit.
        correct: ``(n,)`` bools, True where the step-1 answer was right.

    Returns:
        A :class:`Calibration`; the module docstring lists every fallback. Example:

        >>> cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
        >>> cal.tau_mean, round(cal.tau_bayes, 4)
        (2.0, 3.3179)
    """
    h, ok = _examples(entropies, correct)
    hc, hi = h[ok], h[~ok]
    n_c, n_i = len(hc), len(hi)
    stats = ClassStats(mu_c=_mean(hc) if n_c else math.nan, sigma_c=_sd(hc), mu_i=_mean(hi) if n_i else math.nan,
                       sigma_i=_sd(hi), n_c=n_c, n_i=n_i, d=cohens_d(hc, hi), s_p=pooled_sd(hc, hi))
    methods = threshold_methods()
    degenerate = _degenerate(stats, [m.name for m in methods])
    if degenerate is not None:
        tau, fallbacks = degenerate
        taus = {m.name: tau for m in methods}
    else:
        # From here both classes are non-empty and s_p > 0.
        taus, fallbacks = {}, {}
        for m in methods:
            taus[m.name], why = _apply(m, stats)
            if why is not None:
                fallbacks[m.name] = why
    return Calibration(stats.mu_c, stats.sigma_c, stats.mu_i, stats.sigma_i, n_c, n_i, stats.d,
                       *(float(taus.get(m, math.nan)) for m in _BUILTIN), fallbacks,
                       taus={k: float(v) for k, v in taus.items()},
                       reconstructed={m.name: m.note for m in methods if m.reconstruction})


def _apply(method: ThresholdMethod, stats: ClassStats) -> tuple[float, str | None]:
    """``(tau, why it fell back or None)`` of one method; a NaN tau falls back to ``tau_mean``."""
    out = method.fn(stats)
    tau, why = out if isinstance(out, tuple) else (out, None)
    tau = float(tau)
    if math.isnan(tau):
        return stats.mu_c, f"tau_{method.name} is NaN for these statistics: used tau_mean"
    return tau, why


def _examples(entropies, correct) -> tuple[np.ndarray, np.ndarray]:
    """``(values float64, correct bool)`` of :func:`calibrate`'s arguments; ``ValueError`` naming the
    first bad one (shapes, no example, a non-boolean ``correct``, a non-finite value)."""
    h = np.asarray(entropies, dtype=np.float64)
    ok = np.asarray(correct)
    if h.ndim != 1 or ok.shape != h.shape:
        raise ValueError(f"calibrate needs two 1-D arrays of one length, got shapes {h.shape} and {ok.shape}")
    if len(h) == 0:
        raise ValueError("calibrate needs at least one example, got none")
    if ok.dtype != bool:
        values = ok.tolist()
        bad_ok = [i for i, c in enumerate(values) if c is None or c not in (0, 1)]
        if bad_ok:
            first = values[bad_ok[0]]
            hint = " (an unparseable answer: pass False, as calibrate_records does, or drop it)" if first is None else ""
            raise ValueError(f"correct must hold booleans, got {first!r} at index {bad_ok[0]}{hint}")
        ok = ok.astype(bool)
    bad = np.flatnonzero(~np.isfinite(h))
    if len(bad):
        raise ValueError(f"entropies[{bad[0]}] = {h[bad[0]]} is not finite (drop such examples first)")
    return h, ok


def _degenerate(stats: ClassStats, names: list[str]) -> tuple[float, dict[str, str]] | None:
    """The one threshold every method falls back to, with the fallbacks, when a class is empty or ``d``
    is undefined (the module docstring lists them); None when the formulas apply."""
    n_c, n_i, others = stats.n_c, stats.n_i, [m for m in names if m != "mean"]
    if n_c == 0:
        return -math.inf, dict.fromkeys(names, "no correct examples: mu_c undefined; tau = -inf (never stop)")
    if n_i == 0:
        return float(stats.mu_c), {**dict.fromkeys(others, "no incorrect examples: used tau_mean"),
                                   "cohens_d": "no incorrect examples: d undefined"}
    if math.isnan(stats.d):
        why = (f"n_c + n_i = {n_c + n_i} < 3" if n_c + n_i < 3
               else "pooled sd is 0 (every value within each class is equal)")
        return float(stats.mu_c), {"cohens_d": f"{why}: d undefined",
                                   **dict.fromkeys(others, f"{why}: d undefined, used tau_mean")}
    return None


def _tau_universal(mu_c: float, mu_i: float, sc: float, d: float) -> tuple[float, str | None]:
    """``tau_universal`` with ``sc`` for ``sigma_c``, and why it fell back to ``tau_mean`` (``mu_c <= 0``)."""
    if mu_c <= 0:
        return mu_c, f"mu_c = {mu_c:.6g} <= 0: sigma_c / mu_c undefined, used tau_mean"
    w = math.sqrt(abs(d)) / (1 + math.sqrt(abs(d)))
    return mu_c + w * (mu_i - mu_c) * max(0.0, 1 - sc / mu_c), None


def _tau_bayes(mu_c: float, sigma_c: float, mu_i: float, sigma_i: float, n_c: int, n_i: int, s_p: float
               ) -> tuple[float, str | None]:
    """``tau_bayes`` (:func:`bayes_threshold`, priors from the class sizes), and its fallbacks joined
    by ``"; "``: the pooled sd for both classes when a class sd is zero or undefined, then the
    root's own."""
    notes = []
    for name, n, s in (("sigma_c", n_c, sigma_c), ("sigma_i", n_i, sigma_i)):
        if n == 1:
            notes.append(f"{name} undefined (one example)")
        elif s == 0:
            notes.append(f"{name} = 0")
    reasons = []
    if notes:
        sigma_c = sigma_i = s_p
        reasons.append(f"{', '.join(notes)}: used pooled sd s_p = {s_p:.6g} for both classes (linear boundary)")
    tau, why = bayes_threshold(mu_c, sigma_c, mu_i, sigma_i, n_c / (n_c + n_i))
    if why is not None:
        reasons.append(why)
    return tau, "; ".join(reasons) or None


# --------------------------------------------------------------------------------------------
# The registry of threshold methods

_BUILTIN = ("mean", "info", "bayes", "universal")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
# "run" names a gate run's own tau in the reports and the viewer (tje_hf.analysis.style.RUN_TAU_NAME).
_RESERVED = frozenset({"run"})


@dataclass(frozen=True)
class ClassStats:
    """What a threshold method is given: the step-1 statistics of the calibration set (section 3).

    ``mu_c, sigma_c`` (``mu_i, sigma_i``): mean and sample sd (``ddof=1``) of the correct
    (incorrect) examples, the sd NaN for a class of one; ``n_c``, ``n_i``: class sizes; ``d``:
    Cohen's d; ``s_p``: the pooled sd. A method is only called when both classes are non-empty and
    ``d`` is defined (so ``s_p > 0``); otherwise the documented fallbacks apply to every method.
    """

    mu_c: float
    sigma_c: float
    mu_i: float
    sigma_i: float
    n_c: int
    n_i: int
    d: float
    s_p: float

    @property
    def pi_c(self) -> float:
        """The prior of the correct class, ``n_c / (n_c + n_i)``."""
        return self.n_c / (self.n_c + self.n_i)


ThresholdFn = Callable[[ClassStats], "float | tuple[float, str | None]"]


@dataclass(frozen=True)
class ThresholdMethod:
    """One registered method: ``fn(stats) -> tau`` (or ``(tau, why)``, ``why`` naming a fallback it
    took, None when it took none), the label the reports print, whether its formula is a
    ``reconstruction`` (ours, not the paper's) with the ``note`` that says why, and an optional
    ``color`` (``#rrggbb``) for plots and the viewer (default: ``tje_hf.analysis.style``)."""

    name: str
    fn: ThresholdFn
    label: str
    reconstruction: bool = False
    note: str = ""
    color: str | None = None


_REGISTRY: dict[str, ThresholdMethod] = {}


def register_threshold(name: str, fn: ThresholdFn, *, label: str | None = None, reconstruction: bool = False,
                       note: str = "", color: str | None = None, replace: bool = False) -> ThresholdMethod:
    """Add a threshold method; every consumer (calibration, evaluation, report, compare, viewer) follows.

    Args:
        name: lower-case identifier; the tau is ``Calibration.taus[name]`` and the reports call it
            ``tau_<name>``.
        fn: ``fn(stats: ClassStats) -> tau`` or ``(tau, why)``. Called only when both classes are
            present and Cohen's d is defined (the documented fallbacks cover the rest); a NaN tau
            falls back to ``tau_mean`` and is reported.
        label: a short name for the tables (default: ``name``).
        reconstruction: True when the formula stands in for one the paper does not publish; the
            reports mark it and print ``note``.
        note: why it is a reconstruction, or any caveat the reports should print.
        color: ``#rrggbb`` for plots and the viewer.
        replace: allow replacing a registered method (it keeps its position); ``mean`` is the
            fallback of every other method and cannot be replaced.

    Example: the paper's scale-invariant formula, once published, beside the reconstruction::

        >>> def paper_universal(s):
        ...     return s.mu_c * (1 + max(0.0, 1 - s.sigma_c / s.mu_c))   # hypothetical formula
        >>> _ = register_threshold("universal_paper", paper_universal, label="scale-invariant (paper)")
        >>> cal = calibrate([1.0, 2.0, 3.0, 3.0, 5.0], [True, True, True, False, False])
        >>> cal.taus["universal_paper"], round(cal.tau_universal, 4)      # mu_c = 2, sigma_c = 1
        (3.0, 2.5682)
        >>> _ = unregister_threshold("universal_paper")
    """
    global METHODS
    if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
        raise ValueError(f"threshold name must match [a-z][a-z0-9_]* and not be one of {sorted(_RESERVED)}, "
                         f"got {name!r}")
    if not callable(fn):
        raise TypeError(f"threshold {name!r}: fn must be callable, got {type(fn).__name__}")
    if color is not None and not (isinstance(color, str) and _HEX.match(color)):
        raise ValueError(f"threshold {name!r}: color must be '#rrggbb', got {color!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"threshold {name!r} is already registered (pass replace=True to replace it)")
    if name == "mean" and "mean" in _REGISTRY:
        raise ValueError("tau_mean is the fallback of every other method and cannot be replaced")
    method = ThresholdMethod(name, fn, label or name, bool(reconstruction), note, color)
    _REGISTRY[name] = method
    METHODS = tuple(_REGISTRY)
    return method


def unregister_threshold(name: str) -> ThresholdMethod:
    """Remove a method (``mean`` cannot be removed); returns it, so it can be registered again."""
    global METHODS
    if name == "mean":
        raise ValueError("tau_mean is the fallback of every other method and cannot be removed")
    if name not in _REGISTRY:
        raise KeyError(f"no threshold method {name!r}; registered: {list(_REGISTRY)}")
    method = _REGISTRY.pop(name)
    METHODS = tuple(_REGISTRY)
    return method


def threshold_methods() -> tuple[ThresholdMethod, ...]:
    """The registered methods in :data:`METHODS` order (a name in METHODS but not registered is skipped)."""
    return tuple(_REGISTRY[m] for m in METHODS if m in _REGISTRY)


def threshold_method(name: str) -> ThresholdMethod | None:
    """The registered method ``name``, None if there is none."""
    return _REGISTRY.get(name)


def _sigma_c(s: ClassStats) -> tuple[float, str | None]:
    """``sigma_c``, or the pooled sd with a note when there is one correct example (``ddof=1``)."""
    if s.n_c == 1:
        return s.s_p, f"one correct example: sigma_c undefined (ddof=1), used pooled sd s_p = {s.s_p:.6g}"
    return s.sigma_c, None


def _builtin_mean(s: ClassStats) -> float:
    return s.mu_c


def _builtin_info(s: ClassStats) -> tuple[float, str | None]:
    sc, why = _sigma_c(s)
    return s.mu_c + sc * math.log1p(abs(s.d)), why


def _builtin_bayes(s: ClassStats) -> tuple[float, str | None]:
    return _tau_bayes(s.mu_c, s.sigma_c, s.mu_i, s.sigma_i, s.n_c, s.n_i, s.s_p)


def _builtin_universal(s: ClassStats) -> tuple[float, str | None]:
    sc, note = _sigma_c(s)
    tau, why = _tau_universal(s.mu_c, s.mu_i, sc, s.d)
    return tau, why or note


UNIVERSAL_NOTE = ("the paper names a scale-invariant threshold but does not publish its formula; "
                  "only the clamp max(0, 1 - sigma_c / mu_c) is attested. The weight sqrt|d| / (1 + sqrt|d|) and "
                  "the move from mu_c towards mu_i are ours (docs/method.md section 3.4)")

register_threshold("mean", _builtin_mean, label="entropy mean")
register_threshold("info", _builtin_info, label="information-theoretic")
register_threshold("bayes", _builtin_bayes, label="Bayes optimal",
                   note="Gaussian class model and priors from the calibration set: our derivation (docs/method.md 3.2)")
register_threshold("universal", _builtin_universal, label="scale-invariant", reconstruction=True, note=UNIVERSAL_NOTE)


# --------------------------------------------------------------------------------------------
# Reading one step out of records


def step_values(records: list[dict], signal: str = DEFAULT_COLUMN, segment: str = "all", step: int = 1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step's signal, correctness and generated tokens for every record, in record order.

    Args:
        records: dicts as in ``docs/FORMAT.md`` (from ``records.read_records``); each must hold
            ``step`` (1-based) in its ``steps``.
        signal: a signal column, e.g. ``"topk_entropy@20"``, ``"full_entropy"``.
        segment: ``"all"``, ``"reasoning"`` or ``"answer"``.
        step: the 1-based step.

    Returns:
        ``values (n,) float64``: the step's mean signal, **oriented so that higher = more
        uncertain**: the confidences (``deepconf_confidence``, ``self_certainty``,
        ``token_logprob``) are negated; NaN where the record holds NaN or ``null`` (an empty segment,
        a backend that cannot compute it). ``correct (n,) bool``: ``correct is True``; an
        unparseable answer (``correct`` null) counts as **incorrect**, as a user of the gate would
        get no usable answer from it. ``tokens (n,) int64``: ``n_generated`` of the step.
    """
    sign = 1.0 if higher_is_uncertain(signal) else -1.0
    if step < 1:
        raise ValueError(f"step is 1-based, got step={step}")
    values = np.empty(len(records), dtype=np.float64)
    correct = np.empty(len(records), dtype=bool)
    tokens = np.empty(len(records), dtype=np.int64)
    for j, rec in enumerate(records):
        steps = rec["steps"]
        if len(steps) < step or steps[step - 1]["step"] != step:
            why = ("its next prompt did not fit the model's context" if rec.get("stopped") == "context_full" else
                   "a policy='gate' run stops early: evaluate a policy='all' run")
            raise ValueError(f"problem {rec.get('problem_id')!r} has {len(steps)} recorded steps, step {step} "
                             f"asked ({why})")
        s = steps[step - 1]
        segs = s["signals"]
        if segment not in segs:
            raise ValueError(f"segment {segment!r} not in problem {rec.get('problem_id')!r}; "
                             f"recorded: {sorted(segs)}")
        if signal not in segs[segment]:
            raise ValueError(f"signal {signal!r} not recorded (problem {rec.get('problem_id')!r}); "
                             f"recorded: {sorted(segs[segment])}")
        v = segs[segment][signal]
        values[j] = math.nan if v is None else sign * float(v)
        correct[j] = s["correct"] is True
        tokens[j] = int(s["n_generated"])
    return values, correct, tokens


def calibrate_records(records: list[dict], signal: str = DEFAULT_COLUMN, segment: str = "all", step: int = 1
                      ) -> Calibration:
    """:func:`calibrate` on one step of records (see :func:`step_values` for direction and nulls).

    Records whose value is NaN or null are left out and counted in ``Calibration.n_excluded``;
    ``ValueError`` when none is left.
    """
    values, correct, _ = step_values(records, signal, segment, step)
    keep = np.isfinite(values)
    if not keep.any():
        raise ValueError(f"signal {signal!r} (segment {segment!r}, step {step}) is NaN or null in all "
                         f"{len(values)} records")
    return replace(calibrate(values[keep], correct[keep]), n_excluded=int((~keep).sum()))
