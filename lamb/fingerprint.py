"""Fingerprints of the package's source, so that a cached result never outlives the code that made it.

:func:`lamb.experiments.tuning.sweep` keys every cached run by :func:`package_fingerprint` (the whole package's
code and the versions of the libraries that compute a run) besides its configuration; the generated-data caches
of :mod:`lamb.experiments.data` and :mod:`lamb.experiments.text` are keyed by :func:`source_fingerprint` of the
module that generates them. An edit to an optimizer, a model or the training loop therefore re-trains a sweep
instead of reading runs of the old code, and the book never draws a figure from stale code.

Both read file contents (not modification times), so a checkout, a ``git stash`` or a copy of the same source
gives the same key. Hashing the package's ~60 source files takes about a millisecond; results are memoized per
(path, size, mtime) of the files, so a sweep of many runs hashes once.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGE_ROOT", "package_fingerprint", "source_fingerprint"]

#: The package's source tree (tests point it at a copy to check that an edit changes the fingerprint).
PACKAGE_ROOT = Path(__file__).resolve().parent

# Code: what computes a run. Settings (TOML), shipped data and results are not code; what a run uses of them is
# part of its configuration.
_CODE_SUFFIXES = (".py", ".cpp")
# Libraries whose version changes the numbers a run produces.
_LIBRARIES = ("numpy", "jax", "jaxlib", "optax", "torch", "mnist1d", "tokenizers", "scikit-learn")
_memo: dict[tuple, str] = {}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _stat_key(paths: list[Path]) -> tuple:
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(key)


def source_fingerprint(*paths, root: Path | str | None = None) -> str:
    """SHA-256 (first 16 hex digits) of the contents of ``paths`` (files, or package-relative names such as
    ``"experiments/text.py"`` resolved under ``root``, default :data:`PACKAGE_ROOT`), with their names."""
    base = Path(root) if root is not None else PACKAGE_ROOT
    files = sorted(Path(p) if Path(p).is_absolute() else base / p for p in paths)
    if not files:
        raise ValueError("source_fingerprint needs at least one path")
    key = ("files", str(base), _stat_key(files))
    if key not in _memo:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(base) if f.is_relative_to(base) else f.name).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
        _memo[key] = h.hexdigest()[:16]
    return _memo[key]


def package_fingerprint(root: Path | str | None = None) -> str:
    """SHA-256 (first 16 hex digits) of every source file of the package (``*.py``, ``*.cpp``) under ``root``
    (default :data:`PACKAGE_ROOT`) and of the installed versions of the numerical libraries a run uses."""
    base = Path(root) if root is not None else PACKAGE_ROOT
    files = sorted(p for p in base.rglob("*") if p.suffix in _CODE_SUFFIXES and "__pycache__" not in p.parts
                   and p.is_file())
    key = ("package", str(base), _stat_key(files))
    if key not in _memo:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(base)).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
        h.update(repr([(name, _version(name)) for name in _LIBRARIES]).encode())
        _memo[key] = h.hexdigest()[:16]
    return _memo[key]
