"""One live stream on the server: the audio inbox filled by the network, latency marks, and the events.

Recognition itself is the runtime's: the scheduler batches the encoder steps (`runtime.batch`), the
`Stream` decodes its chunks, and an `Endpointer` (runtime/endpoint.py) turns the tokens into finals. This
class only carries audio from the network thread to the scheduler thread and events back.

Threading: `feed`, `request_end` and `close` are called from the network side (any thread); everything else
runs on the scheduler thread, which alone touches the `Stream`. Events (JSON-ready dicts) leave through
`emit`, which the server points at the client's send queue.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from streamasr.runtime.encoder import EncodedChunk
from streamasr.runtime.endpoint import EndpointConfig, Endpointer
from streamasr.runtime.stream import Model

_ids = itertools.count(1)
#: messages arriving within this long of an inbox item's first one join it: a client sending tiny frames
#: (down to one sample) costs one front-end call per few milliseconds of arrivals, not one per frame; chunk
#: latency is then timed from the item's first arrival, so it can only be overstated, by at most this much
COALESCE_S = 0.005


class StreamSession:
    def __init__(self, model: Model, latency_ms: int, endpoint: EndpointConfig | None = None,
                 emit: Callable[[dict], None] | None = None, on_latency: Callable[[float], None] | None = None,
                 on_done: Callable[[], None] | None = None, language: str | None = None):
        self.id = next(_ids)
        self.model = model
        self.latency_ms = latency_ms
        self.stream = model.stream(latency_ms, language=language)
        self.endpointer = Endpointer(self.stream, endpoint)  # loads the VAD model when endpoint.vad is set
        self.emit = emit or (lambda event: None)
        self.on_latency = on_latency
        self.on_done = on_done  # called after the last final
        self.every_chunk = False  # a partial after every chunk, even unchanged (benchmarks measure latency)
        self._lock = threading.Lock()
        self._inbox: deque[_Arrival] = deque()
        self._received = 0  # samples received in all (read by the network side's flow control)
        self.end_requested = False
        self.closed = False  # the client is gone: drop without finishing
        self.finished = False
        self.failed = False
        self._partial = ""
        # chunk latency: (mel frames buffered after a message, its arrival time)
        self._marks: deque[tuple[int, float]] = deque()
        self._frames_in = 0
        self.audio_samples = 0

    # ---------------------------------------------------------------- network side
    def feed(self, samples: np.ndarray, arrival: float | None = None) -> None:
        """Queue audio for the scheduler; O(1) whatever the frame size."""
        arrival = time.perf_counter() if arrival is None else arrival
        with self._lock:
            last = self._inbox[-1] if self._inbox else None
            if last is not None and arrival - last.first <= COALESCE_S:
                last.pieces.append(samples)
            else:
                self._inbox.append(_Arrival([samples], arrival))
            self._received += samples.size

    def request_end(self) -> None:
        self.end_requested = True

    def close(self) -> None:
        self.closed = True

    def unprocessed_samples(self) -> int:
        """Audio received but not yet covered by an encoder step: how far the client is ahead of recognition."""
        fe = self.model.config.frontend
        return max(0, self._received - (self.stream.mel_frames_consumed * fe.hop_length + fe.n_fft // 2))

    # ---------------------------------------------------------------- scheduler side
    @property
    def has_input(self) -> bool:
        return bool(self._inbox)

    @property
    def finals(self) -> int:
        return self.endpointer.finals

    def drain(self) -> int:
        """Run the front end (and the VAD) over the audio that arrived; the mel frames wait in the stream
        for a batched encoder step. Returns the samples taken."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
        taken = 0
        for item in items:
            samples = item.samples()
            arrival = item.first
            self.endpointer.accept_audio(samples)
            self._frames_in += self.stream.feed(samples)
            self._marks.append((self._frames_in, arrival))
            taken += samples.size
        self.audio_samples += taken
        return taken

    def ready(self) -> bool:
        return not self.finished and self.stream.is_ready

    def ready_since(self) -> float | None:
        """Arrival time of the message that completed the next chunk (None while it is incomplete)."""
        need = self.stream.mel_frames_consumed + self.stream.next_width
        for frames, arrival in self._marks:
            if frames >= need:
                return arrival
        return None

    @property
    def streaming(self) -> bool:
        """Past its first step and expecting more audio: a stream that later steps may wait for."""
        return self.stream.steps > 0 and not (self.end_requested or self.finished or self.failed or self.closed)

    def batch_key(self) -> tuple:
        return self.stream.batch_key()

    def on_chunk(self, chunk: EncodedChunk) -> None:
        """Decode one encoder chunk computed by the scheduler; emit partial/final events."""
        self._record_latency()
        self.stream.accept_chunks([chunk])
        finals = self.endpointer.update()
        for final in finals:
            self._emit_final(final.to_event())
        if finals and finals[-1].reason in ("silence", "max_length"):
            return  # the utterance just closed: its partial is the final
        text = self.endpointer.partial_text()
        if text != self._partial or self.every_chunk:
            self._partial = text
            self.emit({"type": "partial", "text": text, "audio_s": round(self.audio_processed_s(), 3)})

    def finish(self) -> None:
        """End of audio: encode the tail, decode, emit the last final (always, even when empty)."""
        self.stream.finish()
        self.finished = True
        for final in self.endpointer.finish():
            self._emit_final(final.to_event())
        if self.on_done is not None:
            self.on_done()

    def audio_processed_s(self) -> float:
        """Audio covered by the encoder steps so far (the mel frames consumed, with the frontend's window)."""
        fe = self.model.config.frontend
        return min(self.audio_samples, self.stream.mel_frames_consumed * fe.hop_length + fe.n_fft // 2) \
            / fe.sample_rate

    # ---------------------------------------------------------------- internals
    def _emit_final(self, event: dict) -> None:
        self._partial = ""
        self.emit(event)

    def _record_latency(self) -> None:
        """The time since the message that completed the chunk just encoded arrived."""
        used = self.stream.mel_frames_consumed
        arrival = None
        while self._marks and self._marks[0][0] <= used:
            arrival = self._marks.popleft()[1]
        if arrival is None and self._marks:
            arrival = self._marks[0][1]
        if arrival is not None and self.on_latency is not None:
            self.on_latency(time.perf_counter() - arrival)


class _Arrival:
    """Audio that arrived together (see COALESCE_S): its pieces and the first one's arrival time."""

    __slots__ = ("pieces", "first")

    def __init__(self, pieces: list[np.ndarray], first: float):
        self.pieces = pieces
        self.first = first

    def samples(self) -> np.ndarray:
        return self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)
