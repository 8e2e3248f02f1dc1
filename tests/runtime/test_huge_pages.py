"""Huge pages for the memory a session load creates (runtime/huge_pages.py)."""

from __future__ import annotations

import mmap
import platform
from pathlib import Path

import numpy as np
import pytest

from streamasr.runtime.huge_pages import (
    HUGE_PAGE,
    anonymous_ranges,
    huge_page_spans,
    huge_pages_for_new_memory,
    new_ranges,
)

MB = 1 << 20


def test_new_ranges_are_what_no_earlier_range_covered():
    before = [(0, 10), (20, 30), (50, 60)]
    after = [(0, 15), (20, 30), (40, 70), (80, 90)]  # one grew, one kept, one grew around an old one, one new
    assert new_ranges(before, after) == [(10, 15), (40, 50), (60, 70), (80, 90)]
    assert new_ranges(after, after) == []


def test_huge_page_spans_keep_whole_aligned_pieces_only():
    h = HUGE_PAGE
    assert huge_page_spans([(1, 3 * h + 5), (4 * h, 5 * h), (5 * h + 1, 6 * h - 1)]) == [(h, 3 * h), (4 * h, 5 * h)]


def test_anonymous_ranges_are_private_writable_and_backed_by_no_file(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/python3\n"
        "00651000-00652000 rw-p 00051000 08:02 173521 /usr/bin/python3\n"
        "01b3c000-01f5d000 rw-p 00000000 00:00 0 [heap]\n"
        "7f00a0000000-7f00a4000000 rw-p 00000000 00:00 0 \n"
        "7f00b0000000-7f00b4000000 rw-s 00000000 00:01 4 /dev/shm/x\n"
        "7f00c0000000-7f00c1000000 r--p 00000000 00:00 0 \n"
        "7ffd1e2a1000-7ffd1e2c2000 rw-p 00000000 00:00 0 [stack]\n")
    assert anonymous_ranges(str(maps)) == [(0x01B3C000, 0x01F5D000), (0x7F00A0000000, 0x7F00A4000000)]


def _kernel_collapses() -> bool:
    """MADV_COLLAPSE exists from Linux 6.1 and needs transparent huge pages not turned off."""
    if platform.system() != "Linux":
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return (major, minor) >= (6, 1) and setting.exists() and "[never]" not in setting.read_text()


def _huge_kb_within(start: int, end: int) -> int:
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            inside = lo < end and hi > start
        elif inside and fields[0] == "AnonHugePages:":
            total += int(fields[1])
    return total


def _private_buffer(size: int) -> tuple[mmap.mmap, np.ndarray]:
    """Anonymous private memory as ONNX Runtime's allocator gets it (numpy would ask for huge pages itself),
    filled with a known pattern."""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = np.frombuffer(buf, dtype=np.float32)
    view[:] = np.arange(view.size, dtype=np.float32)
    return buf, view


def test_memory_created_in_the_block_gets_huge_pages_and_keeps_its_content(monkeypatch):
    monkeypatch.delenv("STREAMASR_HUGE_PAGES", raising=False)
    with huge_pages_for_new_memory():
        _, view = _private_buffer(64 * MB)
    start = view.ctypes.data
    assert np.array_equal(view, np.arange(view.size, dtype=np.float32))
    huge = _huge_kb_within(start, start + view.nbytes)
    if _kernel_collapses():
        assert huge * 1024 >= view.nbytes - 2 * HUGE_PAGE  # all but the unaligned ends
    else:
        assert huge == 0


def test_turned_off_or_outside_the_block_the_pages_stay_small(monkeypatch):
    _, before_view = _private_buffer(16 * MB)  # created before the block: never touched
    monkeypatch.setenv("STREAMASR_HUGE_PAGES", "0")
    with huge_pages_for_new_memory():
        _, off_view = _private_buffer(16 * MB)
    monkeypatch.delenv("STREAMASR_HUGE_PAGES")
    with huge_pages_for_new_memory():
        pass
    for view in (before_view, off_view):
        start = view.ctypes.data
        assert _huge_kb_within(start, start + view.nbytes) == 0


@pytest.mark.parametrize("value", ["1", None])
def test_a_loaded_model_streams_the_same_with_huge_pages(value, loaded_tiny, tiny_model_dir, speech, monkeypatch):
    from streamasr.runtime import Model

    audio = next(iter(speech.values()))[: 16000 * 4]
    if value is None:
        monkeypatch.setenv("STREAMASR_HUGE_PAGES", "0")
    else:
        monkeypatch.setenv("STREAMASR_HUGE_PAGES", value)
    model = Model.load_dir(tiny_model_dir, threads=1)
    assert model.transcribe(audio, 160).token_ids == loaded_tiny.transcribe(audio, 160).token_ids
