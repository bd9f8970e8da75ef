"""Screenshots of a run's trace viewer, for the docs: the index and one problem with a token's
alternatives shown.

    python scripts/screenshot_viewer.py runs/demo --problem arith-0001 --token 5 --out docs/viewer.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_viewer import _driver, _wait

from tje_hf.viewer import write_viewer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--problem", required=True, help="problem id to open")
    parser.add_argument("--token", type=int, default=6, help="index of the token to focus in step 1")
    parser.add_argument("--out", default="docs/viewer.png")
    parser.add_argument("--index-out", default="docs/viewer-index.png")
    args = parser.parse_args()
    html = Path(args.run_dir) / "viewer.html"
    if not html.exists():
        write_viewer(args.run_dir)
    with tempfile.TemporaryDirectory() as profile:
        drv = _driver(Path(profile))
        try:
            drv.get(html.resolve().as_uri())
            _wait(drv, "return document.querySelector('tr[data-i]') !== null")
            drv.save_screenshot(args.index_out)
            drv.get(html.resolve().as_uri() + f"#p={args.problem}")
            _wait(drv, "return window.__tjeReady !== undefined")
            tok = drv.execute_script(f"return document.querySelector('.toks [data-i=\"{args.token}\"]')")
            drv.execute_script("arguments[0].focus(); arguments[0].scrollIntoView({block: 'center'});", tok)
            drv.save_screenshot(args.out)
        finally:
            drv.quit()
    print(f"wrote {args.out} and {args.index_out}")


if __name__ == "__main__":
    main()
