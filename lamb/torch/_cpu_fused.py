r"""The fused CPU step of ``Lamb(fused=True)`` and ``Lars(fused=True)``: a small C++ kernel, built on first use.

Why not ``torch.compile`` on the CPU: Inductor's kernel for one layer allocates a fresh buffer for the update
:math:`u` on every call (for the largest BERT-base tensor, 94 MB of new pages each step, unless glibc is
tuned) and each call of a compiled function costs about 0.1 ms of Python and guards, which for BERT's 199
tensors alone is 20 ms a step. This kernel takes every layer of a dtype in one call and keeps :math:`u`
between the passes in one buffer that lives as long as the thread (about the size of the largest layer),
written with streaming stores for layers bigger than the cache (:data:`STREAM_MIN_BYTES`). See
``_cpu_kernel.cpp``.

The source is compiled with the system's C++ compiler (``$CXX``, else ``g++``/``c++``/``clang++``) and
OpenMP into ``$LAMB_KERNEL_DIR`` (default ``~/.cache/lamb/kernels``), keyed by a hash of the source, the flags
and the compiler's version, and loaded with :mod:`ctypes` (which releases the GIL during the call). It needs
no torch headers and builds in about a second. Where no compiler is found, ``fused=True`` raises a
``RuntimeError`` that says so (``torch.compile`` on the CPU needs a compiler too).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "supports", "lamb_step", "lars_step"]

_SOURCE = Path(__file__).with_name("_cpu_kernel.cpp")
_NORM_CODES = {"l1": 0, "l2": 1, "linf": 2}
_FLOAT_TYPES = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# Layers of this many bytes or more are bigger than most last-level caches: pass 1 writes their u with streaming
# (non-temporal) stores, which skip reading u's old contents into the cache first (a plain store to a line that
# is not in the cache reads it: 4 more bytes per float32 element than the 40 of the byte count). Smaller layers
# write u with plain stores, as the scratch buffer's first megabytes stay in the cache from layer to layer. On
# BERT-base shapes, 2 threads, the word embeddings (94 MB) stepped about 10% faster streamed and the 768 x 3072
# matrices (9 MB) about 10% slower. Only speed depends on it, never a value.
STREAM_MIN_BYTES = 16 << 20
_lock = threading.Lock()
_scratch = threading.local()  # per thread: optimizers stepping in different threads never share a buffer
_library: ctypes.CDLL | None = None
_error: str | None = None


def kernel_dir() -> Path:
    """Where the compiled kernel is kept: ``$LAMB_KERNEL_DIR``, else ``$XDG_CACHE_HOME/lamb/kernels``."""
    env = os.environ.get("LAMB_KERNEL_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lamb" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _isa_flags() -> list[str]:
    """Vector instructions the machine has, as torch reports them (the kernel is cached per ISA)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ["-mavx512f", "-mavx2", "-mfma"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("fused=True on the CPU builds a small C++ kernel on first use and found no C++ "
                           "compiler (set $CXX, or install g++); use foreach=True instead")
    # -ffp-contract=off: no fused multiply-adds, so both passes round u alike and the results match the other
    # paths; -fno-math-errno and -fno-trapping-math let sqrt and the selects vectorize (neither changes a value).
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
             "-fno-trapping-math",
             *_isa_flags()]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *flags, version]).encode()).hexdigest()[:16]
    target = kernel_dir() / f"lamb_cpu_kernel_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(out)], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"fused=True on the CPU: building {_SOURCE.name} with {compiler} failed "
                                   f"(use foreach=True instead):\n{result.stderr[-2000:]}")
            os.replace(out, target)  # atomic: concurrent first uses never load a half-written file
    library = ctypes.CDLL(str(target))
    pointers = ctypes.POINTER(ctypes.c_void_p)
    i64, f64 = ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_double)
    for suffix in ("f32", "f64"):
        fn = getattr(library, f"lamb_step_{suffix}")
        fn.argtypes = [ctypes.c_int64, pointers, pointers, pointers, pointers, i64, f64, f64, i64, ctypes.c_void_p,
                       i64, ctypes.c_void_p]
        fn.restype = None
        fn = getattr(library, f"lars_step_{suffix}")
        fn.argtypes = [ctypes.c_int64, pointers, pointers, pointers, i64, f64, i64, ctypes.c_void_p, i64,
                       ctypes.c_void_p]
        fn.restype = None
    library.lamb_kernel_parallel_min.restype = ctypes.c_int64
    return library


