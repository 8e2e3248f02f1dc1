"""Transcripts as documents: segments (utterances) and words with times to text, JSON, SubRip, WebVTT and TSV.

A plain module that every layer may use: `streamasr transcribe --format` and the server's OpenAI-compatible
`POST /v1/audio/transcriptions` write the same documents from the same segments, so a subtitle file from the
command line and one from the server agree byte for byte.

Segments are the endpointer's finals (runtime/endpoint.py): `SegmentCollector` turns the final events (the
server protocol's `final` dicts) plus the stream's tokens (objects with `.id`, `.frame`, `.logprob`) into
`Segment`s. It reads only those plain attributes, so this module imports nothing from the runtime.

Shapes:
- json: `{"text": ...}` (OpenAI's `Transcription`);
- verbose_json: OpenAI's `TranscriptionVerbose`: `task`, `language`, `duration`, `text`, `segments` with every
  field of the SDK's `TranscriptionSegment` (Whisper-only fields get neutral values: `temperature` 0,
  `no_speech_prob` 0, `seek` the start in centiseconds) and `words` (`word`, `start`, `end`, plus our
  `confidence`);
- srt / vtt: one cue per segment, split at word boundaries when a segment is longer than a subtitle should be
  (`MAX_CUE_CHARS`, `MAX_CUE_S`), lines wrapped at `LINE_CHARS`;
- tsv: Whisper's `start<TAB>end<TAB>text` with times in integer milliseconds, one line per segment.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

#: the formats `render` writes, and the file extension of each
EXTENSIONS = {"text": "txt", "json": "json", "verbose_json": "json", "srt": "srt", "vtt": "vtt", "tsv": "tsv"}
#: subtitle cue limits (the common broadcast guidance: two lines of about 42 characters, a few seconds on screen)
LINE_CHARS = 42
MAX_CUE_CHARS = 2 * LINE_CHARS
MAX_CUE_S = 7.0


@dataclass
class TimedWord:
    """One word with its start and end in seconds of the audio, and the recognizer's confidence (0-1)."""

    word: str
    start: float
    end: float
    confidence: float | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"word": self.word, "start": self.start, "end": self.end}
        if self.confidence is not None:
            out["confidence"] = self.confidence
        return out


@dataclass
class Segment:
    """One utterance: its text, start and end (seconds), words, token ids and their log-probabilities, and
    the endpoint rule that closed it (silence, max_length, vad, end)."""

    text: str
    start: float
    end: float
    words: list[TimedWord] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reason: str = ""
    language: str | None = None  # a multilingual model's language of this utterance

    def to_openai(self, index: int) -> dict:
        """The SDK's `TranscriptionSegment`, every field present (a client with strict validation rejects a
        segment that lacks one)."""
        avg = sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0
        out = {"id": index, "seek": int(round(self.start * 100)), "start": self.start, "end": self.end,
               "text": self.text, "tokens": list(self.tokens), "temperature": 0.0,
               "avg_logprob": round(avg, 6), "compression_ratio": round(compression_ratio(self.text), 4),
               "no_speech_prob": 0.0}
        if self.language is not None:  # ours: a multilingual model's language of the segment
            out["language"] = self.language
        return out


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: UTF-8 bytes over zlib-compressed bytes (1.0 for empty text)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 1.0


def segment_from_final(final: dict, tokens: Sequence[Any] = ()) -> Segment:
    """A `final` event (text, start_s, end_s, reason, words[{word, start_s, end_s, confidence}]) and its
    tokens as a Segment."""
    words = [TimedWord(w["word"], float(w["start_s"]), float(w["end_s"]), w.get("confidence"))
             for w in final.get("words", [])]
    return Segment(text=final["text"], start=float(final["start_s"]), end=float(final["end_s"]), words=words,
                   tokens=[int(t.id) for t in tokens], logprobs=[float(t.logprob) for t in tokens],
                   reason=final.get("reason", ""), language=final.get("language"))


class SegmentCollector:
    """Builds Segments from a stream's finals, in order, giving each its tokens.

    The finals carry words but not token ids, which verbose_json's segments and include[]=logprobs need, so
    the tokens are taken from the stream's token list: a final that ends the stream takes all tokens left;
    any other takes the tokens left whose encoder frame is before its end (`end_s` is one frame after its
    last word's last token, runtime/words.py). Tokens are append-only and in frame order, so this works
    whether it is called as each final arrives or after the stream has finished."""

    def __init__(self, frame_s: float):
        self.frame_s = frame_s
        self.segments: list[Segment] = []
        self._taken = 0

    def add(self, final: dict, tokens: Sequence[Any]) -> Segment:
        if final.get("reason") == "end":
            upto = len(tokens)
        elif not final.get("words"):  # nothing visible: it owns no tokens
            upto = self._taken
        else:
            end_frame = int(round(float(final["end_s"]) / self.frame_s))
            upto = self._taken
            while upto < len(tokens) and tokens[upto].frame < end_frame:
                upto += 1
        segment = segment_from_final(final, tokens[self._taken : upto])
        self._taken = upto
        self.segments.append(segment)
        return segment


