"""Two `streamasr serve` replicas behind a real haproxy (Debian's), all over real sockets on 127.0.0.1.

What docs/deploy.md promises: least-connections spreads streams over the replicas; a replica at capacity answers
`GET /ready` with 503, haproxy's health check takes it out, and new streams land on the other replica; a replica
killed mid-stream gives its clients a prompt close while the other replica's streams finish intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from server_process import free_port, running_server

from streamasr.serve.client import file_blocks, stream_blocks, stream_url

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


@pytest.fixture(scope="module", autouse=True)
def haproxy_installed():
    """Skips only where haproxy is missing outside CI; with `CI` set (.ci/run, after scripts/setup) it fails."""
    if HAPROXY is None:
        reason = "haproxy is not installed (scripts/setup installs Debian's haproxy)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)


LATENCY = 160
CHECK_INTER_MS = 200  # haproxy's health-check interval: a replica that is not ready is out within ~1 interval

HAPROXY_CFG = """\
global
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 60s
    timeout client-fin 5s
    timeout server-fin 5s

frontend asr
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter {inter}ms fall 1 rise 1
    server r0 127.0.0.1:{p0}
    server r1 127.0.0.1:{p1}
"""


@pytest.fixture(scope="module")
def model_dir(request) -> Path:
    prebuilt = os.environ.get("STREAMASR_SERVE_TEST_MODEL")
    return Path(prebuilt) if prebuilt else request.getfixturevalue("tiny_model_dir")


def _get(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:port/path; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _streams_total(port: int) -> int:
    """Streams the replica accepted since start (`streamasr_streams_total`, summed over its labels if any)."""
    _, body = _get(port, "/metrics")
    return round(sum(float(line.rsplit(None, 1)[1]) for line in body.splitlines()
                     if re.match(r"streamasr_streams_total[{ ]", line)))


def _active(port: int) -> int:
    return json.loads(_get(port, "/health")[1])["active_streams"]


def _wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def _await_for(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """Two replicas (processes) and the haproxy in front of them."""

    def __init__(self, replicas, haproxy: subprocess.Popen, port: int, sock: Path, log: Path):
        self.procs = [p for p, _ in replicas]
        self.ports = [port for _, port in replicas]
        self.haproxy, self.port, self.sock, self.log = haproxy, port, sock, log

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def server_status(self) -> dict[str, str]:
        """haproxy's view: server name -> "UP" / "DOWN" (from `show stat` on its admin socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r["status"].split()[0] for r in rows if r["pxname"] == "replicas"
                and r["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_status(self, want: dict[str, str], timeout: float = 10.0) -> float:
        """Seconds until haproxy shows `want` (a subset of server_status)."""
        t0 = time.monotonic()
        _wait_for(lambda: all(self.server_status().get(k) == v for k, v in want.items()), timeout,
                  f"haproxy to show {want} (now {self.server_status()}; log: {self.log.read_text()[-2000:]})")
        return time.monotonic() - t0

    def totals(self) -> list[int]:
        return [_streams_total(p) for p in self.ports]


@pytest.fixture
def cluster(model_dir, tmp_path):
    args = ("--threads", "1", "--warmup-batches", "0", "--max-streams", "2", "--max-load", "1", "--endpoint-ms", "0")
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(running_server(model_dir, *args)) for _ in range(2)]
        for _, p in replicas:
            status, body = _get(p, "/ready")
            assert status == 200 and json.loads(body)["ready"] is True, (status, body)
        # a unix socket path must stay under ~104 bytes, which a deep tmp_path can pass
        sock_dir = tempfile.mkdtemp(prefix="lb-", dir="/tmp" if os.path.isdir("/tmp") else None)
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        port, sock, log = free_port(), Path(sock_dir) / "haproxy.sock", tmp_path / "haproxy.log"
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(sock=sock, port=port, inter=CHECK_INTER_MS,
                                          p0=replicas[0][1], p1=replicas[1][1]))
        log_file = stack.enter_context(open(log, "wb"))
        haproxy = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=log_file, stderr=subprocess.STDOUT)

        def stop_haproxy():
            haproxy.terminate()
            try:
                haproxy.wait(10)
            except subprocess.TimeoutExpired:
                haproxy.kill()
                haproxy.wait(10)

        stack.callback(stop_haproxy)
        _wait_for(lambda: sock.exists() or haproxy.poll() is not None, 10, "haproxy's admin socket")
        assert haproxy.poll() is None, log.read_text()
        c = Cluster(replicas, haproxy, port, sock, log)
        c.wait_status({"r0": "UP", "r1": "UP"})
        yield c


def _speech(short_speech, n: int) -> np.ndarray:
    return np.concatenate(short_speech[:n]).astype(np.float32)


