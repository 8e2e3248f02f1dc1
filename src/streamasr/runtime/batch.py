"""Many streams' encoder steps in one ONNX Runtime call, the way a recognizer serves concurrent streams.

A batched step costs far less per stream than steps run one by one (the weights are read once for the
whole batch), so a caller with several live streams buffers their audio (`Stream.feed`) and steps the
ready ones together. The items of one encoder call must share the mel input's width and the `drop` count,
so streams are grouped by `Stream.batch_key()` (latency mode, step width, first step or not). Each stream's
cache rings are copied once into the batch (runtime/cache.py); the step returns only its new keys and
values, which each stream writes into its own rings. Greedy decoding stays per stream.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from streamasr.runtime.cache import BatchBuffers, batch_feeds
from streamasr.runtime.encoder import EncodedChunk
from streamasr.runtime.stream import Model, Stream


def group_ready(streams: list[Stream]) -> dict[tuple[int, int, bool], list[Stream]]:
    """The ready streams, grouped by what one batched call can hold (`Stream.batch_key`)."""
    groups: dict[tuple[int, int, bool], list[Stream]] = defaultdict(list)
    for s in streams:
        if s.is_ready:
            groups[s.batch_key()].append(s)
    return dict(groups)


def encode_batch(streams: list[Stream], buffers: BatchBuffers | None = None) -> list[EncodedChunk]:
    """Run the next encoder step of every stream in one call; all must share `batch_key()` and one model.

    The chunks are committed to each stream's encoder (caches, mel history) but not decoded: pass each to
    its stream's `accept_chunks`. `buffers` (reused across calls) saves allocating the batch's cache arrays."""
    keys = {s.batch_key() for s in streams}
    if len(keys) != 1 or len({id(s.model) for s in streams}) != 1:
        raise ValueError("encode_batch: the streams' steps have different shapes or models; group them first")
    encoders = [s.encoder for s in streams]
    width = encoders[0].next_width()
    inputs = [e.next_input(width) for e in encoders]
    drop = inputs[0][1]
    mel = np.stack([m for m, _ in inputs])
    backend = streams[0].model.backend
    enc, proj, k_new, v_new, conv_next = backend.encode(mel, drop, batch_feeds([e.cache for e in encoders], buffers))
    chunks = []
    for i, e in enumerate(encoders):
        e.cache.update(k_new[i], v_new[i], conv_next[i])
        # copies, so that no stream keeps the whole batch's arrays alive through a view
        chunks.append(e.advance(width, enc[i].copy(), proj[i].copy()))
    return chunks


def decode_streams(streams: list[Stream], max_batch: int = 32, buffers: BatchBuffers | None = None) -> list[str]:
    """One chunk for every ready stream: batched encoder calls (at most `max_batch` streams each), then
    each stream decodes its chunk. Returns the text each stream added ("" for streams not ready).

    Call it again while any stream `is_ready` (a stream with a backlog advances one chunk per call, so one
    stream's backlog never stalls the others)."""
    added = {id(s): "" for s in streams}
    for members in group_ready(streams).values():
        for i in range(0, len(members), max_batch):
            part = members[i : i + max_batch]
            for s, chunk in zip(part, encode_batch(part, buffers)):
                added[id(s)] = s.accept_chunks([chunk])
    return [added[id(s)] for s in streams]


def warm_up(model: Model, latency_ms: int, max_batch: int) -> float:
    """Run one first and one later encoder step at every batch size up to `max_batch`; returns the seconds
    taken. ONNX Runtime's first call at a new input shape is much slower than later ones, and a server
    meets a new batch size each time one more stream joins a step: paying this once at start-up keeps
    a loaded server's first seconds as fast as the rest."""
    n_mels = model.config.frontend.n_mels
    buffers = BatchBuffers()  # dropped on return: a server's own buffers grow with its batches
    t0 = time.perf_counter()
    for batch in range(1, max_batch + 1):
        streams = [model.stream(latency_ms) for _ in range(batch)]
        for s in streams:
            schedule = s.encoder.schedule
            s.encoder.buffer(np.zeros((schedule.first_chunk + schedule.chunk, n_mels), dtype=np.float32))
        encode_batch(streams, buffers)  # a first step
        encode_batch(streams, buffers)  # a later step
    return time.perf_counter() - t0
