"""Server metrics for `/metrics`, through `prometheus_client`.

Each `Server` owns its own `CollectorRegistry` rather than the library's global one, so several servers in one
process (the tests, `ServerThread` embedding) keep separate counts and never clash on metric names.

Counters the server drives (streams, refusals, client errors, encoder steps, chunk latency) are the library's
thread-safe metric objects, updated from the event loop and the scheduler thread. Values another object owns
(open streams, audio and compute seconds, the scheduler's load) are read at scrape time by a collector, so
they can never drift from their source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.56, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: the `protocol` label of the stream counters: every front end that opens recognition streams
PROTOCOLS = ("websocket", "openai_http", "openai_realtime", "wyoming")
#: the exposition's Content-Type (the text format the library writes)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Snapshot:
    """The values `/metrics` reads from the server at scrape time."""

    open_streams: int
    audio_s: float
    busy_s: float
    load: float


class _ServerCollector(Collector):
    """Scrape-time metrics whose values belong to the server and its scheduler, not to `Metrics`."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield GaugeMetricFamily("streamasr_active_streams", "Streams currently open (every protocol).",
                                value=s.open_streams)
        yield GaugeMetricFamily("streamasr_open_streams", "Streams currently open, every protocol together "
                                "(for least-connections load balancing).", value=s.open_streams)
        yield CounterMetricFamily("streamasr_audio_seconds", "Audio processed, in seconds.", value=s.audio_s)
        yield CounterMetricFamily("streamasr_compute_seconds", "Scheduler compute time (frontend, encoder, "
                                  "decoder).", value=s.busy_s)
        yield GaugeMetricFamily("streamasr_scheduler_load", "Fraction of the last 5 s the scheduler spent "
                                "computing.", value=s.load)
        yield GaugeMetricFamily("streamasr_rtfx", "Audio seconds processed per second of compute since start.",
                                value=s.audio_s / s.busy_s if s.busy_s > 0 else 0.0)

    def describe(self) -> Iterator[Metric]:
        """Nothing: the registry then does not call `collect` at registration (the server is not built yet)."""
        return iter(())


class Metrics:
    """One server's metrics and its private registry; `render()` is the `/metrics` body."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.chunk_latency = Histogram("streamasr_chunk_latency_seconds", "From the arrival of the audio "
                                       "completing a chunk to its decode.", buckets=LATENCY_BUCKETS, registry=r)
        self.encoder_batch = Histogram("streamasr_encoder_batch_size", "Streams per batched encoder call.",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.encoder_seconds = Counter("streamasr_encoder_seconds", "Time in encoder calls.", registry=r)
        self.streams = Counter("streamasr_streams", "Streams accepted since start, by protocol.", ["protocol"],
                               registry=r)
        self.rejected = Counter("streamasr_streams_rejected", "Streams refused (over --max-streams or --max-load, "
                                "shutting down, or bad parameters), by protocol.", ["protocol"], registry=r)
        self.client_errors = Counter("streamasr_client_errors", "Streams closed for a client error (bad frame, "
                                     "idle timeout).", registry=r)
        for protocol in PROTOCOLS:  # every series exists from the start: a rate() over it has a zero to begin at
            self.streams.labels(protocol)
            self.rejected.labels(protocol)
        r.register(_ServerCollector(snapshot))

    def observe_latency(self, seconds: float) -> None:
        self.chunk_latency.observe(seconds)

    def observe_step(self, batch: int, seconds: float) -> None:
        self.encoder_batch.observe(batch)
        self.encoder_seconds.inc(seconds)

    def stream_opened(self, protocol: str) -> None:
        """A stream of `protocol` was admitted (it now counts in the open streams)."""
        self.streams.labels(_known(protocol)).inc()

    def stream_rejected(self, protocol: str) -> None:
        """A stream of `protocol` was refused: admission (full, at capacity, shutting down) or bad parameters."""
        self.rejected.labels(_known(protocol)).inc()

    def client_error(self) -> None:
        self.client_errors.inc()

    def count(self, field: str) -> None:
        """The one counter front ends bump by name (`client_errors`); kept for the modules that call it so."""
        if field != "client_errors":
            raise ValueError(f"unknown counter {field!r}; use stream_opened / stream_rejected for streams")
        self.client_error()

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value as /metrics would show it (0 when absent): for tests and embedding."""
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def render(self) -> bytes:
        """The Prometheus text exposition of this server's registry."""
        return generate_latest(self.registry)


def _known(protocol: str) -> str:
    """A typo in a front end must fail its tests, not grow a new label value."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    return protocol
