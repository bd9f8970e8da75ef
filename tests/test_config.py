"""Configs validate themselves: built in Python (``DecodeConfig(top_p=1.5)``) or from YAML and
``key.path=value`` overrides, every type and every rule is a one-line ConfigError naming the field
and the value. The first table holds one bad value per rule and per kind of type, class by class;
each row is checked both ways (in Python the class names the field, from YAML the dotted path)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pytest

from tje_hf.config import (
    DecodeConfig,
    ModelSpec,
    RefineConfig,
    RunConfig,
    SignalConfig,
    TaskConfig,
    WindowStopConfig,
    config_hash,
    from_dict,
    load_run_config,
    packaged_configs,
    to_dict,
)
from tje_hf.errors import ConfigError

UNKNOWN_SIGNAL = "unknown signal"
NOT_RECORDED = "top-k size not recorded (signals.ks = [5, 10, 15, 20])"
# Where each class sits in a run config (its YAML section).
SECTION = {RunConfig: "", ModelSpec: "model.", TaskConfig: "task.", DecodeConfig: "decode.",
           RefineConfig: "refine.", SignalConfig: "decode.signals.", WindowStopConfig: "decode.window_stop."}


class Bad(NamedTuple):
    cls: type
    kwargs: dict[str, Any]
    field: str  # as the message names it (dotted for a nested field, [i] for an item)
    value: Any  # as the Python-built message shows it
    why: str  # in the message after the value
    yaml: bool = True  # the same values also make sense in YAML


BAD = [
    # ModelSpec: types only (the loader checks the rest)
    Bad(ModelSpec, {"name_or_path": 1}, "name_or_path", 1, "expected a string"),
    Bad(ModelSpec, {"revision": 3}, "revision", 3, "expected a string"),
    Bad(ModelSpec, {"dtype": "float64"}, "dtype", "float64", "must be one of ['auto', 'float32', 'bfloat16', "
                                                             "'float16']"),
    Bad(ModelSpec, {"quantization": "2bit"}, "quantization", "2bit", "must be one of"),
    Bad(ModelSpec, {"family": "llama"}, "family", "llama", "must be one of"),
    Bad(ModelSpec, {"reasoning_effort": "max"}, "reasoning_effort", "max", "must be one of ['low', 'medium', 'high']"),
    Bad(ModelSpec, {"trust_remote_code": 1}, "trust_remote_code", 1, "expected true or false"),
    Bad(ModelSpec, {"tensor_parallel_size": True}, "tensor_parallel_size", True, "expected an integer"),
    Bad(ModelSpec, {"tensor_parallel_size": 2.0}, "tensor_parallel_size", 2.0, "expected an integer"),
    # TaskConfig: types only (load_task checks limit, size, digits and the column map)
    Bad(TaskConfig, {"name": 1}, "name", 1, "expected a string"),
    Bad(TaskConfig, {"columns": ["q"]}, "columns", ["q"], "expected a mapping"),
    Bad(TaskConfig, {"columns": {"question": 1}}, "columns.question", 1, "expected a string"),
    Bad(TaskConfig, {"answer_type": "float"}, "answer_type", "float", "must be one of ['integer', 'choice', 'text']"),
    Bad(TaskConfig, {"limit": "all"}, "limit", "all", "expected an integer"),
    # WindowStopConfig
    Bad(WindowStopConfig, {"column": "entropy"}, "column", "entropy", UNKNOWN_SIGNAL),
    Bad(WindowStopConfig, {"column": "topk_entropy"}, "column", "topk_entropy", UNKNOWN_SIGNAL),
    Bad(WindowStopConfig, {"window": 0}, "window", 0, "must be >= 1"),
    Bad(WindowStopConfig, {"window": 8, "min_tokens": 4}, "min_tokens", 4, "must be >= window (8)"),
    Bad(WindowStopConfig, {"threshold": "2"}, "threshold", "2", "expected a number"),
    # SignalConfig
    Bad(SignalConfig, {"ks": ()}, "ks", (), "must be a non-empty list of positive integers"),
    Bad(SignalConfig, {"ks": (0,)}, "ks", (0,), "must be a non-empty list of positive integers"),
    Bad(SignalConfig, {"ks": (5, -1)}, "ks", (5, -1), "must be a non-empty list of positive integers"),
    Bad(SignalConfig, {"ks": ("a",)}, "ks[0]", "a", "expected an integer"),
    Bad(SignalConfig, {"ks": (5, 2.5)}, "ks[1]", 2.5, "expected an integer"),
    Bad(SignalConfig, {"ks": 5}, "ks", 5, "expected a list"),
    Bad(SignalConfig, {"trace_alternatives": 65}, "trace_alternatives", 65, "must be in [0, 64]"),
    Bad(SignalConfig, {"trace_alternatives": -1}, "trace_alternatives", -1, "must be in [0, 64]"),
    Bad(SignalConfig, {"trace_alternatives": 3, "full_vocab": False}, "trace_alternatives", 3,
        "needs full_vocab: true (their log-probabilities use the full-vocabulary normaliser)"),
    Bad(SignalConfig, {"full_vocab": "no"}, "full_vocab", "no", "expected true or false"),
    # DecodeConfig
    Bad(DecodeConfig, {"max_new_tokens": 0}, "max_new_tokens", 0, "must be >= 1"),
    Bad(DecodeConfig, {"max_new_tokens": 1.5}, "max_new_tokens", 1.5, "expected an integer"),
    Bad(DecodeConfig, {"min_new_tokens": -1}, "min_new_tokens", -1, "must be in [0, max_new_tokens]"),
    Bad(DecodeConfig, {"max_new_tokens": 8, "min_new_tokens": 9}, "min_new_tokens", 9,
        "must be in [0, max_new_tokens]"),
    Bad(DecodeConfig, {"temperature": -0.5}, "temperature", -0.5, "must be >= 0 (0 means greedy)"),
    Bad(DecodeConfig, {"temperature": "hot"}, "temperature", "hot", "expected a number"),
    Bad(DecodeConfig, {"temperature": True}, "temperature", True, "expected a number"),
    Bad(DecodeConfig, {"top_p": 1.5}, "top_p", 1.5, "must be in (0, 1]"),
    Bad(DecodeConfig, {"top_p": 0.0}, "top_p", 0.0, "must be in (0, 1]"),
    Bad(DecodeConfig, {"top_k": -1}, "top_k", -1, "must be >= 0 (0 means off)"),
    Bad(DecodeConfig, {"repetition_penalty": 0.0}, "repetition_penalty", 0.0, "must be > 0"),
    Bad(DecodeConfig, {"token_budget": 0}, "token_budget", 0, "must be >= 1"),
    Bad(DecodeConfig, {"seed": "0"}, "seed", "0", "expected an integer"),
    Bad(DecodeConfig, {"window_stop": WindowStopConfig(column="topk_entropy@7", window=4, min_tokens=4)},
        "window_stop.column", "topk_entropy@7", NOT_RECORDED),
    Bad(DecodeConfig, {"signals": {"ks": [5]}}, "signals", {"ks": [5]}, "expected a SignalConfig", yaml=False),
    Bad(DecodeConfig, {"window_stop": "on"}, "window_stop", "on", "expected a WindowStopConfig", yaml=False),
    # RefineConfig
    Bad(RefineConfig, {"steps": 0}, "steps", 0, "must be >= 1"),
    Bad(RefineConfig, {"steps": "4"}, "steps", "4", "expected an integer"),
    Bad(RefineConfig, {"policy": "gate"}, "tau", None, "policy 'gate' needs a threshold"),
    Bad(RefineConfig, {"policy": "some"}, "policy", "some", "must be one of ['all', 'gate']"),
    Bad(RefineConfig, {"tau": "low"}, "tau", "low", "expected a number"),
    Bad(RefineConfig, {"gate_column": "entropy@20"}, "gate_column", "entropy@20", UNKNOWN_SIGNAL),
    Bad(RefineConfig, {"gate_segment": "header"}, "gate_segment", "header", "must be one of"),
    Bad(RefineConfig, {"history": "full"}, "history", "full", "must be one of ['template', 'continuation']"),
    Bad(RefineConfig, {"reuse_cache": "yes"}, "reuse_cache", "yes", "expected true or false"),
    Bad(RefineConfig, {"instruction": None}, "instruction", None, "expected a string"),
    # RunConfig: its own fields and the rule across sections
    Bad(RunConfig, {"batch_size": 0}, "batch_size", 0, "must be >= 1"),
    Bad(RunConfig, {"seed": 1.5}, "seed", 1.5, "expected an integer"),
    Bad(RunConfig, {"out_dir": 1}, "out_dir", 1, "expected a string"),
    Bad(RunConfig, {"backend": "sglang"}, "backend", "sglang", "must be one of ['hf', 'vllm']"),
    Bad(RunConfig, {"refine": RefineConfig(gate_column="topk_entropy@7")}, "refine.gate_column",
        "topk_entropy@7", NOT_RECORDED),
    Bad(RunConfig, {"decode": DecodeConfig(signals=SignalConfig(ks=(5, 10)))}, "refine.gate_column",
        "topk_entropy@20", "top-k size not recorded (signals.ks = [5, 10])"),
    Bad(RunConfig, {"model": "builtin:smollm2"}, "model", "builtin:smollm2", "expected a ModelSpec", yaml=False),
    # RunConfig: what one backend cannot do
    Bad(RunConfig, {"backend": "vllm", "model": ModelSpec(quantization="4bit")}, "model.quantization", "4bit",
        "bitsandbytes quantisation is for backend 'hf'"),
    Bad(RunConfig, {"backend": "vllm", "decode": DecodeConfig(window_stop=WindowStopConfig(window=4, min_tokens=4))},
        "decode.window_stop", {"column": "topk_entropy@20", "threshold": 2.0, "window": 4, "min_tokens": 4},
        "not supported by backend 'vllm'"),
    Bad(RunConfig, {"model": ModelSpec(tensor_parallel_size=2)}, "model.tensor_parallel_size", 2,
        "is for backend 'vllm'"),
]


def _id(bad: Bad) -> str:
    return f"{bad.cls.__name__}-{'-'.join(f'{k}={v!r}' for k, v in bad.kwargs.items())}"[:60]


def _plain(value: Any) -> Any:
    """A Python value as YAML would hold it: configs as mappings, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    return list(value) if isinstance(value, tuple) else value


