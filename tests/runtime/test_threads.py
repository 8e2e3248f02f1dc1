"""How the runtime's threads wait: ONNX Runtime's pool spins only within a run; which graphs get which pool."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamasr.errors import ModelError
from streamasr.runtime.backend import LARGE_JOINT_LABELS, graph_threads, session_options

SPIN = "session.intra_op.allow_spinning"
STOP = "session.force_spinning_stop"


@pytest.mark.parametrize("env, spin, stop", [(None, "1", "1"), ("step", "1", "1"), ("0", "0", "0"), ("1", "1", "0")])
def test_spinning_policy(monkeypatch, env, spin, stop):
    """Default: threads spin while a run lasts and stop when it returns; 0 never spins; 1 spins always."""
    if env is None:
        monkeypatch.delenv("STREAMASR_SPIN", raising=False)
    else:
        monkeypatch.setenv("STREAMASR_SPIN", env)
    opts = session_options(2)
    assert opts.get_session_config_entry(SPIN) == spin and opts.get_session_config_entry(STOP) == stop
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1


def test_unknown_spinning_policy_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("STREAMASR_SPIN", "fast")
    with pytest.raises(ModelError, match="STREAMASR_SPIN='fast'"):
        session_options(2)


def test_graph_threads_give_a_large_joint_the_encoders_pool(loaded_tiny):
    """The encoder takes the threads asked for; the prediction network and a small joint run on one (a call
    costs microseconds); a joint of a multilingual model's size takes the encoder's threads."""
    small = loaded_tiny.config
    large = replace(small, decoder=replace(small.decoder, vocab_size=LARGE_JOINT_LABELS))
    assert [graph_threads(g, 2, small) for g in ("encoder", "decoder", "joint")] == [2, 1, 1]
    assert [graph_threads(g, 2, large) for g in ("encoder", "decoder", "joint")] == [2, 1, 2]
    assert graph_threads("joint", 2, None) == 1
