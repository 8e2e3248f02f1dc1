"""An application's own peak memory, measured in a clean child process (`bench speed`'s app peak RSS).

The child is `eval/app_memory.py` for a streamasr model (it imports streamasr and nothing heavy) or
`eval/sherpa_peer.py` for a sherpa-onnx export; each loads one model, streams the given audio and reports
its peak RSS per stage. The audio goes to the child as a temporary `.npy`, so both see the same samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from streamasr.errors import StreamASRError


def _run_child(module: str, model: Path, samples: np.ndarray, args: list[str], env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="streamasr-app-") as tmp:
        audio = Path(tmp) / "audio.npy"
        np.save(audio, np.asarray(samples, dtype=np.float32))
        proc = subprocess.run([sys.executable, "-m", module, str(model), str(audio), *args], capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise StreamASRError(f"the application child ({module}) failed on {model}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def app_memory(directory: Path, samples: np.ndarray, latencies: list[int], threads: int = 2,
               block_ms: float = 20.0, env: dict | None = None) -> dict:
    """The minimal streamasr application on `directory`, streaming `samples` at each latency in turn, alone
    in a child process: its stages, peak RSS, imported heavy modules and streams (see eval/app_memory.py).
    `env` adds environment variables (STREAMASR_MALLOC_TUNING=0 shows the cost without the heap tuning)."""
    return _run_child("streamasr.eval.app_memory", Path(directory), samples,
                      ["--latency", ",".join(str(x) for x in latencies), "--threads", str(threads),
                       "--block-ms", f"{block_ms:g}"], env)


def peer_memory(directory: Path, samples: np.ndarray, latency_ms: int, threads: int = 2,
                block_ms: float = 20.0) -> dict:
    """The same for a sherpa-onnx export's mode (eval/sherpa_peer.py's application)."""
    return _run_child("streamasr.eval.sherpa_peer", Path(directory), samples,
                      ["--latency", str(latency_ms), "--threads", str(threads), "--block-ms", f"{block_ms:g}"])


def format_stages(result: dict, label: str) -> str:
    """A markdown table of one child's stages: RSS (anonymous / file-backed) at the end, peak during."""
    lines = [f"memory by stage, {label} (MB; peak = the stage's own high-water mark)", "",
             "| stage | RSS | anonymous | file-backed | peak during the stage |", "|---|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['rss'] / 1e6:.0f} | {s['anon'] / 1e6:.0f} | {s['file'] / 1e6:.0f} | "
                     f"{s['peak'] / 1e6:.0f} |")
    lines.append(f"\npeak RSS {result['peak_rss_bytes'] / 1e6:.0f} MB")
    return "\n".join(lines)
