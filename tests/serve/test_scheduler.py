"""Batched encoder scheduling: N streams batched give the same tokens per stream as each stream alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamasr.serve.client import file_blocks, stream_blocks, stream_url
from streamasr.serve.scheduler import Scheduler
from streamasr.serve.session import EndpointConfig, StreamSession


def _run_until_finished(scheduler, sessions, feeders, max_rounds=20000):
    for _ in range(max_rounds):
        for feed in feeders:
            feed()
        scheduler.step()
        if all(s.finished for s in sessions):
            return
    raise AssertionError("streams did not finish")


@pytest.mark.parametrize("max_batch", [32, 2])
def test_batched_tokens_equal_each_stream_alone(serve_model, short_speech, max_batch):
    rng = np.random.default_rng(1)
    # six streams: three utterances x two latency modes, started at different rounds, fed in random pieces
    plan = [(x, lat) for lat in (160, 560) for x in short_speech]
    steps: list[int] = []
    scheduler = Scheduler(serve_model, max_batch=max_batch, on_step=lambda b, s: steps.append(b))
    sessions, feeders = [], []
    for i, (x, lat) in enumerate(plan):
        s = StreamSession(serve_model, lat, EndpointConfig(0, 0))
        scheduler.add(s)
        sessions.append(s)
        state = {"pos": 0, "delay": 3 * i}

        def feed(s=s, x=x, state=state):
            if state["delay"] > 0:
                state["delay"] -= 1
                return
            if state["pos"] < x.size:
                n = int(rng.integers(50, 5000))
                s.feed(x[state["pos"] : state["pos"] + n])
                state["pos"] += n
            elif not s.end_requested:
                s.request_end()

        feeders.append(feed)
    _run_until_finished(scheduler, sessions, feeders)
    assert max(steps) > 1, "no encoder call was batched"
    assert max(steps) <= max_batch
    for s, (x, lat) in zip(sessions, plan):
        alone = serve_model.transcribe(x, lat)
        assert s.stream.result().token_ids == alone.token_ids
        assert s.stream.result().token_times_s == alone.token_times_s
    assert scheduler.step() is False and scheduler.active == 0  # finished sessions are dropped


def test_backlogged_stream_does_not_stall_others(serve_model, short_speech):
    """One stream dumps 10 s of audio at once; a live stream still advances one chunk per round."""
    scheduler = Scheduler(serve_model)
    big = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    live = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    scheduler.add(big)
    scheduler.add(live)
    big.feed(np.tile(short_speech[0], 3))
    live.feed(short_speech[1][:16000])
    scheduler.step()
    scheduler.step()
    # after two rounds each stream has run exactly two encoder steps: the backlog takes its turn
    assert big.stream.encoder.steps == 2 and live.stream.encoder.steps == 2


def test_concurrent_clients_over_socket_match_alone(serve_model, make_server, short_speech, s16_roundtrip):
    st, base = make_server(endpoint=EndpointConfig(0, 0))
    steps: list[int] = []
    st.server.scheduler.on_step = lambda b, s: steps.append(b)

    async def main():
        tasks = [stream_blocks(stream_url(base, 160), file_blocks(x, 80), realtime=True, timeout=30)
                 for x in short_speech * 2]
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    results = asyncio.run(main())
    for res, x in zip(results, short_speech * 2):
        assert res.close_code == 1000 and not res.errors
        assert res.finals[-1]["text"] == serve_model.transcribe(s16_roundtrip(x), 160).text.strip()
    assert max(steps) >= 2, f"real-time clients were never batched: {steps[:50]}"
    assert st.server.active == 0


def _past_first_step(model, scheduler, sessions, x) -> int:
    """Feed each session just enough audio for its first step and run it, so that later steps may wait.
    Returns the samples fed; feeding `_chunk_samples` more completes exactly one more chunk."""
    sched = sessions[0].stream.encoder.schedule
    n = sched.first_chunk * 160 + 300  # + the frontend's look-ahead (half a 512-point window)
    for s in sessions:
        s.feed(x[:n])
    scheduler.step()
    assert all(s.stream.encoder.steps == 1 and not s.ready() for s in sessions)
    return n


def _chunk_samples(session) -> int:
    return session.stream.encoder.schedule.chunk * 160


def test_batching_window_waits_for_the_other_streams(serve_model, short_speech):
    """A ready chunk waits (up to batch_wait of a chunk) for the other open streams, then all run as one batch."""
    steps: list[int] = []
    scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=1.0)
    a, b = (StreamSession(serve_model, 560, EndpointConfig(0, 0)) for _ in range(2))
    for s in (a, b):
        scheduler.add(s)
    x = short_speech[0]
    pos = _past_first_step(serve_model, scheduler, (a, b), x)
    steps.clear()
    chunk = _chunk_samples(a)
    a.feed(x[pos : pos + chunk])  # a completes its next chunk; b has not sent anything yet
    a.drain()  # (what the scheduler's round does first)
    assert a.ready() and not b.ready()
    arrival = a.ready_since()
    scheduler.step()
    assert steps == [] and a.stream.encoder.steps == 1, "a's chunk should wait for b"
    assert scheduler._deadline == pytest.approx(arrival + 0.56)
    b.feed(x[pos : pos + chunk])
    scheduler.step()
    assert steps == [2], "both chunks should run as one batch"
    assert a.stream.encoder.steps == 2 and b.stream.encoder.steps == 2


def test_batching_window_is_bounded_and_off_by_default(serve_model, short_speech):
    x = short_speech[0]
    for wait, expect_held in ((0.0, False), (0.05, True)):
        steps: list[int] = []
        scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=wait)
        a, b = (StreamSession(serve_model, 160, EndpointConfig(0, 0)) for _ in range(2))
        for s in (a, b):
            scheduler.add(s)
        pos = _past_first_step(serve_model, scheduler, (a, b), x)
        steps.clear()
        a.feed(x[pos : pos + _chunk_samples(a)])
        scheduler.step()
        assert (steps == []) is expect_held
        if expect_held:  # 5% of 160 ms later the deadline has passed: a runs alone rather than wait longer
            import time

            time.sleep(0.01)
            scheduler.step()
            assert steps == [1] and a.stream.encoder.steps == 2
    # a single stream never waits (nobody to wait for), whatever the window
    steps = []
    scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=1.0)
    solo = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    scheduler.add(solo)
    pos = _past_first_step(serve_model, scheduler, (solo,), x)
    steps.clear()
    solo.feed(x[pos : pos + _chunk_samples(solo)])
    scheduler.step()
    assert steps and steps[0] == 1
    with pytest.raises(ValueError, match="batch_wait"):
        Scheduler(serve_model, batch_wait=2.0)


def test_warm_up_runs_every_batch_size_and_leaves_streams_alone(serve_model, short_speech):
    from streamasr.serve.scheduler import warm_up

    calls: list[tuple] = []
    backend = serve_model.backend
    originals = {name: getattr(backend, name) for name in ("encode",)}

    def spy(name):
        def call(mel, drop, *rest):
            calls.append((mel.shape[0], mel.shape[1], int(drop)))
            return originals[name](mel, drop, *rest)
        return call

    for name in originals:
        setattr(backend, name, spy(name))
    try:
        took = warm_up(serve_model, 160, 3)
    finally:
        for name, fn in originals.items():
            setattr(backend, name, fn)
    assert took > 0
    # batch sizes 1..3, each a first step (drop 0) and a later step (drop > 0)
    assert sorted({(b, d > 0) for b, _, d in calls}) == [(b, later) for b in (1, 2, 3) for later in (False, True)]
    x = short_speech[1]
    assert serve_model.transcribe(x, 160).token_ids == serve_model.transcribe(x, 160).token_ids


def test_batch_buffers_give_the_same_steps_as_fresh_arrays(serve_model, short_speech):
    """encode_batch gathering into reused buffers equals gathering into fresh arrays, step after step, each
    stream keeps its own rings, and a batched step equals the streams stepped alone to float rounding."""
    from streamasr.serve.scheduler import BatchBuffers, encode_batch

    def streams():
        out = []
        for x in short_speech:
            st = serve_model.stream(160)
            st.encoder.buffer(st.frontend.accept(x[:48000]))
            out.append(st.encoder)
        return out

    plain, buffered, alone, buffers = streams(), streams(), streams(), BatchBuffers()
    for _ in range(4):
        a = encode_batch(serve_model.backend, plain)
        b = encode_batch(serve_model.backend, buffered, buffers)
        c = [encode_batch(serve_model.backend, [e])[0] for e in alone]
        for ca, cb, cc in zip(a, b, c):
            np.testing.assert_array_equal(ca.encoded, cb.encoded)
            np.testing.assert_array_equal(ca.encoded_proj, cb.encoded_proj)
            np.testing.assert_allclose(ca.encoded, cc.encoded, rtol=1e-4, atol=1e-4)
        for ea, eb, ec in zip(plain, buffered, alone):
            for name in ("k", "v", "conv", "length", "start"):
                np.testing.assert_array_equal(getattr(ea.cache, name), getattr(eb.cache, name))
            np.testing.assert_allclose(ea.cache.k, ec.cache.k, rtol=1e-4, atol=1e-4)
    ks = [e.cache.k for e in buffered]
    assert all(k.base is None for k in ks) and len({k.ctypes.data for k in ks}) == len(ks)
    assert buffered[0].cache.length > 0
    buffers.clear()
    assert buffers._arrays == {}


def test_load_is_the_busy_fraction_of_the_recent_window(serve_model, short_speech):
    """Scheduler.load: compute time of rounds that encoded something, over the last LOAD_WINDOW_S seconds."""
    import time

    from streamasr.serve.scheduler import LOAD_WINDOW_S, Scheduler

    scheduler = Scheduler(serve_model)
    assert scheduler.load() == 0.0
    session = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    scheduler.add(session)
    session.feed(short_speech[0][:32000])
    while scheduler.step():
        pass
    now = time.perf_counter()
    load = scheduler.load(now)
    assert 0 < load <= scheduler.busy_s / LOAD_WINDOW_S + 1e-9
    assert scheduler.load(now + LOAD_WINDOW_S + 1.0) == 0.0
    # one stream served: one more would about double it, two more triple it
    assert scheduler.projected_load(1, now) == pytest.approx(2 * load)
    assert scheduler.projected_load(2, now) == pytest.approx(3 * load)
    # idle rounds (nothing ready) do not count as load
    rounds = len(scheduler._recent)
    scheduler.step()
    assert len(scheduler._recent) == rounds
