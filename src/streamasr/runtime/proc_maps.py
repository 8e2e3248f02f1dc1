"""This process's memory mappings, as Linux lists them in /proc/self/maps and /proc/self/smaps.

Two parts of the runtime look at them after a session loads: `mapped_weights` (the weight files ONNX Runtime
maps) and `huge_pages` (the anonymous memory the load created). Both read the same header lines.
"""

from __future__ import annotations

from typing import NamedTuple


class Mapping(NamedTuple):
    start: int
    end: int
    perms: str  # e.g. "rw-p": the last letter is p (private) or s (shared)
    path: str  # the mapped file, a pseudo-name such as "[heap]", or "" for anonymous memory


def mapping_header(line: str) -> Mapping | None:
    """The mapping a maps line (or an smaps header line) describes; None for smaps' per-mapping detail lines
    ("Rss:", "Anonymous:", ...)."""
    fields = line.split(maxsplit=5)
    if not fields or "-" not in fields[0] or fields[0].endswith(":"):
        return None
    start, end = (int(x, 16) for x in fields[0].split("-"))
    return Mapping(start, end, fields[1], fields[5].rstrip("\n") if len(fields) == 6 else "")


def read_lines(path: str) -> list[str]:
    """The lines of a /proc file; none where it cannot be read (not Linux, no /proc)."""
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []
