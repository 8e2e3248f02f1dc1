"""Endpointing: where one utterance of a live stream ends and the next begins, as finals with words.

A final closes the current utterance (segment) when the first of these rules fires:
- silence: the segment has tokens and the decoder has seen `silence_ms` of blank frames since its last one;
- max_length: the segment has tokens and has lasted `max_utterance_s` of decoded audio since it started;
- vad (only with `vad="silero"`): the VAD saw speech and then `vad_silence_ms` of non-speech
  (`vad.VadRule`); the moment the rule was met, T, is the cut: once the decoder has decoded the audio up to
  T, the segment's tokens on frames before T make the final, and tokens after T (if any) start the next
  segment. No tokens before T: no final. The VAD runs on the raw audio as it arrives, so it knows of a
  pause before the encoder (which lags by its chunk and look-ahead) has decoded it; the cut waits for the
  decoder so that words still being decoded stay in their utterance.
An endpoint only moves the segment boundary: the encoder caches and the decoder state carry on, as in
training, so the tokens of a segmented stream equal those of the same audio unsegmented. The end of the
stream always gives a last final (pending VAD cuts inside the decoded audio are applied first).

Usage, with any caller that drives a `Stream` (a server, the microphone command, an application):

    endpointer = Endpointer(stream, EndpointConfig(silence_ms=800))
    endpointer.accept_audio(block)        # every block of raw audio, for the VAD rule (no-op without it)
    stream.accept(block)                  # or stream.feed + runtime.batch.decode_streams
    for final in endpointer.update():     # after each decode
        print(final.text, final.reason)
    ...
    stream.finish(); finals = endpointer.finish()
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from streamasr.errors import StreamASRError
from streamasr.runtime.decoder import Token
from streamasr.runtime.stream import Stream
from streamasr.runtime.vad import SAMPLE_RATE as VAD_SAMPLE_RATE
from streamasr.runtime.vad import SpeechEnds, VadRule
from streamasr.runtime.words import Word, assemble_words, trailing_blank_frames

VAD_KINDS = ("silero",)


@dataclass(frozen=True)
class EndpointConfig:
    silence_ms: int = 800  # trailing blank frames that end an utterance; 0 disables this rule
    max_utterance_s: float = 30.0  # an utterance is cut after this long even without silence; 0: no limit
    vad: str | None = None  # "silero": a voice activity detector as a second endpoint signal; None: off
    vad_threshold: float = 0.5  # speech probability from which a VAD window counts as speech
    vad_silence_ms: int = 800  # non-speech after speech that ends an utterance (VAD rule)

    def __post_init__(self) -> None:
        if self.silence_ms < 0 or self.max_utterance_s < 0:
            raise StreamASRError("the endpoint silence and the maximum utterance length must be >= 0 (0: off)")
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


@dataclass
class Final:
    """One closed utterance: its text, start and end (seconds of stream audio), the rule that closed it
    (`silence`, `max_length`, `vad` or `end`) and its words with times and confidence."""

    text: str
    start_s: float
    end_s: float
    reason: str
    words: list[Word] = field(default_factory=list)
    # a multilingual stream's language for this utterance: the one set, or in `auto` mode the one the model
    # tagged it with (None when it tagged none); absent for a model without a language prompt
    language: str | None = None

    def to_event(self) -> dict:
        """The server protocol's `final` message."""
        event = {"type": "final", "text": self.text, "start_s": self.start_s, "end_s": self.end_s,
                 "reason": self.reason, "words": [w.to_dict() for w in self.words]}
        if self.language is not None:
            event["language"] = self.language
        return event


