"""The minimal application's path (load, stream, finish) in a clean child process: what it imports and
what it holds; and the heap tuning that keeps ONNX Runtime's load-time buffers out of the peak."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streamasr.eval.app_memory import HEAVY_MODULES
from streamasr.eval.memory import app_memory, format_stages


@pytest.fixture(scope="module")
def app_run(tiny_model_dir, speech):
    samples = np.concatenate(list(speech.values()))[: 16000 * 6]
    return app_memory(tiny_model_dir, samples, [160, 560], threads=1)


def test_minimal_application_never_imports_torch_nemo_or_onnx(app_run):
    assert set(app_run["imported"]) == set(HEAVY_MODULES) == {"torch", "nemo", "onnx"}
    assert not any(app_run["imported"].values()), app_run["imported"]


def test_minimal_application_streams_and_reports_each_stage(app_run):
    assert [s["stage"] for s in app_run["stages"]] == ["start", "audio", "load", "stream 160 ms", "stream 560 ms"]
    streams = app_run["streams"]
    assert [s["latency_ms"] for s in streams] == [160, 560]
    assert all(s["tokens"] > 0 and s["rtfx"] > 0 and s["chunk_s"] for s in streams)
    stages = {s["stage"]: s for s in app_run["stages"]}
    # loading the model costs resident memory; the peak is the largest stage peak and at least every RSS seen
    assert stages["load"]["rss"] > stages["audio"]["rss"]
    assert app_run["peak_rss_bytes"] == max(s["peak"] for s in app_run["stages"])
    assert app_run["peak_rss_bytes"] >= max(s["rss"] for s in app_run["stages"])
    assert all(s["anon"] + s["file"] <= s["rss"] + 4096 for s in app_run["stages"])
    assert "| load |" in format_stages(app_run, "tiny")


_FRAGMENT = textwrap.dedent("""
    import ctypes, json, sys
    from streamasr.runtime.backend import lean_heap_while_loading

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    def block(n):
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        return p

    def load_like():
        # what a session load does: buffers freed while long-lived ones are made between them
        libc.free(block(8 << 20))  # a freed mapping raises glibc's dynamic mmap threshold
        freed, kept = [], []
        for _ in range(300):
            freed.append(block(512 << 10))
            kept.append(block(192 << 10))
        for p in freed:
            libc.free(p)
        return kept

    before = rss()
    if sys.argv[1] == "tuned":
        with lean_heap_while_loading():
            kept = load_like()
    else:
        kept = load_like()
    print(json.dumps({"retained": rss() - before}))
""")


def _retained(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["retained"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning speaks to glibc's malloc only")
def test_heap_tuning_returns_buffers_freed_while_loading():
    # 300 x 192 KiB (59 MB) kept and 300 x 512 KiB (157 MB) freed between them: without the tuning the freed
    # blocks stay resident in the heap, with it only the kept ones are
    kept = 300 * (192 << 10)
    assert _retained("plain") > kept + 100e6
    assert _retained("tuned") < kept + 20e6
