"""Fetch MathJax 3 from the npm registry into _vendor/mathjax/ so the built book renders math offline.

The book's pages load ``mathjax/tex-chtml-full.js`` from the built site (``_config.yml``: ``mathjax_path``
and ``html_extra_path``) instead of a CDN. This script takes the ``mathjax`` package's tarball (with ``npm
pack`` where npm is installed, else straight from the registry with Python's standard library), checks its
sha512 integrity against the value pinned below, and copies out what the page needs: the ES5 bundle with
every TeX extension (so nothing is loaded on demand), its CHTML web fonts, and the licence.

Usage: ``python scripts/fetch_mathjax.py [DEST]`` (default ``_vendor/mathjax``); does nothing when DEST
already holds this version.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
# `npm view mathjax@3.2.2 dist.integrity`
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
BUNDLE = "es5/tex-chtml-full.js"
FONTS = "es5/output/chtml/fonts/woff-v2/"
STAMP = ".mathjax-version"


def _tarball_with_npm(workdir: Path) -> bytes | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    result = subprocess.run([npm, "pack", f"mathjax@{VERSION}", "--silent"], cwd=workdir,
                            capture_output=True, text=True)
    tgz = workdir / f"mathjax-{VERSION}.tgz"
    if result.returncode != 0 or not tgz.is_file():
        print(f"npm pack failed ({result.stderr.strip()[-300:]}); downloading from the registry instead",
              file=sys.stderr)
        return None
    return tgz.read_bytes()


def _tarball_from_registry() -> bytes:
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org/").rstrip("/")
    url = f"{registry}/mathjax/-/mathjax-{VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def _check_integrity(data: bytes) -> None:
    algorithm, expected = INTEGRITY.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"mathjax-{VERSION}.tgz: {algorithm} integrity mismatch (got {actual}, expected {expected})")


def fetch(dest: Path) -> None:
    stamp = dest / STAMP
    if stamp.is_file() and stamp.read_text().strip() == VERSION and (dest / Path(BUNDLE).name).is_file():
        print(f"MathJax {VERSION} already in {dest}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = _tarball_with_npm(Path(tmp)) or _tarball_from_registry()
    _check_integrity(data)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            if not member.isfile():
                continue
            if name == BUNDLE:
                target = dest / Path(BUNDLE).name                       # mathjax/tex-chtml-full.js
            elif name.startswith(FONTS):
                target = dest / name.removeprefix("es5/")               # mathjax/output/chtml/fonts/woff-v2/
            elif name == "LICENSE":
                target = dest / "LICENSE"
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            count += 1
    if not (dest / Path(BUNDLE).name).is_file():
        raise SystemExit(f"mathjax-{VERSION}.tgz has no {BUNDLE}")
    stamp.write_text(VERSION + "\n")
    print(f"MathJax {VERSION}: {count} files in {dest}")


if __name__ == "__main__":
    fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "_vendor/mathjax"))