class Endpointer:
    """Segments one stream's tokens into utterances (see the module docstring). It only reads the stream:
    call `update` after the stream has decoded more, and `finish` after `stream.finish()`."""

    def __init__(self, stream: Stream, config: EndpointConfig | None = None):
        self.stream = stream
        self.config = config or EndpointConfig()
        model = stream.model
        self.frame_s = model.config.frame_seconds
        self._silence_frames = self.config.silence_frames(self.frame_s)
        self._max_frames = self.config.max_frames(self.frame_s)
        self._samples_per_frame = model.sample_rate * self.frame_s
        self._speech_ends: SpeechEnds | None = None
        if self.config.vad is not None:
            if model.sample_rate != VAD_SAMPLE_RATE:
                raise StreamASRError(f"the Silero VAD needs {VAD_SAMPLE_RATE} Hz audio; this model takes "
                                     f"{model.sample_rate} Hz")
            self._speech_ends = SpeechEnds(VadRule(self.config.vad_threshold, self.config.vad_silence_ms))
        self._vad_cuts: deque[int] = deque()  # pending VAD cuts, as encoder frame indices
        self._seg_token = 0  # the segment (utterance since the last final) starts at this token...
        self._seg_frame = 0  # ...and at this encoder frame
        self.finals = 0

    def accept_audio(self, samples: np.ndarray) -> None:
        """Raw audio as it arrives (the same samples the stream gets), for the VAD rule."""
        if self._speech_ends is not None:
            # a cut is the first frame at or after the speech end: tokens on earlier frames are before it
            self._vad_cuts.extend(int(np.ceil(end / self._samples_per_frame - 1e-9))
                                  for end in self._speech_ends.accept(samples))

    @property
    def segment_tokens(self) -> list[Token]:
        return self.stream.tokens[self._seg_token :]

    def partial_text(self) -> str:
        """The current utterance's text so far."""
        return self.stream.model.text.decode([t.id for t in self.segment_tokens]).strip()

    def update(self) -> list[Final]:
        """The finals the stream's newly decoded audio closes: VAD cuts it has reached, then the silence or
        max-length rule (which, when it fires, closes the segment at everything decoded)."""
        finals = self._vad_finals()
        toks = self.segment_tokens
        decoded = self.stream.frames_decoded
        if toks:
            blanks = trailing_blank_frames(decoded, toks[-1].frame, self._seg_frame)
            long = bool(self._max_frames) and decoded - self._seg_frame >= self._max_frames
            if (self._silence_frames and blanks >= self._silence_frames) or long:
                finals.append(self._close("max_length" if long else "silence"))
        else:
            self._seg_frame = decoded  # nothing said yet: the utterance has not started
        return finals

    def finish(self) -> list[Final]:
        """After `stream.finish()`: the pending VAD cuts, then the stream's last final (always one, even
        when empty)."""
        finals = self._vad_finals()
        finals.append(self._close("end"))
        return finals

    def _vad_finals(self) -> list[Final]:
        finals = []
        tokens = self.stream.tokens
        while self._vad_cuts and self._vad_cuts[0] <= self.stream.frames_decoded:
            cut = self._vad_cuts.popleft()
            upto = self._seg_token
            while upto < len(tokens) and tokens[upto].frame < cut:
                upto += 1
            if upto > self._seg_token:
                finals.append(self._close("vad", upto=upto, end_frame=cut))
        return finals

    def _close(self, reason: str, upto: int | None = None, end_frame: int | None = None) -> Final:
        """Close the segment at token `upto` (default: all); the next segment starts at `end_frame`
        (default: everything decoded)."""
        tokens = self.stream.tokens
        upto = len(tokens) if upto is None else upto
        end_frame = self.stream.frames_decoded if end_frame is None else end_frame
        toks = tokens[self._seg_token : upto]
        text_decoder = self.stream.model.text
        words = assemble_words(toks, [text_decoder.piece(t.id) for t in toks], text_decoder.decode, self.frame_s)
        start = words[0].start_s if words else round(self._seg_frame * self.frame_s, 3)
        end = words[-1].end_s if words else round(end_frame * self.frame_s, 3)
        self._seg_token = upto
        self._seg_frame = end_frame
        self.finals += 1
        ids = [t.id for t in toks]
        language = getattr(self.stream, "language", None)  # (streams of a model without a prompt: None)
        if language == "auto":
            language = text_decoder.last_language(ids)
        return Final(text_decoder.decode(ids).strip(), start, end, reason, words, language)
