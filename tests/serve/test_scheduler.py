"""Batched encoder scheduling: N streams batched give the same tokens per stream as each stream alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamasr.runtime.endpoint import EndpointConfig
from streamasr.serve.client import file_blocks, stream_blocks, stream_url
from streamasr.serve.scheduler import Scheduler, window_for_load
from streamasr.serve.session import StreamSession


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
    assert big.stream.steps == 2 and live.stream.steps == 2


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


def _past_first_step(model, scheduler, sessions, x, clock=None) -> int:
    """Feed each session just enough audio for its first step and run it, so that later steps may wait.
    Returns the samples fed; feeding `_chunk_samples` more completes exactly one more chunk."""
    sched = sessions[0].stream.encoder.schedule
    n = sched.first_chunk * 160 + 300  # + the frontend's look-ahead (half a 512-point window)
    for s in sessions:
        s.feed(x[:n], arrival=clock() if clock else None)
    scheduler.step()
    assert all(s.stream.steps == 1 and not s.ready() for s in sessions)
    return n


def _chunk_samples(session) -> int:
    return session.stream.encoder.schedule.chunk * 160


class _Clock:
    """A clock the test moves by hand: the batching window's deadlines are read from it, not from the wall."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_batching_window_waits_for_the_other_streams(serve_model, short_speech):
    """A ready chunk waits (up to batch_wait of a chunk) for the other open streams, then all run as one batch."""
    clock = _Clock()
    steps: list[int] = []
    scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=1.0, clock=clock)
    a, b = (StreamSession(serve_model, 560, EndpointConfig(0, 0)) for _ in range(2))
    for s in (a, b):
        scheduler.add(s)
    x = short_speech[0]
    pos = _past_first_step(serve_model, scheduler, (a, b), x, clock)
    steps.clear()
    chunk = _chunk_samples(a)
    a.feed(x[pos : pos + chunk], arrival=clock())  # a completes its next chunk; b has not sent anything yet
    a.drain()  # (what the scheduler's round does first)
    assert a.ready() and not b.ready()
    arrival = a.ready_since()
    scheduler.step()
    assert steps == [] and a.stream.steps == 1, "a's chunk should wait for b"
    assert scheduler._deadline == pytest.approx(arrival + 0.56)
    clock.now += 0.5  # still inside the window
    b.feed(x[pos : pos + chunk], arrival=clock())
    scheduler.step()
    assert steps == [2], "both chunks should run as one batch"
    assert a.stream.steps == 2 and b.stream.steps == 2


def test_batching_window_is_bounded_and_off_by_default(serve_model, short_speech):
    x = short_speech[0]
    for wait, expect_held in ((0.0, False), (0.05, True)):
        clock = _Clock()
        steps: list[int] = []
        scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=wait, clock=clock)
        a, b = (StreamSession(serve_model, 160, EndpointConfig(0, 0)) for _ in range(2))
        for s in (a, b):
            scheduler.add(s)
        pos = _past_first_step(serve_model, scheduler, (a, b), x, clock)
        steps.clear()
        a.feed(x[pos : pos + _chunk_samples(a)], arrival=clock())
        clock.now += 0.0079  # just inside 5% of a 160 ms chunk: a still waits for b
        scheduler.step()
        assert (steps == []) is expect_held
        if expect_held:
            assert scheduler._deadline == pytest.approx(clock.now - 0.0079 + 0.008)
            clock.now += 0.0002  # the deadline has passed: a runs alone rather than wait longer
            scheduler.step()
            assert steps == [1] and a.stream.steps == 2
    # a single stream never waits (nobody to wait for), whatever the window
    clock = _Clock()
    steps = []
    scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=1.0, clock=clock)
    solo = StreamSession(serve_model, 160, EndpointConfig(0, 0))
    scheduler.add(solo)
    pos = _past_first_step(serve_model, scheduler, (solo,), x, clock)
    steps.clear()
    solo.feed(x[pos : pos + _chunk_samples(solo)], arrival=clock())
    scheduler.step()
    assert steps and steps[0] == 1
    with pytest.raises(ValueError, match="batch_wait"):
        Scheduler(serve_model, batch_wait=2.0)


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


def test_batching_window_grows_with_load():
    assert window_for_load(0.0, 0.25, 0.5) == window_for_load(0.6, 0.25, 0.5) == 0.25
    assert window_for_load(0.75, 0.25, 0.5) == pytest.approx(0.375)
    assert window_for_load(0.9, 0.25, 0.5) == window_for_load(1.0, 0.25, 0.5) == 0.5
    assert window_for_load(0.95, 0.25, 0.25) == 0.25  # no adaptation when both are equal


def test_busy_scheduler_waits_longer_for_a_bigger_batch(serve_model, short_speech):
    """Near capacity a group waits past the low-load window (up to `busy_batch_wait`); once the load falls,
    the same chunk is released by the short window."""
    x = short_speech[0]
    clock = _Clock()
    steps: list[int] = []
    scheduler = Scheduler(serve_model, on_step=lambda b, s: steps.append(b), batch_wait=0.25, busy_batch_wait=0.5,
                          clock=clock)
    a, b = (StreamSession(serve_model, 160, EndpointConfig(0, 0)) for _ in range(2))
    for s in (a, b):
        scheduler.add(s)
    pos = _past_first_step(serve_model, scheduler, (a, b), x, clock)
    steps.clear()
    a.feed(x[pos : pos + _chunk_samples(a)], arrival=clock())
    arrival = clock()
    clock.now += 0.05  # past 0.25 of a 160 ms chunk (40 ms), inside 0.5 (80 ms)
    scheduler.load = lambda now=None: 0.95
    scheduler.step()
    assert steps == [] and scheduler.window == 0.5
    assert scheduler._deadline == pytest.approx(arrival + 0.08)
    scheduler.load = lambda now=None: 0.3
    scheduler.step()
    assert steps == [1] and scheduler.window == 0.25 and a.stream.steps == 2
    with pytest.raises(ValueError, match="busy_batch_wait"):
        Scheduler(serve_model, batch_wait=0.5, busy_batch_wait=0.25)
