"""Back the weights ONNX Runtime packs while a session loads with transparent huge pages.

A one-stream step reads every packed int4 weight once (hundreds of MB for the full-size model), more than any
CPU cache holds, so its speed is the speed of that stream from memory. In 4 KiB pages the stream crosses a
page, and a TLB entry, every 4 KiB; in 2 MiB pages 512 times less often. The packed weights live in anonymous
memory ORT allocates while it creates a session (`backend.lean_heap_while_loading` gives each large buffer its
own mapping), which the kernel backs with small pages unless asked: many systems set transparent huge pages to
`madvise`. So the ranges of anonymous memory that a load created are marked `MADV_HUGEPAGE` and collapsed at
once with `MADV_COLLAPSE` (Linux 6.1 and later): the kernel copies each 2 MiB-aligned piece into a huge page.
Nothing else of the process is touched. Where the kernel cannot (older kernels, THP turned off, no free huge
page) the calls fail and the pages stay as they were: the content never changes, only the page size.

Linux only; STREAMASR_HUGE_PAGES=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

from streamasr.runtime.libc import linux_libc
from streamasr.runtime.proc_maps import mapping_header, read_lines

#: madvise() advice (asm-generic/mman-common.h)
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
HUGE_PAGE = 2 * 1024 * 1024

Range = tuple[int, int]


def anonymous_ranges(maps: str = "/proc/self/maps") -> list[Range]:
    """(start, end) of this process's private, writable mappings backed by no file (the brk heap included)."""
    out: list[Range] = []
    for line in read_lines(maps):
        mapping = mapping_header(line)
        if mapping is not None and mapping.perms == "rw-p" and mapping.path in ("", "[heap]"):
            out.append((mapping.start, mapping.end))
    return out


def new_ranges(before: list[Range], after: list[Range]) -> list[Range]:
    """The parts of `after` covered by no range of `before` (a mapping may have grown into new pages)."""
    out: list[Range] = []
    old = sorted(before)
    for start, end in sorted(after):
        cursor = start
        for o_start, o_end in old:
            if o_end <= cursor or o_start >= end:
                continue
            if o_start > cursor:
                out.append((cursor, o_start))
            cursor = max(cursor, o_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def huge_page_spans(ranges: list[Range]) -> list[Range]:
    """The whole 2 MiB-aligned pieces of `ranges` (a huge page cannot straddle a range's edge)."""
    out = []
    for start, end in ranges:
        first = -(-start // HUGE_PAGE) * HUGE_PAGE
        last = end // HUGE_PAGE * HUGE_PAGE
        if last > first:
            out.append((first, last))
    return out


def collapse(spans: list[Range]) -> int:
    """Ask for huge pages over `spans` and collapse them now; returns the bytes the kernel collapsed."""
    libc = linux_libc()
    if libc is None:
        return 0
    done = 0
    for start, end in spans:
        libc.madvise(ctypes.c_void_p(start), end - start, _MADV_HUGEPAGE)
        if libc.madvise(ctypes.c_void_p(start), end - start, _MADV_COLLAPSE) == 0:
            done += end - start
    return done


def wanted() -> bool:
    """On Linux, unless STREAMASR_HUGE_PAGES=0."""
    return linux_libc() is not None and os.environ.get("STREAMASR_HUGE_PAGES", "1").strip() != "0"


@contextmanager
def huge_pages_for_new_memory() -> Iterator[None]:
    """Collapse into huge pages the anonymous memory created inside the block (a session load)."""
    if not wanted():
        yield
        return
    before = anonymous_ranges()
    yield
    collapse(huge_page_spans(new_ranges(before, anonymous_ranges())))
