"""The batching scheduler: one thread runs the encoder steps of all live streams, batched.

Each round:
1. every session's newly arrived audio goes through its own frontend (mel frames are buffered in its
   encoder, nothing is encoded yet);
2. the sessions with a complete chunk are grouped by (latency mode, step width, first step or not) -- the
   items of one encoder call must share the mel width and the `drop` count -- and each group runs as ONE
   ONNX Runtime call with a batch axis (up to `max_batch` streams): mel inputs are stacked, each stream's
   cache rings are copied once into the batch, and the step's new keys and values are written back into
   each stream's own rings (runtime/cache.py);
3. each stream decodes its own chunk with its own RNN-T decoder state (greedy decoding is per stream);
4. sessions whose client sent `end` and have no complete chunk left encode their tail and emit the final.

Fairness: a round takes at most ONE chunk per stream, so a stream with a backlog (a client that sends
faster than real time, or fell behind) advances one chunk per round alongside the others instead of
stalling them; rounds repeat while any chunk is ready.

Batching window: a batched step costs far less per stream than single steps (full-size int4 at 160 ms:
20 ms for one stream, 8.2 ms per stream for eight), but streams' chunks complete at unrelated moments, so
a scheduler that runs whatever is ready at once makes batches of 1-3 and spends its whole time on them
once a few streams are open. So a group of later steps waits, at most `batch_wait` of a chunk's duration
counted from when its oldest chunk's audio arrived, for the other open streams of its latency mode to
complete theirs; it runs at once when they all have (always the case for a single stream) or the batch is
full. First steps and a stream's tail never wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Callable

import numpy as np

from ..runtime.cache import BatchBuffers, batch_feeds
from ..runtime.encoder import EncodedChunk, StreamingEncoder
from .session import StreamSession

log = logging.getLogger("streamasr.serve")

#: the window over which `Scheduler.load` measures how busy the scheduler is (admission control)
LOAD_WINDOW_S = 5.0


def encode_batch(backend, encoders: list[StreamingEncoder], buffers: BatchBuffers | None = None) -> list[EncodedChunk]:
    """Run the next step of every encoder in one batched call. All must share width and first-step-ness.

    Each stream's cache rings are copied once into the batch (into `buffers` when given); the graph
    returns only the new frames, which each stream writes into its own rings."""
    width = encoders[0].next_width()
    inputs = [e.next_input(width) for e in encoders]
    drop = inputs[0][1]
    if any(e.next_width() != width for e in encoders) or any(d != drop for _, d in inputs):
        raise ValueError("encode_batch: steps of different shapes cannot share a call")
    mel = np.stack([m for m, _ in inputs])
    enc, proj, k_new, v_new, conv_next = backend.encode(mel, drop, batch_feeds([e.cache for e in encoders], buffers))
    chunks = []
    for i, e in enumerate(encoders):
        e.cache.update(k_new[i], v_new[i], conv_next[i])
        # copies, so that no stream keeps the whole batch's arrays alive through a view
        chunks.append(e.advance(width, enc[i].copy(), proj[i].copy()))
    return chunks


def warm_up(model, latency_ms: int, max_batch: int) -> float:
    """Run one first and one later step at every batch size up to `max_batch`; returns the seconds taken.

    ONNX Runtime's first call at a new input shape costs 30-250 ms more than the next ones (full-size int4,
    160 ms). A server meets a new batch size every time one more stream joins a step, so without this
    its first seconds under load run behind: 8 streams opened together saw 300-600 ms latencies for
    about 1.5 s (then 135 ms p95). Paid once at start-up, before the server accepts streams.
    """
    from ..runtime.encoder import StreamingEncoder

    cfg = model.config
    mode = cfg.encoder.mode(latency_ms)
    buffers = BatchBuffers()  # (dropped on return: the server's own grow with its batches)
    t0 = time.perf_counter()
    for batch in range(1, max_batch + 1):
        encoders = [StreamingEncoder(model.backend, cfg.encoder, mode, cfg.frontend.n_mels) for _ in range(batch)]
        for e in encoders:
            frames = e.schedule.first_chunk + e.schedule.chunk
            e.buffer(np.zeros((frames, cfg.frontend.n_mels), dtype=np.float32))
        encode_batch(model.backend, encoders, buffers)  # a first step
        encode_batch(model.backend, encoders, buffers)  # a later step
    return time.perf_counter() - t0


class Scheduler:
    def __init__(self, model, max_batch: int = 32, on_step: Callable[[int, float], None] | None = None,
                 batch_wait: float = 0.0):
        self.model = model
        self.max_batch = max(1, int(max_batch))
        if not 0.0 <= batch_wait <= 1.0:
            raise ValueError(f"batch_wait is a fraction of the chunk duration in [0, 1], got {batch_wait}")
        self.batch_wait = batch_wait
        self._deadline: float | None = None  # when a group held back by the batching window must run
        self.buffers = BatchBuffers()
        self.on_step = on_step  # (batch size, seconds) after each encoder call, for metrics
        self._sessions: dict[int, StreamSession] = {}
        self._cv = threading.Condition()
        self._work = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self.busy_s = 0.0  # time spent computing (frontend + encoder + decoder)
        self._recent: deque[tuple[float, float, int]] = deque()  # (end, busy seconds, streams) of recent rounds
        self._recent_lock = threading.Lock()  # appended here, read by the server's admission check
        self.audio_samples = 0

    # ---------------------------------------------------------------- control (any thread)
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="streamasr-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def add(self, session: StreamSession) -> None:
        with self._cv:
            self._sessions[session.id] = session

    def remove(self, session: StreamSession) -> None:
        session.close()
        self.wake()

    def wake(self) -> None:
        with self._cv:
            self._work = True
            self._cv.notify()

    @property
    def active(self) -> int:
        with self._cv:
            return len(self._sessions)

    # ---------------------------------------------------------------- the rounds
    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._work and not self._stop:
                    wait = 0.5 if self._deadline is None else max(0.0, self._deadline - time.perf_counter())
                    self._cv.wait(timeout=min(0.5, wait))
                if self._stop:
                    return
                self._work = False
            try:
                if self.step():
                    with self._cv:
                        self._work = True
            except Exception:  # a bug must not kill the thread that serves every stream
                log.exception("scheduler round failed")

    def step(self) -> bool:
        """One round (see module docstring). Returns True when more work may be ready right away."""
        with self._cv:
            for sid in [sid for sid, s in self._sessions.items() if s.closed or s.finished or s.failed]:
                del self._sessions[sid]  # the session's state is freed with its last reference
            sessions = list(self._sessions.values())
        if not sessions:
            self.buffers.clear()  # idle: give the batch buffers back
        t0 = time.perf_counter()
        for s in sessions:
            if s.has_input:
                self._guard(s, lambda s=s: self._count(s.drain()))
        groups: dict[tuple, list[StreamSession]] = defaultdict(list)
        for s in sessions:
            if not s.failed and s.ready():
                groups[s.batch_key()].append(s)
        did = False
        self._deadline = None
        for key, members in groups.items():
            if self._hold_back(key, members, sessions):
                continue
            for i in range(0, len(members), self.max_batch):
                part = members[i : i + self.max_batch]
                width = part[0].stream.encoder.next_width()
                t1 = time.perf_counter()
                try:
                    chunks = encode_batch(self.model.backend, [s.stream.encoder for s in part], self.buffers)
                except Exception as exc:
                    log.exception("batched encoder step failed")
                    for s in part:
                        self._fail(s, exc)
                    continue
                if self.on_step is not None:
                    self.on_step(len(part), time.perf_counter() - t1)
                for s, chunk in zip(part, chunks):
                    self._guard(s, lambda s=s, chunk=chunk: s.on_chunk(chunk, width))
                did = True
        for s in sessions:
            if s.end_requested and not s.finished and not s.failed and not s.closed and not s.has_input \
                    and not s.ready():
                self._guard(s, s.finish)
        t_end = time.perf_counter()
        self.busy_s += t_end - t0
        if did:
            with self._recent_lock:
                self._recent.append((t_end, t_end - t0, len(sessions)))
                while self._recent and self._recent[0][0] < t_end - LOAD_WINDOW_S:
                    self._recent.popleft()
        return did or any(s.has_input for s in sessions)

    def load(self, now: float | None = None) -> float:
        """The fraction of the last LOAD_WINDOW_S seconds this thread spent computing rounds that encoded
        something (0-1): how close the server is to falling behind. Read from other threads."""
        return self._window(now)[0]

    def projected_load(self, streams_now: int, now: float | None = None) -> float:
        """The load if one more stream joined: the window's load per stream (over the mean number of
        streams its rounds served) times `streams_now` + 1. Streams that joined during the window count
        fully, which the plain load does not yet show, so a quick succession of joins is not all let in."""
        load, mean_streams = self._window(now)
        return load * (streams_now + 1) / max(1.0, mean_streams)

    def _window(self, now: float | None) -> tuple[float, float]:
        now = time.perf_counter() if now is None else now
        with self._recent_lock:
            rounds = [r for r in self._recent if r[0] >= now - LOAD_WINDOW_S]
        if not rounds:
            return 0.0, 0.0
        load = min(1.0, sum(r[1] for r in rounds) / LOAD_WINDOW_S)
        return load, sum(r[2] for r in rounds) / len(rounds)

    def _hold_back(self, key: tuple, members: list[StreamSession], sessions: list[StreamSession]) -> bool:
        """Whether this group waits for more of its streams (see "Batching window" above)."""
        latency_ms, _, first = key
        if self.batch_wait <= 0 or first or len(members) >= self.max_batch:
            return False
        expected = sum(1 for s in sessions if s.latency_ms == latency_ms and s.streaming)
        if len(members) >= expected:
            return False
        times = [t for t in (s.ready_since() for s in members) if t is not None]
        if not times:
            return False
        deadline = min(times) + self.batch_wait * latency_ms / 1000.0
        if time.perf_counter() >= deadline:
            return False
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        return True

    def _count(self, samples: int) -> None:
        self.audio_samples += samples

    def _guard(self, s: StreamSession, fn) -> None:
        try:
            fn()
        except Exception as exc:
            log.exception("stream %s failed", s.id)
            self._fail(s, exc)

    @staticmethod
    def _fail(s: StreamSession, exc: Exception) -> None:
        s.failed = True
        s.emit({"type": "error", "message": f"internal error in this stream: {exc}", "fatal": True})
