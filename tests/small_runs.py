"""Small runs for the tests that drive the runner and the CLI: ``small_config`` writes the YAML of a
six-problem, two-step arith run of ``builtin:smollm2`` (with overrides), ``tiny_model_dir`` saves a tiny random
Qwen3-MoE with SmolLM2's tokenizer (with or without its chat template) as a local model directory, and
``error_lines`` picks the ``tje: error:`` lines out of captured stderr. Used by ``test_runner``,
``test_robustness`` and ``test_parallel``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def small_config(tmp_path: Path, name: str = "run", **extra) -> Path:
    data = {
        "model": {"name_or_path": "builtin:smollm2"},
        "task": {"name": "arith", "size": 6, "seed": 3},
        "decode": {"max_new_tokens": 10, "temperature": 0.7, "signals": {"trace": True, "trace_alternatives": 3}},
        "refine": {"steps": 2},
        "batch_size": 2,
        "seed": 1,
        "out_dir": str(tmp_path / name),
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_lines(capsys) -> list[str]:
    """The error lines the CLI printed (progress bars of libraries aside)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("tje: error:")]


def tiny_model_dir(tmp_path: Path, smollm2, *, template: bool, context: int) -> Path:
    from tiny_models import build_tiny_qwen3_moe

    model = build_tiny_qwen3_moe()
    model.config.max_position_embeddings = context
    out = tmp_path / f"tiny-{template}-{context}"
    model.save_pretrained(out)
    tok = smollm2.tokenizer
    saved_template = tok.chat_template
    try:
        if not template:
            tok.chat_template = None
        tok.save_pretrained(out)
    finally:
        tok.chat_template = saved_template
    if not template:
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def local_qa_config(tmp_path: Path, smollm2, rows: list[dict], *, context: int, **extra) -> Path:
    """A run config of a tiny model with a ``context``-token window over a local JSONL task of
    ``rows`` (``{"id", "q", "a"}``): for what happens when a prompt outgrows the context."""
    model_dir = tiny_model_dir(tmp_path, smollm2, template=True, context=context)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return small_config(tmp_path, model={"name_or_path": str(model_dir), "family": "generic"},
                        task={"name": "local", "path": str(data), "columns": {"id": "id", "question": "q",
                                                                             "answer": "a"}}, **extra)
