"""Import hygiene: what must stay light stays light, and the package's import graph stays layered.

(a) the torch-free modules import none of torch, transformers or vllm (each in a fresh interpreter,
as lm-polygraph's import guard does); (b) the commands that never load a model run end to end on a
synthetic run directory without importing them either; (c) module-level imports between the
package's modules form no cycle and respect the layers of docs/ARCHITECTURE.md; (d) no public name
of ``tje_hf`` shadows one of its submodules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_runs import build_run

import tje_hf

HEAVY = ("torch", "transformers", "vllm")
PACKAGE_DIR = Path(tje_hf.__file__).parent

LIGHT_MODULES = (
    "tje_hf",
    "tje_hf.cli",
    "tje_hf.config",
    "tje_hf.columns",
    "tje_hf.errors",
    "tje_hf.seeds",
    "tje_hf.records",
    "tje_hf.export",
    "tje_hf.analysis",
    "tje_hf.analysis.calibration",
    "tje_hf.analysis.table",
    "tje_hf.analysis.evaluation",
    "tje_hf.analysis.budget",
    "tje_hf.analysis.gate_run",
    "tje_hf.analysis.report",
    "tje_hf.viewer",
    "tje_hf.tasks",
    "tje_hf.models",
    "tje_hf.generation",
)

# Run in the child first: remembers who first imported each heavy package, so a failure names the
# import chain instead of only the package.
TRACER = """
import sys, traceback
HEAVY = {heavy!r}
FIRST = {{}}

class _Tracer:
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in FIRST:
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<frozen")]
            FIRST[name] = "".join(traceback.format_list(frames))
        return None

sys.meta_path.insert(0, _Tracer())

def _report():
    loaded = sorted(set(HEAVY) & set(sys.modules))
    for name in loaded:
        print(f"--- {{name}} first imported from:\\n{{FIRST.get(name, '?')}}", file=sys.stderr)
    print("HEAVY_LOADED=" + ",".join(loaded))
"""


def run_child(body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``body`` in a fresh interpreter after TRACER; its stdout ends with the HEAVY_LOADED line."""
    code = TRACER.format(heavy=HEAVY) + body + "\n_report()\n"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=PACKAGE_DIR.parent)


