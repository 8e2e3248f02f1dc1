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
