"""Per-stream hotwords on the server: from the WebSocket query (`hotwords=PHRASE`, repeated, with
`hotword_score=`, `hotword_context_score=`, `hotword_depth_scaling=`) or from a config message
`{"type": "config", "hotwords": [...], "hotword_score": 1.5}` that replaces the stream's phrases from its
next chunk. Streams batched together keep their own phrase sets: each stream's decoder holds its own."""

from __future__ import annotations

import math

from streamasr.runtime import Model
from streamasr.runtime.boosting import (
    DEFAULT_CONTEXT_SCORE,
    DEFAULT_DEPTH_SCALING,
    DEFAULT_SCORE,
    HotwordError,
    Hotwords,
)

#: the knobs a client may set, with NeMo's recommended values as defaults
KNOBS = {"hotword_score": DEFAULT_SCORE, "hotword_context_score": DEFAULT_CONTEXT_SCORE,
         "hotword_depth_scaling": DEFAULT_DEPTH_SCALING}
MAX_PHRASES = 10000  # a stream's phrase list is compiled on the event loop: keep it bounded


def _number(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise HotwordError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise HotwordError(f"{name} must be a number >= 0, got {value!r}")
    return x


def _compile(model: Model, phrases: list, knobs: dict) -> Hotwords | None:
    if not phrases:
        return None
    if len(phrases) > MAX_PHRASES:
        raise HotwordError(f"{len(phrases)} hotwords is over the limit of {MAX_PHRASES} per stream")
    if not all(isinstance(p, str) for p in phrases):
        raise HotwordError("hotwords must be a list of strings")
    return model.hotwords(phrases, score=knobs["hotword_score"], context_score=knobs["hotword_context_score"],
                          depth_scaling=knobs["hotword_depth_scaling"])


def hotwords_from_query(model: Model, query) -> Hotwords | None:
    """The stream's hotwords from its query string (a multidict: `hotwords` may repeat); None without."""
    phrases = list(query.getall("hotwords", []))
    knobs = {name: _number(name, query.get(name, default)) for name, default in KNOBS.items()}
    return _compile(model, phrases, knobs)


def hotwords_from_config(model: Model, message: dict) -> Hotwords | None:
    """The hotwords of a `{"type": "config", "hotwords": [...]}` message (an empty list removes them)."""
    phrases = message.get("hotwords", [])
    if not isinstance(phrases, list):
        raise HotwordError('"hotwords" must be a list of phrases')
    knobs = {name: _number(name, message.get(name, default)) for name, default in KNOBS.items()}
    return _compile(model, phrases, knobs)


def hotwords_from_fields(model: Model, fields: dict[str, list[str]]) -> Hotwords | None:
    """An OpenAI transcription request's hotwords: our `hotwords` form fields (repeated, or `hotwords[]`),
    with the same knobs as fields. OpenAI's free-text `prompt` is not turned into phrases."""
    phrases = fields.get("hotwords[]", []) + fields.get("hotwords", [])
    knobs = {name: _number(name, (fields.get(name) or [default])[-1]) for name, default in KNOBS.items()}
    return _compile(model, phrases, knobs)
