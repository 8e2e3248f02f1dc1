"""The runtime's multi-stream API (runtime/batch.py): batched encoder steps equal each stream stepped alone,
reused batch buffers equal fresh arrays, and the warm-up runs every batch size without touching streams."""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.runtime.batch import decode_streams, encode_batch, group_ready, warm_up
from streamasr.runtime.cache import BatchBuffers


def test_decode_streams_equals_each_stream_alone(loaded_tiny, speech):
    """Streams of two latency modes fed in uneven pieces: decode_streams gives each the tokens, times and
    text it gets alone, and never puts two step shapes in one call."""
    names = sorted(n for n in speech if n.startswith("arctic"))[:3]
    plan = [(speech[n], lat) for lat in (160, 560) for n in names]
    streams = [loaded_tiny.stream(lat) for _, lat in plan]
    rng = np.random.default_rng(3)
    pos = [0] * len(plan)
    batches: list[int] = []
    encode = loaded_tiny.backend.encode

    def spy(mel, drop, caches):
        batches.append(mel.shape[0])
        return encode(mel, drop, caches)

    loaded_tiny.backend.encode = spy
    try:
        while any(p < x.size for p, (x, _) in zip(pos, plan)):
            for i, (x, _) in enumerate(plan):
                n = int(rng.integers(100, 6000))
                streams[i].feed(x[pos[i] : pos[i] + n])
                pos[i] += n
            while any(s.is_ready for s in streams):
                decode_streams(streams, max_batch=2)
    finally:
        loaded_tiny.backend.encode = encode
    results = [s.finish() for s in streams]
    assert max(batches) == 2, "ready streams of one shape should share a call (at most max_batch)"
    for result, (x, lat) in zip(results, plan):
        alone = loaded_tiny.transcribe(x, lat)
        assert result.token_ids == alone.token_ids
        assert result.token_times_s == alone.token_times_s
        assert result.text == alone.text


def test_group_ready_separates_step_shapes(loaded_tiny, speech):
    x = speech[sorted(speech)[0]]
    first, later, other_mode, idle = (loaded_tiny.stream(160), loaded_tiny.stream(160), loaded_tiny.stream(560),
                                      loaded_tiny.stream(160))
    later.accept(x[:16000])  # past its first step
    for s in (first, later, other_mode):
        s.feed(x[:32000])
    groups = group_ready([first, later, other_mode, idle])
    assert sorted(len(g) for g in groups.values()) == [1, 1, 1]
    assert all(len({s.batch_key() for s in g}) == 1 for g in groups.values())
    with pytest.raises(ValueError, match="different shapes"):
        encode_batch([first, later])


def test_batch_buffers_give_the_same_steps_as_fresh_arrays(loaded_tiny, speech):
    """encode_batch gathering into reused buffers equals gathering into fresh arrays, step after step, each
    stream keeps its own rings, and a batched step equals the streams stepped alone to float rounding."""
    clips = [speech[n] for n in sorted(n for n in speech if n.startswith("arctic"))[:3]]

    def streams():
        out = []
        for x in clips:
            st = loaded_tiny.stream(160)
            st.feed(x[:48000])
            out.append(st)
        return out

    plain, buffered, alone, buffers = streams(), streams(), streams(), BatchBuffers()
    for _ in range(4):
        a = encode_batch(plain)
        b = encode_batch(buffered, buffers)
        c = [encode_batch([s])[0] for s in alone]
        for ca, cb, cc in zip(a, b, c):
            np.testing.assert_array_equal(ca.encoded, cb.encoded)
            np.testing.assert_array_equal(ca.encoded_proj, cb.encoded_proj)
            np.testing.assert_allclose(ca.encoded, cc.encoded, rtol=1e-4, atol=1e-4)
        for sa, sb, sc in zip(plain, buffered, alone):
            for name in ("k", "v", "conv", "length", "start"):
                np.testing.assert_array_equal(getattr(sa.encoder.cache, name), getattr(sb.encoder.cache, name))
            np.testing.assert_allclose(sa.encoder.cache.k, sc.encoder.cache.k, rtol=1e-4, atol=1e-4)
    ks = [s.encoder.cache.k for s in buffered]
    assert all(k.base is None for k in ks) and len({k.ctypes.data for k in ks}) == len(ks)
    assert buffered[0].encoder.cache.length > 0
    buffers.clear()
    assert buffers._arrays == {}


def test_warm_up_runs_every_batch_size_and_leaves_streams_alone(loaded_tiny, speech):
    calls: list[tuple] = []
    encode = loaded_tiny.backend.encode

    def spy(mel, drop, caches):
        calls.append((mel.shape[0], mel.shape[1], int(drop)))
        return encode(mel, drop, caches)

    x = speech[sorted(speech)[1]]
    before = loaded_tiny.transcribe(x, 160).token_ids
    loaded_tiny.backend.encode = spy
    try:
        took = warm_up(loaded_tiny, 160, 3)
    finally:
        loaded_tiny.backend.encode = encode
    assert took > 0
    # batch sizes 1..3, each a first step (drop 0) and a later step (drop > 0)
    assert sorted({(b, d > 0) for b, _, d in calls}) == [(b, later) for b in (1, 2, 3) for later in (False, True)]
    assert loaded_tiny.transcribe(x, 160).token_ids == before
