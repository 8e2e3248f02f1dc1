"""The server's scheduling policy: one thread runs the encoder steps of all live streams, batched.

Each round:
1. every session's newly arrived audio goes through its own front end (mel frames wait in its stream);
2. the streams with a complete chunk are grouped by `Stream.batch_key()` and each group runs as ONE
   batched encoder call (`runtime.batch.encode_batch`, up to `max_batch` streams);
3. each stream decodes its own chunk, and its endpointer turns tokens into partials and finals;
4. sessions whose client sent `end` and have no complete chunk left encode their tail and emit the final.

Fairness: a round takes at most ONE chunk per stream, so a stream with a backlog (a client that sends
faster than real time, or fell behind) advances one chunk per round alongside the others instead of
stalling them; rounds repeat while any chunk is ready.

Batching window: a batched step costs far less per stream than single steps, but streams' chunks complete
at unrelated moments, so a scheduler that runs whatever is ready at once makes small batches and spends
its whole time on them once a few streams are open. So a group of later steps waits, at most `batch_wait`
of a chunk's duration counted from when its oldest chunk's audio arrived, for the other open streams of
its latency mode to complete theirs; it runs at once when they all have (always the case for a single
stream) or the batch is full. First steps and a stream's tail never wait. Deadlines are read from
`clock` (time.perf_counter by default; the session's arrival times must come from the same clock).

The window adapts to load (`window_for_load`): `batch_wait` while the scheduler is at most LOAD_LOW busy,
growing linearly to `busy_batch_wait` at LOAD_HIGH. At low load a short wait keeps latency low; near
capacity, larger batches cost less per stream, which leaves the headroom a loaded server needs to catch up
after a slow round instead of queueing every later chunk behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from typing import Callable

from streamasr.runtime.batch import encode_batch
from streamasr.runtime.cache import BatchBuffers
from streamasr.runtime.stream import Model
from streamasr.serve.session import StreamSession

log = logging.getLogger("streamasr.serve")

#: the window over which `Scheduler.load` measures how busy the scheduler is (admission control)
LOAD_WINDOW_S = 5.0
#: the load below which the batching window is `batch_wait`, and the load from which it is `busy_batch_wait`
LOAD_LOW, LOAD_HIGH = 0.6, 0.9


def window_for_load(load: float, batch_wait: float, busy_batch_wait: float) -> float:
    """The batching window (a fraction of a chunk) at a scheduler load (0-1): `batch_wait` up to LOAD_LOW,
    `busy_batch_wait` from LOAD_HIGH, linear between."""
    ramp = min(1.0, max(0.0, (load - LOAD_LOW) / (LOAD_HIGH - LOAD_LOW)))
    return batch_wait + (busy_batch_wait - batch_wait) * ramp


class Scheduler:
    def __init__(self, model: Model, max_batch: int = 32, on_step: Callable[[int, float], None] | None = None,
                 batch_wait: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 busy_batch_wait: float | None = None):
        """`batch_wait`: the batching window at low load, as a fraction of a chunk; `busy_batch_wait`: the
        window near capacity (default: the same, no adaptation); see the module docstring."""
        self.model = model
        self.clock = clock
        self.max_batch = max(1, int(max_batch))
        busy_batch_wait = batch_wait if busy_batch_wait is None else busy_batch_wait
        for name, value in (("batch_wait", batch_wait), ("busy_batch_wait", busy_batch_wait)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a fraction of the chunk duration in [0, 1], got {value}")
        if busy_batch_wait < batch_wait:
            raise ValueError(f"busy_batch_wait ({busy_batch_wait}) is less than batch_wait ({batch_wait})")
        self.batch_wait = batch_wait
        self.busy_batch_wait = busy_batch_wait
        self.window = batch_wait  # the batching window of the current round (see window_for_load)
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
                    wait = 0.5 if self._deadline is None else max(0.0, self._deadline - self.clock())
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
        if self.busy_batch_wait > self.batch_wait:
            self.window = window_for_load(self.load(), self.batch_wait, self.busy_batch_wait)
        for key, members in groups.items():
            if self._hold_back(key, members, sessions):
                continue
            for i in range(0, len(members), self.max_batch):
                part = members[i : i + self.max_batch]
                t1 = time.perf_counter()
                try:
                    chunks = encode_batch([s.stream for s in part], self.buffers)
                except Exception as exc:
                    log.exception("batched encoder step failed")
                    for s in part:
                        self._fail(s, exc)
                    continue
                if self.on_step is not None:
                    self.on_step(len(part), time.perf_counter() - t1)
                for s, chunk in zip(part, chunks):
                    self._guard(s, lambda s=s, chunk=chunk: s.on_chunk(chunk))
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
        if self.window <= 0 or first or len(members) >= self.max_batch:
            return False
        expected = sum(1 for s in sessions if s.latency_ms == latency_ms and s.streaming)
        if len(members) >= expected:
            return False
        times = [t for t in (s.ready_since() for s in members) if t is not None]
        if not times:
            return False
        deadline = min(times) + self.window * latency_ms / 1000.0
        if self.clock() >= deadline:
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
