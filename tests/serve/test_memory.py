"""Memory returns to its idle level after streams close: a real server process, its RSS read from /proc.

Rounds of 8 concurrent streams (some ended cleanly, some dropped mid-utterance) run against one server; after
each round every stream is closed and the server's RSS must be back near the level of the first round, and
must not grow from round to round (a per-stream leak of caches, inboxes or sessions would make it grow).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp
import numpy as np
from server_process import running_server

from streamasr.serve.client import encode_pcm, file_blocks, stream_blocks, stream_url

ROUNDS = 4
STREAMS = 8


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _active_streams(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(l for l in text.splitlines() if l.startswith("streamasr_active_streams"))
    return float(line.split()[-1])


async def _drop_mid_utterance(url: str, samples: np.ndarray) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            pcm = encode_pcm(samples[: len(samples) // 2], "pcm_s16le")
            for i in range(0, len(pcm), 3200):
                await ws.send_bytes(pcm[i:i + 3200])
            # leave without {"type": "end"}: the server must drop this stream's state


async def _round(base: str, utterances: list[np.ndarray]) -> None:
    url = stream_url(base, 160)
    jobs = []
    for i in range(STREAMS):
        x = utterances[i % len(utterances)]
        if i % 4 == 3:
            jobs.append(_drop_mid_utterance(url, x))
        else:
            jobs.append(stream_blocks(url, file_blocks(x, 100), realtime=False, timeout=60))
    results = await asyncio.gather(*jobs)
    finished = [r for r in results if r is not None]
    assert all(r.close_code == 1000 and not r.errors for r in finished)


def test_rss_returns_to_idle_after_streams_close(serve_model, short_speech):
    with running_server(serve_model.directory, "--threads", "1") as (proc, port):
        base = f"ws://127.0.0.1:{port}"
        after = []
        for _ in range(ROUNDS):
            asyncio.run(_round(base, short_speech))
            for _ in range(100):  # dropped connections are noticed asynchronously
                if _active_streams(port) == 0:
                    break
                time.sleep(0.1)
            assert _active_streams(port) == 0
            time.sleep(0.5)
            after.append(_rss_mb(proc.pid))
        print("server RSS after each round (MB):", [round(x, 1) for x in after])
        # the first round allocates the arenas and batch buffers once; later rounds reuse them
        assert max(after[1:]) - after[0] < 25, after
        assert after[-1] - after[1] < 10, after
