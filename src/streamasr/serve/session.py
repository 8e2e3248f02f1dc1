"""Per-stream state of a live recognition session: audio inbox, segment (utterance) tracking, endpointing.

Endpointing: a final closes the current utterance (segment) when the first of these rules fires:
- silence: the segment has tokens and the decoder has seen `silence_ms` of blank frames since its last one;
- max_length: the segment has tokens and has lasted `max_utterance_s` of decoded audio since it started;
- vad (only with `vad="silero"`): the VAD saw speech and then `vad_silence_ms` of non-speech (`vad.VadRule`);
  the moment the rule was met, T, is the cut: once the decoder has decoded the audio up to T, the segment's
  tokens on frames before T make the final, and tokens after T (if any) start the next segment. No tokens
  before T: no final. The VAD runs on the raw audio as it arrives, so it knows of a pause before the encoder
  (which lags by its chunk and look-ahead) has decoded it; the cut waits for the decoder so that words
  still being decoded stay in their utterance.
An endpoint only moves the segment boundary: the encoder caches and the decoder state carry on, as in
training, so the tokens of a segmented stream equal those of the same audio unsegmented. The end of the
stream always emits a last final (pending VAD cuts inside the decoded audio are applied first).

Threading: `feed`, `request_end` and `close` are called from the network side (any thread); everything else
runs on the scheduler thread, which alone touches the `Stream` (frontend, encoder caches, decoder).
Events (JSON-ready dicts) leave through `emit`, which the server points at the client's send queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import StreamASRError
from ..runtime.encoder import EncodedChunk
from .words import assemble_words, trailing_blank_frames

if TYPE_CHECKING:
    from .vad import SpeechEnds

VAD_KINDS = ("silero",)


@dataclass(frozen=True)
class EndpointConfig:
    silence_ms: int = 800  # trailing blank frames that end an utterance; 0 disables this rule
    max_utterance_s: float = 30.0  # an utterance is cut after this long even without silence; 0: no limit
    vad: str | None = None  # "silero": a voice activity detector as a second endpoint signal; None: off
    vad_threshold: float = 0.5  # speech probability from which a VAD window counts as speech
    vad_silence_ms: int = 800  # non-speech after speech that ends an utterance (VAD rule)

    def __post_init__(self) -> None:
        if self.vad is not None and self.vad not in VAD_KINDS:
            raise StreamASRError(f"unknown VAD {self.vad!r}; the one supported is 'silero'")
        if not 0 < self.vad_threshold < 1:
            raise StreamASRError(f"the VAD threshold must be between 0 and 1, not {self.vad_threshold}")
        if self.vad_silence_ms <= 0:
            raise StreamASRError(f"the VAD silence must be > 0 ms, not {self.vad_silence_ms}")

    def silence_frames(self, frame_s: float) -> int:
        return int(round(self.silence_ms / 1000 / frame_s)) if self.silence_ms > 0 else 0

    def max_frames(self, frame_s: float) -> int:
        return int(round(self.max_utterance_s / frame_s)) if self.max_utterance_s > 0 else 0


class StreamSession:
    _ids = 0

    def __init__(self, model, latency_ms: int, endpoint: EndpointConfig | None = None,
                 emit: Callable[[dict], None] | None = None, on_latency: Callable[[float], None] | None = None,
                 on_done: Callable[[], None] | None = None):
        StreamSession._ids += 1
        self.id = StreamSession._ids
        self.model = model
        self.latency_ms = latency_ms
        self.stream = model.stream(latency_ms)
        self.endpoint = endpoint or EndpointConfig()
        self.emit = emit or (lambda event: None)
        self.on_latency = on_latency
        self.on_done = on_done  # called after the last final
        self.every_chunk = False  # a partial after every chunk, even unchanged (benchmarks measure latency)
        self.frame_s = model.config.frame_seconds
        self._silence_frames = self.endpoint.silence_frames(self.frame_s)
        self._max_frames = self.endpoint.max_frames(self.frame_s)
        self._speech_ends = self._make_vad()  # only with endpoint.vad: it loads the VAD model
        self._vad_cuts: deque[int] = deque()  # pending VAD cuts, as encoder frame indices
        self._samples_per_frame = model.sample_rate * self.frame_s
        self._lock = threading.Lock()
        self._inbox: deque[tuple[np.ndarray, float]] = deque()
        self.end_requested = False
        self.closed = False  # the client is gone: drop without finishing
        self.finished = False
        self.failed = False
        # segment = the utterance since the last final
        self._seg_token = 0
        self._seg_frame = 0
        self._partial = ""
        # chunk latency: (mel frames buffered after a message, its arrival time)
        self._marks: deque[tuple[int, float]] = deque()
        self._frames_in = 0
        self._frames_used = 0
        self.audio_samples = 0
        self.finals = 0

    # ---------------------------------------------------------------- network side
    def feed(self, samples: np.ndarray, arrival: float | None = None) -> None:
        with self._lock:
            self._inbox.append((samples, time.perf_counter() if arrival is None else arrival))

    def request_end(self) -> None:
        self.end_requested = True

    def close(self) -> None:
        self.closed = True

    def backlog_samples(self) -> int:
        with self._lock:
            return sum(x.size for x, _ in self._inbox)

    # ---------------------------------------------------------------- scheduler side
    @property
    def has_input(self) -> bool:
        return bool(self._inbox)

    def drain(self) -> int:
        """Run the frontend over the audio that arrived; buffer the mel frames. Returns samples taken."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
        taken = 0
        for samples, arrival in items:
            if self._speech_ends is not None:
                # a cut is the first frame at or after the speech end: tokens on earlier frames are before it
                self._vad_cuts.extend(int(np.ceil(end / self._samples_per_frame - 1e-9))
                                      for end in self._speech_ends.accept(samples))
            frames = self.stream.frontend.accept(samples)
            self.stream.encoder.buffer(frames)
            self._frames_in += frames.shape[0]
            self._marks.append((self._frames_in, arrival))
            taken += samples.size
        self.audio_samples += taken
        return taken

    def ready(self) -> bool:
        return not self.finished and self.stream.encoder.ready()

    def ready_since(self) -> float | None:
        """Arrival time of the message that completed the next chunk (None while it is incomplete)."""
        need = self._frames_used + self.stream.encoder.next_width()
        for frames, arrival in self._marks:
            if frames >= need:
                return arrival
        return None

    @property
    def streaming(self) -> bool:
        """Past its first step and expecting more audio: a stream that later steps may wait for."""
        return (self.stream.encoder.steps > 0 and not (self.end_requested or self.finished or self.failed
                                                        or self.closed))

    def batch_key(self) -> tuple:
        enc = self.stream.encoder
        return (self.latency_ms, enc.next_width(), enc.steps == 0)

    def on_chunk(self, chunk: EncodedChunk, width: int) -> None:
        """Decode one encoder chunk computed by the scheduler; emit partial/final events."""
        self._record_latency(width)
        self.stream.accept_chunks([chunk])
        self._after_decode()

    def finish(self) -> None:
        """End of audio: encode the tail, decode, emit the last final (always, even when empty)."""
        self.stream.finish()
        self.finished = True
        self._apply_vad_cuts()
        self._emit_final("end", force=True)
        if self.on_done is not None:
            self.on_done()

    def audio_processed_s(self) -> float:
        """Audio covered by the encoder steps so far (the mel frames consumed, with the frontend's window)."""
        fe = self.model.config.frontend
        return min(self.audio_samples, self._frames_used * fe.hop_length + fe.n_fft // 2) / fe.sample_rate

    # ---------------------------------------------------------------- internals
    def _make_vad(self) -> SpeechEnds | None:
        if self.endpoint.vad is None:
            return None
        from .vad import SAMPLE_RATE, SpeechEnds, VadRule

        if self.model.sample_rate != SAMPLE_RATE:
            raise StreamASRError(f"the Silero VAD needs {SAMPLE_RATE} Hz audio; this model takes "
                                 f"{self.model.sample_rate} Hz")
        return SpeechEnds(VadRule(self.endpoint.vad_threshold, self.endpoint.vad_silence_ms))

    def _record_latency(self, width: int) -> None:
        self._frames_used += width
        arrival = None
        while self._marks and self._marks[0][0] <= self._frames_used:
            arrival = self._marks.popleft()[1]
        if arrival is None and self._marks:
            arrival = self._marks[0][1]
        if arrival is not None and self.on_latency is not None:
            self.on_latency(time.perf_counter() - arrival)

    def _segment_tokens(self):
        return self.stream.decoder.tokens[self._seg_token:]

    def _apply_vad_cuts(self) -> None:
        """Close the segment at every VAD cut that the decoder has reached (see the module docstring)."""
        dec = self.stream.decoder
        while self._vad_cuts and self._vad_cuts[0] <= dec.frames_decoded:
            cut = self._vad_cuts.popleft()
            upto = self._seg_token
            while upto < len(dec.tokens) and dec.tokens[upto].frame < cut:
                upto += 1
            if upto > self._seg_token:
                self._emit_final("vad", upto=upto, end_frame=cut)

    def _after_decode(self) -> None:
        dec = self.stream.decoder
        self._apply_vad_cuts()
        toks = self._segment_tokens()
        if toks:
            blanks = trailing_blank_frames(dec.frames_decoded, toks[-1].frame, self._seg_frame)
            long = self._max_frames and dec.frames_decoded - self._seg_frame >= self._max_frames
            if (self._silence_frames and blanks >= self._silence_frames) or long:
                self._emit_final("max_length" if long else "silence")
                return
        else:
            self._seg_frame = dec.frames_decoded  # nothing said yet: the utterance has not started
        text = self.model.text.decode([t.id for t in toks]).strip()
        if text != self._partial or self.every_chunk:
            self._partial = text
            self.emit({"type": "partial", "text": text, "audio_s": round(self.audio_processed_s(), 3)})

    def _emit_final(self, reason: str, force: bool = False, upto: int | None = None,
                    end_frame: int | None = None) -> None:
        """Final for the segment's tokens before index `upto` (all by default); the next segment starts at
        `end_frame` (default: everything decoded)."""
        dec = self.stream.decoder
        upto = len(dec.tokens) if upto is None else upto
        end_frame = dec.frames_decoded if end_frame is None else end_frame
        toks = dec.tokens[self._seg_token : upto]
        if not toks and not force:
            return
        text = self.model.text.decode([t.id for t in toks]).strip()
        pieces = [self.model.text.piece(t.id) for t in toks]
        words = assemble_words(toks, pieces, self.model.text.decode, self.frame_s)
        start = words[0].start_s if words else round(self._seg_frame * self.frame_s, 3)
        end = words[-1].end_s if words else round(end_frame * self.frame_s, 3)
        self._seg_token = upto
        self._seg_frame = end_frame
        self._partial = ""
        self.finals += 1
        self.emit({"type": "final", "text": text, "start_s": start, "end_s": end, "reason": reason,
                   "words": [w.to_dict() for w in words]})
