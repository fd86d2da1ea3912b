"""Process-level settings that make the engine faster, applied explicitly (never at import).

The conditional maps allocate and free large buffers in every batch. glibc's ``malloc`` serves
blocks above ``M_MMAP_THRESHOLD`` (128 KiB by default, adapting upwards to at most 32 MiB) with
``mmap`` and returns freed memory to the kernel above ``M_TRIM_THRESHOLD``; so every batch
faults its buffers in again, page by page. On this project's CPU machine half of
``conceptree demo``'s time (paper route) was kernel time: 598 s system of 1,322 s CPU, 238
million minor page faults. :func:`tune_allocator` keeps freed memory in the process instead
(``M_MMAP_THRESHOLD`` = 1 GiB, ``M_TRIM_THRESHOLD`` = 2 GiB - 1); measured before and after in
``benchmarks/results/allocator.json``.

The command line applies it at start-up; a library user calls it once, explicitly::

    from conceptree.runtime import tune_allocator
    tune_allocator()

It changes the whole process's ``malloc`` (peak resident memory can grow: freed blocks are
kept for reuse). On other C libraries (macOS, Windows, musl) it does nothing and returns
False; the engine then runs as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 2**30
TRIM_THRESHOLD_BYTES = 2**31 - 1


def tune_allocator() -> bool:
    """Keep freed large buffers in the process (glibc only). Returns whether it was applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        ok_trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim)


def resolve_device(name: str):
    """``torch.device(name)``, refused in one line when the name is unknown or CUDA is absent."""
    import torch

    from .errors import InputError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return device
