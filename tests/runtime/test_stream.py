"""The Stream API: any piece sizes give the same result, streams are independent across threads,
and the tail of the audio is not lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from audio_pieces import pieces

FILES = ["jfk_inaugural_1961.wav", "ls_2412-153948-0000.wav", "pocketsphinx_goforward.wav"]


@pytest.mark.parametrize("latency_ms", [80, 560])
def test_random_piece_sizes_give_the_same_tokens(loaded_tiny, speech, latency_ms):
    rng = np.random.default_rng(latency_ms)
    for name in FILES[:2]:
        x = speech[name]
        whole = loaded_tiny.transcribe(x, latency_ms)
        assert len(whole.token_ids) >= 5, "the random model must emit tokens for this test to mean anything"
        for max_len in (1 if latency_ms == 560 else 50, 1600, 16000 * 3):
            stream = loaded_tiny.stream(latency_ms)
            audio = x[: 16000 * 2] if max_len == 1 else x
            ref = whole if max_len != 1 else loaded_tiny.transcribe(audio, latency_ms)
            for p in pieces(audio, rng, max_len):
                stream.accept(p)
            result = stream.finish()
            assert result.token_ids == ref.token_ids
            assert result.token_times_s == ref.token_times_s
            assert result.text == ref.text


def test_accept_returns_text_as_it_arrives(loaded_tiny, speech):
    x = speech["jfk_inaugural_1961.wav"]
    stream = loaded_tiny.stream(160)
    partials = []
    for i in range(0, x.size, 1600):
        new = stream.accept(x[i : i + 1600])
        if new:
            partials.append((i, stream.text))
    result = stream.finish()
    assert len(partials) >= 3, "text must arrive during the audio, not only at the end"
    assert partials[0][0] < x.size // 2
    assert all(result.text.startswith(t[: len(t) - 1]) for _, t in partials)


def test_streams_are_independent_across_threads(loaded_tiny, speech):
    expected = {name: loaded_tiny.transcribe(speech[name], 160).token_ids for name in FILES}
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            stream = loaded_tiny.stream(160)
            for i in range(0, speech[name].size, 2400):
                stream.accept(speech[name][i : i + 2400])
            results[name] = stream.finish().token_ids
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in FILES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == expected


def test_default_flush_keeps_the_tail_nemo_compat_drops_it(loaded_tiny, speech):
    # 80 ms mode: a tail of 1..7 mel frames after the last full chunk is dropped by NeMo's loop
    x = speech["ls_2412-153948-0000.wav"]
    n_frames = x.size // 160 + 1
    tail = (n_frames - 1) % 8
    assert tail != 0, "pick audio whose last chunk is partial"
    flushed = loaded_tiny.stream(80)
    flushed.accept(x)
    r_flush = flushed.finish()
    compat = loaded_tiny.stream(80, nemo_compat=True)
    compat.accept(x)
    r_compat = compat.finish()
    assert r_flush.chunks == r_compat.chunks + 1
    assert r_flush.token_ids[: len(r_compat.token_ids)] == r_compat.token_ids


def test_input_validation(loaded_tiny):
    from streamasr.errors import AudioError, ModelError

    stream = loaded_tiny.stream(160)
    with pytest.raises(AudioError, match="mono"):
        stream.accept(np.zeros((100, 2), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        stream.accept(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ModelError, match="unknown latency mode 333"):
        loaded_tiny.stream(333)
    # int16 PCM is scaled like NeMo's reader (1/32768)
    pcm = (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16)
    a = loaded_tiny.transcribe(pcm, 160)
    b = loaded_tiny.transcribe(pcm.astype(np.float32) / 32768, 160)
    assert a.token_ids == b.token_ids
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.accept(np.zeros(10, np.float32))


def test_mel_frames_are_computed_once_per_chunk_and_equal_the_eager_ones(loaded_tiny, speech):
    """accept() buffers samples and computes a chunk's mel frames together when the chunk is complete; the
    encoder sees exactly the frames a front end fed block by block gives."""
    x = speech["jfk_inaugural_1961.wav"][: 16000 * 4]
    lazy = loaded_tiny.stream(160)
    emitted = []
    emit = lazy.frontend.emit
    lazy.frontend.emit = lambda: emitted.append(emit()) or emitted[-1]
    for i in range(0, x.size, 320):  # 20 ms blocks, 8 to a 160 ms chunk
        lazy.accept(x[i : i + 320])
    blocks = x.size // 320
    assert lazy.steps > 10 and len(emitted) == lazy.steps  # one pass per step, not one per block
    assert len(emitted) < blocks / 4

    eager = loaded_tiny.stream(160)
    frames = np.concatenate([eager.frontend.accept(x[i : i + 320]) for i in range(0, x.size, 320)])
    lazy_frames = np.concatenate(emitted)
    np.testing.assert_array_equal(lazy_frames, frames[: lazy_frames.shape[0]])
    assert lazy.finish().token_ids == loaded_tiny.transcribe(x, 160).token_ids
