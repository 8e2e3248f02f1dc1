"""A WebSocket client for `streamasr serve` (aiohttp): stream audio, collect partials and finals.

Used by `streamasr client`, by `streamasr bench serve` and by the tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import numpy as np

from streamasr.errors import StreamASRError


class ServerBusy(StreamASRError):
    """The server refused the stream before the upgrade (HTTP 503: full, at capacity or shutting down).

    One clear error instead of aiohttp's handshake exception, so `streamasr client` prints one line and a
    caller can retry (here or on another replica) after `retry_after_s`."""

    def __init__(self, url: str, retry_after_s: float | None):
        self.url = url
        self.retry_after_s = retry_after_s
        wait = f"retry after {retry_after_s:g} s" if retry_after_s is not None else "retry later"
        super().__init__(f"server busy, {wait} ({url} answered HTTP 503)")


def _retry_after(headers) -> float | None:
    """The `Retry-After` seconds of a refusal (None when absent or an HTTP date, which this server never sends)."""
    try:
        return float(headers.get("Retry-After")) if headers is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class ClientResult:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    chunk_latencies_s: list[float] = field(default_factory=list)  # send of a block -> next partial/final after it

    @property
    def finals(self) -> list[dict]:
        return [e for e in self.events if e.get("type") == "final"]

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.events if e.get("type") == "error"]

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def stream_url(base: str, latency: int | None = None, encoding: str = "pcm_s16le", sample_rate: int = 16000) -> str:
    base = base.rstrip("/")
    if not base.endswith("/v1/stream"):
        base += "/v1/stream"
    query = f"sample_rate={sample_rate}&encoding={encoding}"
    if latency is not None:
        query = f"latency={latency}&" + query
    return f"{base}?{query}"


def encode_pcm(samples: np.ndarray, encoding: str = "pcm_s16le") -> bytes:
    if encoding.endswith("f32le"):
        return samples.astype("<f4").tobytes()
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()


async def stream_blocks(url: str, blocks, encoding: str = "pcm_s16le", realtime: bool = False,
                        sample_rate: int = 16000, on_event: Callable[[dict], None] | None = None,
                        timeout: float = 120.0, session=None) -> ClientResult:
    """Send float32 blocks (an iterable or async iterable), then `end`; return every event received.

    realtime: pace the blocks at the audio's duration (as a live source would). Raises `ServerBusy` when the
    server refuses the stream (HTTP 503 before the upgrade)."""
    result = ClientResult()
    own = session is None
    session = session or aiohttp.ClientSession()
    sent_times: list[float] = []  # send time of each block not yet answered
    try:
        try:
            ws = await session.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=timeout))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 503:
                raise ServerBusy(url, _retry_after(exc.headers)) from None
            raise
        async with ws:

            async def receiver():
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        now = time.perf_counter()
                        if event.get("type") in ("partial", "final") and sent_times:
                            # every block sent so far is now reflected (or still in a chunk's look-ahead)
                            result.chunk_latencies_s.append(now - sent_times[0])
                            sent_times.clear()
                        result.events.append(event)
                        if on_event is not None:
                            on_event(event)
                    elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                        break

            recv_task = asyncio.create_task(receiver())
            t0 = time.perf_counter()
            audio_s = 0.0
            try:
                if hasattr(blocks, "__aiter__"):
                    async for block in blocks:
                        if recv_task.done():
                            break
                        sent_times.append(time.perf_counter())
                        await ws.send_bytes(encode_pcm(block, encoding))
                else:
                    for block in blocks:
                        if recv_task.done():
                            break
                        if realtime:
                            wait = t0 + audio_s - time.perf_counter()
                            if wait > 0:
                                await asyncio.sleep(wait)
                        sent_times.append(time.perf_counter())
                        await ws.send_bytes(encode_pcm(block, encoding))
                        audio_s += block.size / sample_rate
                if not recv_task.done():
                    await ws.send_str(json.dumps({"type": "end"}))
            except (ConnectionError, RuntimeError):
                pass  # the server closed the stream; its error event says why
            await asyncio.wait_for(recv_task, timeout)
            result.close_code = ws.close_code
    finally:
        if own:
            await session.close()
    return result


def file_blocks(samples: np.ndarray, block_ms: int = 100, sample_rate: int = 16000):
    n = max(1, int(sample_rate * block_ms / 1000))
    return [samples[i : i + n] for i in range(0, samples.size, n)]


def transcribe_url(url: str, samples: np.ndarray, block_ms: int = 100, **kw) -> ClientResult:
    """Blocking helper: stream `samples` to the server and return the result."""
    return asyncio.run(stream_blocks(url, file_blocks(samples, block_ms), **kw))
