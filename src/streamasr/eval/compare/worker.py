"""Where a compared system runs: its own process (default) or the harness's process.

A process per system gives each its own peak RSS (`ru_maxrss` of that process: interpreter, runtime, model
and activations) and keeps one runtime's thread pools and allocator from taxing another's timing. The
harness still sends the utterances one at a time to one system after another (interleaved), so ratios
between rows are measured over the same minutes of a noisy machine. In-process runs (`--in-process`: tests,
or a machine without room for the processes) share one peak RSS, reported as such.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import traceback

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.eval.compare.backend import SystemInfo, Transcript
from streamasr.eval.compare.registry import load_system


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class InProcess:
    shared_rss = True

    def __init__(self, spec_text: str, threads: int):
        self.system = load_system(spec_text, threads)
        self.info: SystemInfo = self.system.info

    def transcribe(self, samples: np.ndarray) -> Transcript:
        return self.system.transcribe(samples)

    def close(self) -> int:
        self.system = None
        return peak_rss_bytes()


def _serve(conn, spec_text: str, threads: int) -> None:
    try:
        system = load_system(spec_text, threads)
        conn.send(("ok", system.info))
    except StreamASRError as exc:
        conn.send(("error", str(exc)))
        return
    except BaseException:  # noqa: BLE001 - a bug: hand its traceback to the harness
        conn.send(("bug", traceback.format_exc()))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            conn.send(("ok", peak_rss_bytes()))
            return
        try:
            conn.send(("ok", system.transcribe(msg[1])))
        except StreamASRError as exc:
            conn.send(("error", str(exc)))
        except BaseException:  # noqa: BLE001
            conn.send(("bug", traceback.format_exc()))


class SystemProcess:
    """One system in a spawned process; `start` returns at once, `wait_loaded` collects its SystemInfo."""

    shared_rss = False

    def __init__(self, spec_text: str, threads: int):
        self.spec_text = spec_text
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, spec_text, threads), daemon=True,
                                name=f"compare:{spec_text}")
        self.proc.start()
        child.close()
        self.info: SystemInfo | None = None

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            code = self.proc.exitcode if self.proc.exitcode is not None else self.proc.join(5) or self.proc.exitcode
            raise StreamASRError(f"{self.spec_text}: its process died (exit code {code}; out of memory? "
                                 "try --schedule sequential)") from None
        if status == "error":
            raise StreamASRError(value)
        if status == "bug":
            raise RuntimeError(f"{self.spec_text} failed in its process:\n{value}")
        return value

    def wait_loaded(self) -> SystemInfo:
        self.info = self._reply()
        return self.info

    def transcribe(self, samples: np.ndarray) -> Transcript:
        self.conn.send(("run", samples))
        return self._reply()

    def close(self) -> int:
        try:
            self.conn.send(("close",))
            rss = self._reply()
        finally:
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
        return rss

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
