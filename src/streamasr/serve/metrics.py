"""Server metrics in the Prometheus text exposition format (no client library needed)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.56, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.chunk_latency = Histogram(LATENCY_BUCKETS)
        self.encoder_batch = Histogram(BATCH_BUCKETS)
        self.encoder_seconds = 0.0
        self.streams_total = 0
        self.streams_rejected = 0
        self.client_errors = 0

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.chunk_latency.observe(seconds)

    def observe_step(self, batch: int, seconds: float) -> None:
        with self._lock:
            self.encoder_batch.observe(batch)
            self.encoder_seconds += seconds

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def render(self, active_streams: int, audio_s: float, busy_s: float, load: float = 0.0) -> str:
        with self._lock:
            rtfx = audio_s / busy_s if busy_s > 0 else 0.0
            lines = [
                "# HELP streamasr_active_streams Streams currently open.",
                "# TYPE streamasr_active_streams gauge",
                f"streamasr_active_streams {active_streams}",
                "# HELP streamasr_streams_total Streams accepted since start.",
                "# TYPE streamasr_streams_total counter",
                f"streamasr_streams_total {self.streams_total}",
                "# HELP streamasr_streams_rejected_total Streams refused (over --max-streams or --max-load, or bad parameters).",
                "# TYPE streamasr_streams_rejected_total counter",
                f"streamasr_streams_rejected_total {self.streams_rejected}",
                "# HELP streamasr_client_errors_total Streams closed for a client error (bad frame, idle timeout).",
                "# TYPE streamasr_client_errors_total counter",
                f"streamasr_client_errors_total {self.client_errors}",
                "# HELP streamasr_audio_seconds_total Audio processed, in seconds.",
                "# TYPE streamasr_audio_seconds_total counter",
                f"streamasr_audio_seconds_total {audio_s:.3f}",
                "# HELP streamasr_compute_seconds_total Scheduler compute time (frontend, encoder, decoder).",
                "# TYPE streamasr_compute_seconds_total counter",
                f"streamasr_compute_seconds_total {busy_s:.3f}",
                "# HELP streamasr_scheduler_load Fraction of the last 5 s the scheduler spent computing.",
                "# TYPE streamasr_scheduler_load gauge",
                f"streamasr_scheduler_load {load:.3f}",
                "# HELP streamasr_rtfx Audio seconds processed per second of compute since start.",
                "# TYPE streamasr_rtfx gauge",
                f"streamasr_rtfx {rtfx:.2f}",
                "# HELP streamasr_chunk_latency_seconds From the arrival of the audio completing a chunk to its decode.",
                "# TYPE streamasr_chunk_latency_seconds histogram",
                *self.chunk_latency.lines("streamasr_chunk_latency_seconds"),
                "# HELP streamasr_encoder_batch_size Streams per batched encoder call.",
                "# TYPE streamasr_encoder_batch_size histogram",
                *self.encoder_batch.lines("streamasr_encoder_batch_size"),
                "# HELP streamasr_encoder_seconds_total Time in encoder calls.",
                "# TYPE streamasr_encoder_seconds_total counter",
                f"streamasr_encoder_seconds_total {self.encoder_seconds:.3f}",
            ]
        return "\n".join(lines) + "\n"