def heavy_loaded(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY_LOADED=")][-1]
    return [name for name in line.removeprefix("HEAVY_LOADED=").split(",") if name]


# --------------------------------------------------------------------------------------------
# (a) light modules


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_no_heavy_package(module):
    proc = run_child(f"import {module}")
    assert heavy_loaded(proc) == [], f"import {module} imported a heavy package:\n{proc.stderr[-4000:]}"


def test_public_names_still_resolve():
    """The lazy ``tje_hf``: every public name works, and a model-side one does pull torch in."""
    proc = run_child(
        "import tje_hf\n"
        "assert tje_hf.calibrate.__module__ == 'tje_hf.analysis.calibration'\n"
        "assert 'torch' not in sys.modules\n"
        "from tje_hf import refine\n"
        "assert callable(refine) and refine.__module__ == 'tje_hf.refinement'\n"
        "missing = [n for n in tje_hf.__all__ if getattr(tje_hf, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(tje_hf.__all__) <= set(dir(tje_hf))\n"
        "assert tje_hf.run.__module__ == 'tje_hf.runner'\n"
        "assert tje_hf.load_model.__module__ == 'tje_hf.models.loading'\n"
        "import tje_hf.generation\n"
        "assert tje_hf.generation.VllmBackend.__name__ == 'VllmBackend'\n"
        "try:\n"
        "    tje_hf.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('tje_hf.no_such_name resolved')\n"
    )
    assert "torch" in heavy_loaded(proc)


# --------------------------------------------------------------------------------------------
# (b) the CLI's model-free commands


def test_model_free_commands_import_no_heavy_package(tmp_path):
    a = build_run(tmp_path / "a")
    b = build_run(tmp_path / "b")
    commands = [
        ["report", str(a), "--out", str(tmp_path / "report")],
        ["calibrate", str(a)],
        ["view", str(a), "--out", str(tmp_path / "viewer.html")],
        ["compare", str(a), str(b), "--out", str(tmp_path / "compare")],
        ["configs"],
    ]
    proc = run_child(
        "import contextlib, io, json\n"
        "from tje_hf.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        rc = main(argv)\n"
        "    print('RESULT=' + json.dumps([argv[0], rc, out.getvalue()]))\n",
        timeout=300,
    )
    loaded = heavy_loaded(proc)
    lines = [ln.removeprefix("RESULT=") for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")]
    results = {cmd: (rc, text) for cmd, rc, text in map(json.loads, lines)}
    assert {cmd: rc for cmd, (rc, _) in results.items()} == dict.fromkeys(("report", "calibrate", "view",
                                                                           "compare", "configs"), 0)
    assert loaded == [], f"a model-free command imported a heavy package:\n{proc.stderr[-4000:]}"
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "viewer.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert (tmp_path / "compare" / "compare.md").is_file()
    assert set(json.loads(results["calibrate"][1])) >= {"tau_mean", "tau_info", "tau_bayes", "tau_universal"}
    assert "demo" in results["configs"][1].split()


# --------------------------------------------------------------------------------------------
# (c) the import graph

BASE = frozenset({"errors", "seeds", "columns", "config"})
# layer -> the layers (besides its own) its modules may import at module level
LAYERS: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "models": frozenset({"base"}),
    "generation": frozenset({"base", "models"}),
    "refinement": frozenset({"base", "models", "generation"}),
    "tasks": frozenset({"base"}),
    "records": frozenset({"base"}),
    "runner": frozenset({"base", "models", "generation", "refinement", "tasks", "records"}),
    "analysis": frozenset({"base", "records"}),
    "export": frozenset({"base", "records"}),
    "regrade": frozenset({"base", "tasks", "records"}),
    "viewer": frozenset({"base", "records", "analysis"}),
    "cli": frozenset({"base"}),  # anything inside its functions; at module level the base only
    "api": frozenset({"base"}),  # tje_hf/__init__.py: lazy, TYPE_CHECKING imports aside
}
# within the base: which base modules each may import
BASE_IMPORTS = {"errors": set(), "seeds": set(), "columns": set(), "config": {"columns", "errors"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt]):
    """Import statements executed at import time: the module's top level, through if/else (but not
    ``if TYPE_CHECKING:``), try/except and with blocks; never inside functions or classes."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_nodes(node.body)
            yield from _import_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _import_nodes(block)
        elif isinstance(node, ast.With):
            yield from _import_nodes(node.body)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at module level."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule sub; `from mod import name` the module
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                       for a in node.names]
        for target in targets:
            if target in modules and target != name:
                found.add(target)
                found.update(_parent_packages(target, name, modules))
    return found


def _parent_packages(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """Importing ``a.b.c`` first runs ``a.b``'s ``__init__``: an edge too, unless ``a.b`` is a package
    the importer itself lives in (already initialising by then)."""
    parts = target.split(".")
    parents = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {p for p in parents if p in modules and not (importer + ".").startswith(p + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    return "base" if parts[1] in BASE else parts[1]


def test_every_module_has_a_layer():
    unknown = sorted(m for m in all_modules() if layer_of(m) not in LAYERS)
    assert not unknown, f"modules in no layer (add them to LAYERS): {unknown}"


def test_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_layers():
    violations = []
    for module, targets in sorted(import_graph().items()):
        layer = layer_of(module)
        for target in sorted(targets):
            other = layer_of(target)
            if layer == other == "base":
                ok = target.split(".")[1] in BASE_IMPORTS[module.split(".")[1]]
            else:
                ok = other == layer or other in LAYERS[layer]
            if not ok:
                violations.append(f"{module} ({layer}) imports {target} ({other})")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_the_graph_sees_known_edges():
    """Guards the parser itself: relative imports from modules and from packages resolve."""
    graph = import_graph()
    assert "tje_hf.errors" in graph["tje_hf.records"]
    assert {"tje_hf.config", "tje_hf.tasks.aime", "tje_hf.tasks.base"} <= graph["tje_hf.tasks"]
    assert "tje_hf.columns" in graph["tje_hf.analysis.calibration"]
    assert "tje_hf.refinement" in graph["tje_hf.runner"]
    assert graph["tje_hf"] == set()  # TYPE_CHECKING imports are not module-level imports


# --------------------------------------------------------------------------------------------
# (d) no shadowing


def test_no_public_name_shadows_a_submodule():
    submodules = {name.split(".")[1] for name in all_modules() if "." in name}
    assert len(submodules) > 10
    assert not set(tje_hf.__all__) & submodules
    assert len(tje_hf.__all__) == len(set(tje_hf.__all__))
