"""Hand back the resident pages of weight files that ONNX Runtime keeps mapped but no longer reads.

ONNX Runtime maps a graph's weight file (NAME.onnx.data) into memory and builds its initializers on that
mapping. Each int4 MatMulNBits weight is then packed, with its scales and zero points, into a new buffer;
the mapped 4-bit originals are released, but on x86 the kernel reports the scales and zero points as not
packed, so ORT keeps their mapped originals referenced, and resident, since packing read them. The packed
kernel never reads them again.

Dropping the resident pages of these file mappings, none of whose pages was ever written, (`madvise(MADV_DONTNEED)`) takes them out of
the process's resident memory without unmapping anything. A page read later is read back from the file on
first touch, as any mapped file is: the fp32 tensors the step reads (norms, biases, tables) come back after
one step, the unused scales and zero points stay out. Correctness therefore never depends on which tensors
ORT still reads; it depends, as any mapping does, on the file not being rewritten in place while the model
is loaded (the converter and quantizer replace files by rename, which leaves a mapped file intact).

Linux only (it reads /proc/self/smaps); elsewhere nothing happens. Whether a process releases is its loader's
choice (`OrtBackend(release_mapped=...)`); STREAMASR_RELEASE_MAPPED, when set, overrides that choice (`0` keeps
the pages, anything else releases them).
"""

from __future__ import annotations

import os
from pathlib import Path

from streamasr.runtime.libc import linux_libc
from streamasr.runtime.proc_maps import mapping_header, read_lines

#: madvise() advice (sys/mman.h): drop the pages; a private file mapping re-reads them from the file
_MADV_DONTNEED = 4


def clean_file_mappings(directory: Path, smaps: str = "/proc/self/smaps") -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's private mappings of files inside `directory` that hold no
    written page: every resident page equals the file's, so dropping one loses nothing.

    ONNX Runtime maps weight files readable and writable (copy on write) but never writes to them; a mapping
    with a written page (its `Anonymous` count in smaps) is left alone all the same."""
    root = str(Path(directory).resolve()) + os.sep
    out: list[tuple[int, int, str]] = []
    current: tuple[int, int, str] | None = None
    for line in read_lines(smaps):
        mapping = mapping_header(line)
        if mapping is not None:
            start, end, perms, path = mapping
            keep = perms.endswith("p") and path.startswith(root) and not path.endswith(" (deleted)")
            current = (start, end, path) if keep else None
        elif current is not None and line.startswith("Anonymous:"):
            if int(line.split()[1]) == 0:
                out.append(current)
            current = None
    return out


def release_wanted(default: bool = True) -> bool:
    """Whether to release: STREAMASR_RELEASE_MAPPED when it is set (`0`: no), else `default`."""
    value = os.environ.get("STREAMASR_RELEASE_MAPPED")
    return default if value is None else value.strip() != "0"


def release_mapped_weights(directory: Path) -> int:
    """Drop the resident pages of every unwritten private mapping of a file in `directory`; bytes of address
    range advised (0 where nothing is mapped, or off Linux)."""
    libc = linux_libc()
    if libc is None:
        return 0
    released = 0
    for start, end, _ in clean_file_mappings(directory):
        if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += end - start
    return released