def test_streams_spread_over_both_replicas(cluster, serve_model, short_speech, s16_roundtrip):
    """Four concurrent real-time streams through haproxy: two on each replica (leastconn), every text exact."""
    xs = [short_speech[i % len(short_speech)] for i in range(4)]
    before = cluster.totals()

    async def main():
        return await asyncio.gather(*(stream_blocks(stream_url(cluster.base, LATENCY), file_blocks(x, 100),
                                                    realtime=True, timeout=30) for x in xs))

    results = asyncio.run(asyncio.wait_for(main(), 60))
    for x, r in zip(xs, results):
        assert r.close_code == 1000 and not r.errors, (r.close_code, r.errors)
        assert r.text == serve_model.transcribe(s16_roundtrip(x), LATENCY).text.strip()
    per_replica = [a - b for a, b in zip(cluster.totals(), before)]
    assert per_replica == [2, 2], per_replica


def test_full_replica_is_skipped(cluster, serve_model, short_speech, s16_roundtrip):
    """Replica r0 at --max-streams (two streams opened on it directly, not through haproxy, so haproxy's own
    connection counts cannot know): /ready says 503, the health check takes r0 out within a few intervals,
    and new streams through haproxy all land on r1, exact. Once r0's streams close it is back in."""
    x = short_speech[0]
    p0 = cluster.ports[0]

    async def main():
        async with aiohttp.ClientSession() as http:
            direct = [await http.ws_connect(stream_url(f"ws://127.0.0.1:{p0}", LATENCY)) for _ in range(2)]
            await _await_for(lambda: _active(p0) == 2, 10, "r0 to count its two direct streams")
            status, body = _get(p0, "/ready")
            assert status == 503 and json.loads(body)["ready"] is False, (status, body)
            down_s = await asyncio.to_thread(cluster.wait_status, {"r0": "DOWN", "r1": "UP"})
            assert down_s < 5.0
            before = cluster.totals()
            results = await asyncio.gather(*(stream_blocks(stream_url(cluster.base, LATENCY), file_blocks(x, 100),
                                                           realtime=True, timeout=30) for _ in range(2)))
            after = cluster.totals()
            for ws in direct:
                await ws.send_str(json.dumps({"type": "end"}))
                async for _ in ws:
                    pass
                assert ws.close_code == 1000
            return results, [a - b for a, b in zip(after, before)]

    results, per_replica = asyncio.run(asyncio.wait_for(main(), 60))
    expected = serve_model.transcribe(s16_roundtrip(x), LATENCY).text.strip()
    for r in results:
        assert r.close_code == 1000 and not r.errors and r.text == expected, (r.close_code, r.errors, r.text)
    assert per_replica == [0, 2], per_replica
    assert _get(p0, "/ready")[0] == 200
    cluster.wait_status({"r0": "UP", "r1": "UP"})


def test_killed_replica_closes_its_streams_and_spares_the_others(cluster, serve_model, short_speech,
                                                                 s16_roundtrip):
    """Four real-time streams through haproxy, two per replica; SIGKILL r0 once all four are running. r0's two
    clients return within a few seconds (the connection drops: 1006, or an aiohttp error), r1's two finish
    with close 1000 and the exact text."""
    x = _speech(short_speech, 2)  # ~7 s, so the streams are mid-way when the kill comes
    expected = serve_model.transcribe(s16_roundtrip(x), LATENCY).text.strip()
    p0, p1 = cluster.ports
    killed_at: list[float] = []

    async def one():
        try:
            r = await stream_blocks(stream_url(cluster.base, LATENCY), file_blocks(x, 100), realtime=True,
                                    timeout=30)
        except (aiohttp.ClientError, ConnectionError) as exc:
            r = exc
        return r, time.monotonic()

    async def main():
        tasks = [asyncio.create_task(one()) for _ in range(4)]
        await _await_for(lambda: _active(p0) == 2 and _active(p1) == 2, 10, "two streams on each replica")
        await asyncio.sleep(0.5)  # some audio recognised on both
        cluster.procs[0].send_signal(signal.SIGKILL)
        killed_at.append(time.monotonic())
        return await asyncio.gather(*tasks)

    results = asyncio.run(asyncio.wait_for(main(), 60))
    assert cluster.procs[0].wait(5) == -signal.SIGKILL
    finished = [r for r, _ in results if not isinstance(r, Exception) and r.close_code == 1000]
    dropped = [(r, t) for r, t in results if isinstance(r, Exception) or r.close_code != 1000]
    assert len(finished) == 2 and len(dropped) == 2, [getattr(r, "close_code", r) for r, _ in results]
    for r in finished:
        assert not r.errors and r.text == expected
    for r, t in dropped:
        assert t - killed_at[0] < 5.0, f"a client of the killed replica took {t - killed_at[0]:.1f} s to return"
        if not isinstance(r, Exception):
            assert r.close_code in (None, 1006), r.close_code
    # the balancer notices and keeps serving from the survivor
    cluster.wait_status({"r0": "DOWN", "r1": "UP"})
    y = short_speech[0]
    r = asyncio.run(stream_blocks(stream_url(cluster.base, LATENCY), file_blocks(y, 100), timeout=30))
    assert r.close_code == 1000 and r.text == serve_model.transcribe(s16_roundtrip(y), LATENCY).text.strip()