def _nest(section: str, kwargs: dict) -> dict:
    data = {k: _plain(v) for k, v in kwargs.items()}
    for key in reversed([k for k in section.split(".") if k]):
        data = {key: data}
    return data


@pytest.mark.parametrize("bad", BAD, ids=_id)
def test_python_built_config_names_the_field_and_the_value(bad):
    with pytest.raises(ConfigError) as err:
        bad.cls(**bad.kwargs)
    message = str(err.value)
    assert message.startswith(f"{bad.cls.__name__}.{bad.field} = {bad.value!r}: "), message
    assert bad.why in message and "\n" not in message


@pytest.mark.parametrize("bad", [b for b in BAD if b.yaml], ids=_id)
def test_yaml_built_config_names_the_dotted_path(bad):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, _nest(SECTION[bad.cls], bad.kwargs))
    message = str(err.value)
    assert message.startswith(f"config field '{SECTION[bad.cls]}{bad.field}' = "), message
    assert bad.why in message and "\n" not in message


def test_every_class_and_rule_has_a_row():
    assert set(SECTION) == {b.cls for b in BAD}


# The exact messages of YAML files and overrides (tests/test_runner.py matches some through `tje run`).
@pytest.mark.parametrize(("override", "message"), [
    ("decode.top_p=1.5", "config field 'decode.top_p' = 1.5: must be in (0, 1]"),
    ("decode.temperature=hot", "config field 'decode.temperature' = 'hot': expected a number"),
    ("decode.temperature=-1", "config field 'decode.temperature' = -1.0: must be >= 0 (0 means greedy)"),
    ("refine.steps=0", "config field 'refine.steps' = 0: must be >= 1"),
    ("decode.signals.ks=[0]",
     "config field 'decode.signals.ks' = (0,): must be a non-empty list of positive integers"),
    ("decode.signals.ks=[5, a]", "config field 'decode.signals.ks[1]' = 'a': expected an integer"),
    ("decode.window_stop={window: 0}", "config field 'decode.window_stop.window' = 0: must be >= 1"),
    ("decode.window_stop={column: topk_entropy@7}",
     f"config field 'decode.window_stop.column' = 'topk_entropy@7': {NOT_RECORDED}"),
    ("decode.window_stop=5", "config field 'decode.window_stop' = 5: expected a mapping"),
    ("refine.gate_column=topk_entropy@7", f"config field 'refine.gate_column' = 'topk_entropy@7': {NOT_RECORDED}"),
    ("refine.policy=gate", "config field 'refine.tau' = None: policy 'gate' needs a threshold"),
    ("batch_size=0", "config field 'batch_size' = 0: must be >= 1"),
    ("task.columns={question: 1}", "config field 'task.columns.question' = 1: expected a string"),
    ("model.reasoning_effort=max",
     "config field 'model.reasoning_effort' = 'max': must be one of ['low', 'medium', 'high']"),
    ("decode.temprature=0.5",
     ("unknown config key 'decode.temprature' (known keys of 'decode.': max_new_tokens, min_new_tokens, "
      "repetition_penalty, sampler, seed, signals, temperature, token_budget, top_k, top_p, window_stop)")),
    ("decode.top_p.x=1", "config field 'decode.top_p' = {'x': 1}: expected a number"),
])
def test_override_messages(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert str(err.value) == message


def test_yaml_file_errors_name_the_dotted_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("decode:\n  top_p: 1.5\n")
    with pytest.raises(ConfigError, match=r"^config field 'decode\.top_p' = 1\.5: must be in \(0, 1\]$"):
        load_run_config(path)
    path.write_text("decode:\n  signals:\n    ks: [5, 10]\n")  # the default gate column is topk_entropy@20
    with pytest.raises(ConfigError, match=r"^config field 'refine\.gate_column' = 'topk_entropy@20': top-k size"):
        load_run_config(path)
    path.write_text("decode:\n  signals:\n    ks: [5, 10]\nrefine:\n  gate_column: topk_entropy@10\n")
    assert load_run_config(path).refine.gate_column == "topk_entropy@10"
    # from_dict of one class: the path starts at its own fields
    with pytest.raises(ConfigError, match=r"^config field 'top_p' = 2\.0: must be in \(0, 1\]$"):
        from_dict(DecodeConfig, {"top_p": 2})
    with pytest.raises(ConfigError, match=r"^override 'decode\.top_p': 'decode' is not a section$"):
        load_run_config(None, ["decode=5", "decode.top_p=1"])


def test_valid_python_configs_are_kept_as_given():
    # Checked, not converted: an int in a float field stays an int (the config hash of a config built
    # in Python does not change), a list of ks stays a list; YAML values are converted as before.
    decode = DecodeConfig(temperature=0, signals=SignalConfig(ks=[5, 20]))
    assert type(decode.temperature) is int and decode.signals.ks == [5, 20]
    assert type(load_run_config(None, ["decode.temperature=0"]).decode.temperature) is float
    assert RunConfig(decode=DecodeConfig(window_stop=WindowStopConfig(window=4, min_tokens=4)),
                     refine=RefineConfig(policy="gate", tau=1.5)).refine.tau == 1.5
    assert TaskConfig(columns={"question": "q"}).columns == {"question": "q"}


def test_replace_validates_too():
    with pytest.raises(ConfigError, match=r"^RefineConfig\.steps = 0: must be >= 1$"):
        dataclasses.replace(RefineConfig(), steps=0)


def test_errors_are_value_errors():
    # ConfigError is a ValueError: callers that caught ValueError keep working.
    with pytest.raises(ValueError, match="SignalConfig.ks"):
        SignalConfig(ks=(0,))


def test_packaged_run_configs_load():
    runs = packaged_configs("runs")
    assert "demo" in runs and len(runs) > 1
    for name in runs:
        cfg = load_run_config(name)
        assert isinstance(cfg, RunConfig)
        again = from_dict(RunConfig, to_dict(cfg))  # config.json round trip
        assert again == cfg and config_hash(again) == config_hash(cfg)


def test_errors_survive_pickling():
    import pickle

    with pytest.raises(ConfigError) as err:
        DecodeConfig(top_p=1.5)
    again = pickle.loads(pickle.dumps(err.value))
    assert isinstance(again, ConfigError) and str(again) == str(err.value) == "DecodeConfig.top_p = 1.5: must be in (0, 1]"
