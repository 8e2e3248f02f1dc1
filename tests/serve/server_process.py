"""`streamasr serve` as a real process on a free port, for the tests that need one (commands, memory)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_dir, *args: str, stdout=subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen, int]]:
    """(process, port) of `streamasr serve --model model_dir --allow-random *args` once /health answers;
    terminated on exit (its piped stdout can be read after)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamasr", "serve", "--model", str(model_dir),
                             "--port", str(port), "--allow-random", *args], stdout=stdout, stderr=subprocess.PIPE)
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.2)
        else:
            raise AssertionError("the server did not answer /health within 30 s")
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(10)
