"""One StreamSession driven by its own scheduler to the end, without a server (endpointing and VAD tests)."""

from __future__ import annotations

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.scheduler import Scheduler
from streamasr.serve.session import StreamSession


def run_session(model, pieces, endpoint: EndpointConfig, latency: int = 160):
    """Feed `pieces` (a scheduler round after each), end the stream, run it out. Returns the session and its
    events, each with the audio seconds the encoder had consumed when it was sent."""
    events: list[tuple[dict, float]] = []
    s = StreamSession(model, latency, endpoint, emit=lambda e: events.append((e, s.audio_processed_s())))
    sch = Scheduler(model)
    sch.add(s)
    for piece in pieces:
        s.feed(piece)
        sch.step()
    s.request_end()
    for _ in range(5000):
        sch.step()
        if s.finished:
            break
    assert s.finished
    return s, events
