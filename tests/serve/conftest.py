"""Fixtures for the server tests: a loaded model (the session's tiny random model, or a prebuilt model
directory named by STREAMASR_SERVE_TEST_MODEL to skip the conversion) and servers on ephemeral ports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streamasr.audio import pcm_to_float


@pytest.fixture(scope="session")
def serve_model(request):
    from streamasr.runtime import Model

    prebuilt = os.environ.get("STREAMASR_SERVE_TEST_MODEL")
    model_dir = Path(prebuilt) if prebuilt else request.getfixturevalue("tiny_model_dir")
    return Model.load_dir(model_dir, threads=1)


@pytest.fixture
def make_server(serve_model):
    """make_server(**ServerConfig fields) -> (ServerThread, base ws url); stopped after the test."""
    from streamasr.serve.server import ServerConfig, ServerThread

    started = []

    def make(**kw):
        kw.setdefault("port", 0)
        kw.setdefault("host", "127.0.0.1")
        st = ServerThread(serve_model, ServerConfig(**kw))
        port = st.start()
        started.append(st)
        return st, f"ws://127.0.0.1:{port}"

    yield make
    for st in started:
        st.stop()


@pytest.fixture(scope="session")
def short_speech(speech):
    """Three short real utterances (arctic, ~3-4 s each)."""
    names = sorted(n for n in speech if n.startswith("arctic"))[:3]
    return [speech[n] for n in names]


def _s16_roundtrip(x: np.ndarray) -> np.ndarray:
    from streamasr.serve.client import encode_pcm

    return pcm_to_float(encode_pcm(x, "pcm_s16le"), "s16le")


@pytest.fixture(scope="session")
def s16_roundtrip():
    """samples -> the samples as the server sees them after s16le encoding."""
    return _s16_roundtrip
