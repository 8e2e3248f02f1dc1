"""The encoder cache rings: new frames overwrite the oldest, wrap-around keeps time order, a batch's
inputs carry each stream's own rings, and the ONNX step gives the same result whatever slot a ring
starts at (the attention reads keys in ring order, so this is what the position permutation is for)."""

from __future__ import annotations

import numpy as np

from streamasr.runtime.cache import BatchBuffers, EncoderCache, batch_feeds


def _frames(cache: EncoderCache, first: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """k and v of T new frames whose values name their global frame index (k) and its negative (v)."""
    layers, heads, _, dk = cache.k.shape
    ids = np.arange(first, first + t, dtype=np.float32)
    k = np.broadcast_to(ids[None, None, :, None], (layers, heads, t, dk)).copy()
    return k, -k


def test_ring_keeps_the_newest_frames_in_time_order(loaded_tiny):
    enc = loaded_tiny.config.encoder
    cache = EncoderCache(enc)
    left = enc.left_context
    written = 0
    for t in [3, 2, 7, left - 1, 1, 5, left, 4]:  # steps of many sizes, wrapping at every phase
        k, v = _frames(cache, written, t)
        conv = np.full(cache.conv.shape, written, np.float32)
        cache.update(k, v, conv)
        written += t
        assert cache.length == min(written, left) and cache.start == written % left
        old_k, old_v = cache.oldest_first()
        expected = np.arange(written - cache.length, written, dtype=np.float32)
        np.testing.assert_array_equal(old_k[0, 0, :, 0], expected)
        np.testing.assert_array_equal(old_v[-1, -1, :, -1], -expected)
        assert (cache.conv == written - t).all()


def test_stacked_and_per_layer_step_outputs_fill_the_ring_alike(loaded_tiny):
    """A format 4 graph returns a step's keys, values and conv states stacked along their first axis
    ((L*H, T, d_k), (L*(K-1), D)); a format 3 graph per layer ((L, H, T, d_k), (L, K-1, D)). Both land alike."""
    enc = loaded_tiny.config.encoder
    per_layer, stacked = EncoderCache(enc), EncoderCache(enc)
    written = 0
    for t in [5, 9, enc.left_context - 3, 2]:
        k, v = _frames(per_layer, written, t)
        conv = np.random.default_rng(t).standard_normal(per_layer.conv.shape).astype(np.float32)
        per_layer.update(k, v, conv)
        stacked.update(k.reshape(-1, t, k.shape[-1]), v.reshape(-1, t, v.shape[-1]), conv.reshape(-1, conv.shape[-1]))
        written += t
        for a, b in zip(per_layer.oldest_first(), stacked.oldest_first()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(per_layer.conv, stacked.conv)


def test_batch_feeds_copy_each_streams_rings(loaded_tiny):
    enc = loaded_tiny.config.encoder
    caches = [EncoderCache(enc) for _ in range(3)]
    for i, c in enumerate(caches):
        k, v = _frames(c, 100 * i, 5 + i)
        c.update(k, v, np.full(c.conv.shape, i, np.float32))
    buffers = BatchBuffers()
    for use in (None, buffers, buffers):  # fresh arrays, then the same buffers twice
        feeds = batch_feeds(caches, use)
        assert list(feeds.cache_len) == [5, 6, 7] and list(feeds.cache_start) == [5, 6, 7]
        assert len(feeds.k) == enc.n_layers
        for layer in range(enc.n_layers):
            assert feeds.k[layer].flags.c_contiguous and feeds.k[layer].shape[0] == 3
            for b, c in enumerate(caches):
                np.testing.assert_array_equal(feeds.k[layer][b], c.k[layer])
                np.testing.assert_array_equal(feeds.v[layer][b], c.v[layer])
        assert [int(feeds.conv[b].max()) for b in range(3)] == [0, 1, 2]
    # a smaller batch reuses the larger buffer; clearing gives the memory back
    two = batch_feeds(caches[:2], buffers)
    np.testing.assert_array_equal(two.k[0][1], caches[1].k[0])
    buffers.clear()
    assert buffers._arrays == {}
    # a stream alone is fed its own arrays, nothing copied
    alone = batch_feeds(caches[:1], buffers)
    assert np.shares_memory(alone.k[0], caches[0].k) and buffers._arrays == {}


def test_step_output_does_not_depend_on_where_the_ring_starts(loaded_tiny, speech):
    """Fill a stream's caches from real speech, then rotate its rings to every start slot: the next
    step's output and new cache entries must be the same (to float rounding)."""
    model = loaded_tiny
    stream = model.stream(160)
    x = speech["jfk_inaugural_1961.wav"]
    stream.encoder.buffer(stream.frontend.accept(x[: 16000 * 8]))
    while stream.encoder.ready() and stream.encoder.cache.length < stream.encoder.cache.left:
        stream.encoder._step(stream.encoder.next_width())
    enc_state = stream.encoder
    cache = enc_state.cache
    assert cache.length == cache.left
    mel, drop = enc_state.next_input(enc_state.next_width())
    reference = model.backend.encode(mel[None], drop, cache.feeds())
    k0, v0 = cache.oldest_first()
    for start in range(0, cache.left, 7):
        rotated = EncoderCache(model.config.encoder)
        slots = (start + np.arange(cache.left)) % cache.left
        rotated.k[:, :, slots], rotated.v[:, :, slots] = k0, v0
        rotated.conv[...] = cache.conv
        rotated.start, rotated.length = start, cache.length
        out = model.backend.encode(mel[None], drop, rotated.feeds())
        for a, b in zip(reference, out):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # and a partly filled ring: the unfilled slots are masked wherever they are
    partial = EncoderCache(model.config.encoder)
    partial_k, partial_v = k0[:, :, -10:], v0[:, :, -10:]
    outs = []
    for start in (0, cache.left - 4, 33):
        partial.k[...] = np.random.default_rng(start).standard_normal(partial.k.shape)  # junk in unfilled slots
        partial.v[...] = partial.k
        slots = (start + np.arange(10)) % cache.left
        partial.k[:, :, slots], partial.v[:, :, slots] = partial_k, partial_v
        partial.conv[...] = cache.conv
        partial.start, partial.length = (start + 10) % cache.left, 10
        outs.append(model.backend.encode(mel[None], drop, partial.feeds()))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
