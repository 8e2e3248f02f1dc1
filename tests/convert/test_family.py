"""The converter handles the family of models NeMo saves, and refuses, naming it, what it does not convert.

Each option of the cache-aware FastConformer RNN-T family is found from the checkpoint's structure or config,
never a fixed index: joint with or without dropout (its output Linear at joint_net.2 or .1), one or two LSTM
layers, batch or layer norm in the conv module, tied or untied position biases, xscaling, other widths and
vocabularies, with or without a language prompt. The configurations of tiny-a/b (tests/convert/test_parity.py),
tiny-ml-a/b (test_prompt_parity.py) and tiny-c here are checked against NeMo's own streaming output.
"""

from __future__ import annotations

import copy

import pytest

from streamasr.convert.architecture import language_dictionary, parse_architecture
from streamasr.convert.export import convert_checkpoint
from streamasr.convert.nemo_file import read_nemo
from streamasr.convert.random_model import ARCHITECTURES, nemo_config, random_state_dict
from streamasr.errors import ModelError
from streamasr.eval.nemo_reference import nemo_streaming
from streamasr.eval.verify import max_chunk_difference, run_with_encodings

FILES = ["jfk_inaugural_1961.wav", "arctic_slt_a0005.wav"]


def test_options_are_read_from_the_checkpoint():
    for name, joint_out, layers, norm, untie in [("tiny-a", "joint.joint_net.2", 2, "layer_norm", True),
                                                 ("tiny-c", "joint.joint_net.1", 1, "batch_norm", False),
                                                 ("tiny-ml-b", "joint.joint_net.1", 1, "batch_norm", False)]:
        spec = ARCHITECTURES[name]
        arch = parse_architecture(nemo_config(spec, "tok"), random_state_dict(spec))
        assert (arch.joint_out, arch.decoder.pred_layers, arch.conv_norm, arch.untie_biases) == (
            joint_out, layers, norm, untie), name
        assert arch.decoder.vocab_size == spec.vocab_size and arch.num_prompts == spec.num_prompts


@pytest.mark.parametrize("latency_ms", [80, 640])
def test_tiny_c_streams_as_nemo(tiny_c_built, speech, latency_ms):
    """No joint dropout, one LSTM layer, batch norm, tied biases, left context 48: token for token NeMo's."""
    model, nemo = tiny_c_built["model"], tiny_c_built["nemo"]
    mode = model.config.encoder.mode(latency_ms)
    tokens = 0
    for name in FILES:
        ref = nemo_streaming(nemo, speech[name], mode.right_context)
        result, encodings = run_with_encodings(model, speech[name], latency_ms, nemo_compat=True)
        assert max_chunk_difference(encodings, ref.chunk_encodings) < 1e-3, name
        assert result.token_ids == ref.token_ids, name
        tokens += len(ref.token_ids)
    assert tokens >= 10


def _refusal(spec_name: str, edit) -> str:
    spec = ARCHITECTURES[spec_name]
    cfg, sd = nemo_config(spec, "tok"), random_state_dict(spec)
    edit(cfg, sd)
    with pytest.raises(ModelError) as info:
        parse_architecture(cfg, sd)
    return str(info.value)


def test_unsupported_options_are_refused_by_name():
    def tanh(cfg, sd):
        cfg["joint"]["jointnet"]["activation"] = "tanh"

    def norm_lstm(cfg, sd):
        cfg["decoder"]["normalization_mode"] = "layer"

    def lstm_count(cfg, sd):
        cfg["decoder"]["prednet"]["pred_rnn_layers"] = 3

    def deep_prompt(cfg, sd):
        sd["prompt_kernel.4.weight"] = sd["prompt_kernel.2.weight"]

    def no_kernel(cfg, sd):
        for k in [k for k in sd if k.startswith("prompt_kernel.")]:
            del sd[k]

    def no_dictionary(cfg, sd):
        del cfg["model_defaults"]["prompt_dictionary"]

    def ctc(cfg, sd):
        cfg["target"] = "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel"

    assert "joint activation tanh" in _refusal("tiny-a", tanh)
    assert "normalization_mode=layer" in _refusal("tiny-a", norm_lstm)
    assert "pred_rnn_layers=3 but the weights hold 2" in _refusal("tiny-a", lstm_count)
    assert "prompt_kernel with parameters" in _refusal("tiny-ml-a", deep_prompt)
    assert "initialize_prompt_feature=true but the checkpoint has no prompt_kernel" in _refusal("tiny-ml-a", no_kernel)
    assert "without a prompt_dictionary" in _refusal("tiny-ml-a", no_dictionary)
    assert "hybrid" in _refusal("tiny-a", ctc)


def test_a_weight_no_graph_reads_refuses_the_checkpoint(tiny_model, tmp_path):
    """No layer is dropped silently: a checkpoint with a module the converter does not know is refused."""
    ckpt = read_nemo(tiny_model[0])
    extra = copy.copy(ckpt)
    extra.state_dict = dict(ckpt.state_dict, **{"encoder.adapter.linear.weight": ckpt.state_dict["joint.enc.weight"]})
    with pytest.raises(ModelError, match=r"weights streamasr does not convert \(encoder\.adapter\.linear\.weight\)"):
        convert_checkpoint(extra, tmp_path / "out", model_id="x")
    assert not (tmp_path / "out" / "encoder.onnx").exists()


def test_yaml_booleans_in_the_prompt_dictionary_are_locale_keys():
    """A YAML 1.1 loader reads Norwegian's bare `no` key as false."""
    assert language_dictionary({"en-US": 0, False: 27, "auto": 101}) == {"en-US": 0, "no": 27, "auto": 101}
    with pytest.raises(ModelError, match="prompt_dictionary"):
        language_dictionary({"en-US": "zero"})
