"""A random model tuned on long streams emits a speech-like number of tokens on a long stream.

Full-size random builds are tuned this way (`long_tuning_streams`): a random encoder's output moves along one
audio-independent trajectory for its first seconds, so a rate fitted on short clips is mostly a rate of that
start. Here the same tuning on the reduced model (seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.convert.export import convert_checkpoint
from streamasr.convert.nemo_file import read_nemo
from streamasr.convert.random_model import START_FRAMES, build_random_nemo, long_tuning_streams
from streamasr.runtime import Model


@pytest.fixture(scope="module")
def long_tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long-tuned")
    report = build_random_nemo("tiny-a", tmp / "m.nemo", speech=long_tuning_streams())
    convert_checkpoint(read_nemo(tmp / "m.nemo"), tmp / "m", model_id="random:tiny-a", random_weights=True)
    return Model.load_dir(tmp / "m", threads=1), report


def test_tuning_streams_are_long_enough_to_skip_the_start(long_tuned):
    streams = long_tuning_streams()
    frame_s = long_tuned[0].config.frame_seconds
    assert all(x.size / 16000 / frame_s >= 3 * START_FRAMES for x in streams)


@pytest.mark.parametrize("latency_ms", [80, 560])
def test_a_long_stream_emits_a_speech_like_number_of_tokens(long_tuned, speech, latency_ms):
    model, report = long_tuned
    assert 0.1 <= report.tokens_per_frame <= 1.0
    audio = np.concatenate([speech[name] for name in sorted(speech)])[: 16000 * 60]
    result = model.transcribe(audio, latency_ms=latency_ms)
    # speech has 3-4 tokens per second: neither next to nothing (a rate fitted on the start alone) nor a
    # token on most frames
    assert 1.5 <= len(result.token_ids) / 60 <= 8, len(result.token_ids)
    assert len(set(result.token_ids)) >= 20
