"""The process's C library, for the calls Python's standard library does not wrap.

The runtime tunes glibc's malloc while sessions load (`backend.lean_heap_while_loading`), asks for huge pages
for what the load packed (`huge_pages`) and advises the
kernel about mapped weight files (`mapped_weights`); both speak to the same loaded library, with errno kept
so a failed call can say why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform


@functools.cache
def linux_libc() -> ctypes.CDLL | None:
    """The C library on Linux, with `madvise` typed; None elsewhere or when it cannot be loaded."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose malloc `mallopt` and `malloc_trim` configure), else None."""
    return linux_libc() if platform.libc_ver()[0] == "glibc" else None
