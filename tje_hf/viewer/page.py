"""The viewer's page: the payload of :mod:`.payload` in, one self-contained HTML file out.

The page is ``static/page.html`` with ``static/viewer.css`` and ``static/viewer.js`` inlined and the
payload embedded as ``<script type="application/json">`` blocks (one for the index, one per
embedded problem), so that the file opens from disk with no network, no external script, font or
image. The template's placeholders are ``{{TITLE}}``, ``{{CSS}}``, ``{{JS}}`` and ``{{PAYLOAD}}``;
they are filled with plain ``str.replace`` (the CSS and JS are full of braces), the static assets
first, and each value from the run in its own part of the template, so that no value is ever
scanned for a placeholder again. :func:`read_payload` reads the embedded data back.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from functools import cache
from importlib.resources import files
from pathlib import Path

PAGE, CSS, JS = "page.html", "viewer.css", "viewer.js"
_PLACEHOLDERS = ("{{TITLE}}", "{{CSS}}", "{{JS}}", "{{PAYLOAD}}")
_BLOCK = re.compile(r'<script type="application/json" id="tje-([^"]+)">(.*?)</script>', re.DOTALL)


def asset(name: str) -> str:
    """The text of one file of ``tje_hf/viewer/static`` (package data)."""
    return (files("tje_hf.viewer") / "static" / name).read_text(encoding="utf-8")


@cache
def _template() -> tuple[str, str]:
    """The page around the payload, ``(before, after)``, with the CSS and JS inlined; TITLE still open.

    Checks what the inlining relies on: each placeholder once in the template, none in the assets,
    and no ``</style`` / ``</script`` in the asset that would end its element early.
    """
    page, css, js = asset(PAGE), asset(CSS), asset(JS)
    for ph in _PLACEHOLDERS:
        if page.count(ph) != 1:
            raise ValueError(f"static/{PAGE}: {ph} occurs {page.count(ph)} times, expected once")
        for name, text in ((CSS, css), (JS, js)):
            if ph in text:
                raise ValueError(f"static/{name} contains the placeholder {ph}")
    if "</style" in css.lower():
        raise ValueError(f"static/{CSS} contains '</style'")
    if "</script" in js.lower():
        raise ValueError(f"static/{JS} contains '</script'")
    before, after = page.split("{{PAYLOAD}}")
    if "{{TITLE}}" not in before or "{{CSS}}" not in before or "{{JS}}" not in after:
        raise ValueError(f"static/{PAGE}: expected TITLE and CSS before PAYLOAD, JS after it")
    return before.replace("{{CSS}}", css), after.replace("{{JS}}", js)


def json_for_script(obj) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>`` can occur)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def page_parts(index: dict, per_problem: list[dict | None]) -> Iterator[str]:
    """The page as consecutive strings (joined, they are the HTML file; a large payload stays in parts).

    ``index`` and ``per_problem`` as returned by :func:`tje_hf.viewer.payload.build_payload`.
    """
    before, after = _template()
    title = f"tje viewer: {index['model'] or 'run'} on {index['task'] or '?'} ({index['run']})"
    yield before.replace("{{TITLE}}", html.escape(title))
    yield f'<script type="application/json" id="tje-index">{json_for_script(index)}</script>'
    for i, data in enumerate(per_problem):
        if data is not None:
            yield f'\n<script type="application/json" id="tje-p-{i}">{json_for_script(data)}</script>'
    yield after


def write_page(out: str | Path, index: dict, per_problem: list[dict | None]) -> Path:
    """Write the page to ``out`` atomically (a temporary file, then a rename); returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(page_parts(index, per_problem))
    tmp.replace(out)
    return out


def read_payload(html_path: str | Path) -> tuple[dict, dict[int, dict]]:
    """The embedded data of a viewer file: ``(index, {problem position: per-problem data})``."""
    text = Path(html_path).read_text(encoding="utf-8")
    blocks = dict(_BLOCK.findall(text))
    index = json.loads(blocks.pop("index"))
    return index, {int(k[2:]): json.loads(v) for k, v in blocks.items() if k.startswith("p-")}