# ---------------------------------------------------------------- timestamps
def format_timestamp(seconds: float, decimal: str = ",", always_hours: bool = True) -> str:
    """`HH:MM:SS,mmm` (SubRip) or `HH:MM:SS.mmm` (WebVTT, decimal="."), rounded to the millisecond; hours
    are not capped at 99 (a long recording keeps counting)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a timestamp must be a finite number of seconds >= 0, got {seconds}")
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


# ---------------------------------------------------------------- cues
@dataclass
class Cue:
    start: float
    end: float
    text: str


def cues(segments: Iterable[Segment], max_chars: int = MAX_CUE_CHARS, max_s: float = MAX_CUE_S) -> list[Cue]:
    """Subtitle cues: a segment that fits (`max_chars`, `max_s`) is one cue; a longer one is split between
    words. Empty segments give none. Times never go backwards and every cue lasts at least 1 ms, which
    strict players and parsers require."""
    out: list[Cue] = []
    for seg in segments:
        text = " ".join(seg.text.split())
        if not text:
            continue
        if (len(text) <= max_chars and seg.end - seg.start <= max_s) or not seg.words:
            out.append(Cue(seg.start, seg.end, text))
            continue
        group: list[TimedWord] = []
        for w in seg.words:
            if group:
                length = len(" ".join(x.word for x in group)) + 1 + len(w.word)
                if length > max_chars or w.end - group[0].start > max_s:
                    out.append(Cue(group[0].start, group[-1].end, " ".join(x.word for x in group)))
                    group = []
            group.append(w)
        if group:
            out.append(Cue(group[0].start, group[-1].end, " ".join(x.word for x in group)))
    prev_end = 0.0
    for cue in out:  # monotonic, non-empty intervals on the millisecond grid
        cue.start = max(round(cue.start, 3), prev_end)
        cue.end = max(round(cue.end, 3), round(cue.start + 0.001, 3))
        prev_end = cue.end
    return out


def wrap(text: str, width: int = LINE_CHARS) -> list[str]:
    """A cue's text as at most two lines: split at the space nearest the middle when it is wider than
    `width` (a single very long word stays on one line)."""
    if len(text) <= width or " " not in text:
        return [text]
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - middle))
    return [text[:cut], text[cut + 1 :]]


# ---------------------------------------------------------------- documents
def to_text(text: str) -> str:
    """The transcript as one line of plain text."""
    return text.strip() + "\n"


def to_srt(segments: Iterable[Segment]) -> str:
    """SubRip: numbered cues `HH:MM:SS,mmm --> HH:MM:SS,mmm`, each followed by a blank line."""
    blocks = []
    for i, cue in enumerate(cues(segments), start=1):
        lines = "\n".join(wrap(cue.text))
        blocks.append(f"{i}\n{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n{lines}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    """WebVTT cue text may not hold a raw `&` or `<` (markup) and `-->` would end the cue's timing line."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Iterable[Segment]) -> str:
    """WebVTT: the `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    blocks = ["WEBVTT\n"]
    for cue in cues(segments):
        lines = "\n".join(_vtt_escape(line) for line in wrap(cue.text))
        blocks.append(f"{format_timestamp(cue.start, '.')} --> {format_timestamp(cue.end, '.')}\n{lines}\n")
    return "\n".join(blocks)


def to_tsv(segments: Iterable[Segment]) -> str:
    """Whisper's TSV: a `start\\tend\\ttext` header, then one row per non-empty segment, times in integer
    milliseconds (no float formatting to parse); tabs and newlines in the text become spaces."""
    rows = ["start\tend\ttext"]
    for seg in segments:
        text = " ".join(seg.text.split())
        if text:
            rows.append(f"{int(round(seg.start * 1000))}\t{int(round(seg.end * 1000))}\t{text}")
    return "\n".join(rows) + "\n"


def verbose_json(text: str, segments: Sequence[Segment], duration: float, language: str = "en",
                 words: bool = True, with_segments: bool = True) -> dict:
    """OpenAI's `TranscriptionVerbose`. `words` / `with_segments` follow `timestamp_granularities[]`:
    OpenAI leaves `segments` out when only words were asked for, and `words` out unless asked for."""
    out: dict[str, Any] = {"task": "transcribe", "language": language, "duration": round(duration, 3),
                           "text": text}
    if with_segments:  # the stream's last final is empty when the audio ends in silence: not a segment
        out["segments"] = [seg.to_openai(i) for i, seg in enumerate(s for s in segments if s.text)]
    if words:
        out["words"] = [w.to_dict() for seg in segments for w in seg.words]
    out["usage"] = {"type": "duration", "seconds": round(duration, 3)}
    return out


def render(fmt: str, text: str, segments: Sequence[Segment], duration: float, language: str = "en") -> str:
    """The document `fmt` (one of EXTENSIONS) as a string; json is OpenAI's plain `{"text"}` object and
    verbose_json the full one with segments and words."""
    if fmt == "text":
        return to_text(text)
    if fmt == "json":
        return json.dumps({"text": text, "usage": {"type": "duration", "seconds": round(duration, 3)}},
                          ensure_ascii=False) + "\n"
    if fmt == "verbose_json":
        return json.dumps(verbose_json(text, segments, duration, language), ensure_ascii=False) + "\n"
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "tsv":
        return to_tsv(segments)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(EXTENSIONS)}")