def _load() -> ctypes.CDLL:
    global _library, _error
    with _lock:
        if _library is None and _error is None:
            try:
                _library = _build()
            except (RuntimeError, OSError) as exc:
                _error = str(exc)
        if _library is None:
            raise RuntimeError(_error)
        return _library


def available() -> bool:
    """Whether the kernel is built (building it now if needed)."""
    try:
        _load()
    except RuntimeError:
        return False
    return True


def supports(first: Tensor, *others: Tensor) -> bool:
    """Tensors of one layer the kernel can update: CPU, float32 or float64 alike, contiguous, same size."""
    if not first.is_cpu or first.dtype not in _FLOAT_TYPES or not first.is_contiguous():
        return False
    n, dtype = first.numel(), first.dtype
    for t in others:
        if not (t.is_cpu and t.dtype == dtype and t.is_contiguous() and t.numel() == n):
            return False
    return True


def _pointer_array(tensors: list[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _doubles(values) -> ctypes.Array:
    return (ctypes.c_double * len(values))(*values)


def _int64s(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _lr(lr) -> float:
    return float(lr)  # a float, or a CPU tensor: reading it never synchronizes a device


def _scratch_for(library, dtype: torch.dtype, numels: list[int]):
    """Room for u (pass 1 writes it, pass 2 reads it) and each layer's offset into it.

    Layers the kernel splits over threads (``kParallelMin`` elements or more) run one after another and share
    offset 0; the smaller ones run concurrently, each in its own range after the largest big layer. The buffer
    is kept per thread and dtype and only grows: about the size of the model's largest layer (for BERT-base the
    word embeddings, 94 MB in float32), so that no step pays for fresh pages.
    """
    parallel_min = library.lamb_kernel_parallel_min()
    big = max((n for n in numels if n >= parallel_min), default=0)
    offsets, total = [], big
    for n in numels:
        if n >= parallel_min:
            offsets.append(0)
        else:
            offsets.append(total)
            total += n
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < total:
        buffer = buffers[dtype] = torch.empty(max(total, 1), dtype=dtype)
    return buffer, offsets


def _call(kernel: str, layers: list[list[Tensor]], *arrays, norm: str, layer_adaptation: bool, maximize: bool,
          nesterov: bool) -> Tensor:
    """Calls ``<kernel>_f32`` or ``_f64`` with (count, a pointer array per list of ``layers`` (x first), numels,
    *arrays, flags, scratch, offsets, ratios) and returns the trust ratios the kernel wrote (a vector)."""
    library = _load()
    xs = layers[0]
    dtype = xs[0].dtype
    numels = [x.numel() for x in xs]
    scratch, offsets = _scratch_for(library, dtype, numels)
    ratios = torch.empty(len(xs), dtype=dtype)
    flags = _int64s([_NORM_CODES[norm], int(layer_adaptation), int(maximize), torch.get_num_threads(),
                     int(nesterov), STREAM_MIN_BYTES])
    getattr(library, f"{kernel}_{_SUFFIX[dtype]}")(
        len(xs), *(_pointer_array(ts) for ts in layers), _int64s(numels), *arrays, flags,
        ctypes.c_void_p(scratch.data_ptr()), _int64s(offsets), ctypes.c_void_p(ratios.data_ptr()))
    return ratios


def lamb_step(xs, gs, ms, vs, coefficients, *, lr, beta1, beta2, eps, weight_decay, clip_lo, clip_hi, norm,
              nesterov, layer_adaptation, maximize) -> Tensor:
    """One LAMB step on layers that :func:`supports` accepts (one dtype); returns the trust ratios (a vector).

    ``coefficients`` holds :math:`(a_m, a_g, b_v, b_g)` per layer (see ``_nesterov_coefficients``).
    """
    return _call("lamb_step", [xs, gs, ms, vs], _doubles([c for layer in coefficients for c in layer]),
                 _doubles([-_lr(lr), beta1, beta2, eps, weight_decay, clip_lo, clip_hi]), norm=norm,
                 layer_adaptation=layer_adaptation, maximize=maximize, nesterov=nesterov is not None)


def lars_step(xs, gs, ms, *, lr, beta1, weight_decay, clip_lo, clip_hi, norm, nesterov, layer_adaptation,
              maximize) -> Tensor:
    """One LARS step on layers that :func:`supports` accepts (one dtype); returns the trust ratios (a vector)."""
    return _call("lars_step", [xs, gs, ms], _doubles([-_lr(lr), beta1, weight_decay, clip_lo, clip_hi]),
                 norm=norm, layer_adaptation=layer_adaptation, maximize=maximize, nesterov=bool(nesterov))
