"""A model directory whose files do not fit together is refused at load with one ModelError naming the file and
the problem: a config.json of the wrong shape or types, ONNX graphs of another model size; and a latency given
as a string is read as the mode it names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamasr.convert.architecture import parse_architecture
from streamasr.convert.export import convert_checkpoint, export_decoder, export_encoder
from streamasr.convert.nemo_file import RANDOM_MARKER, read_nemo
from streamasr.convert.random_model import ARCHITECTURES, nemo_config, random_state_dict
from streamasr.errors import ModelError
from streamasr.model_config import ModelConfig
from streamasr.runtime import Model


def _copy(model_dir: Path, dest: Path) -> Path:
    """A model directory of links to `model_dir`'s files, whose entries a test replaces."""
    dest.mkdir()
    for f in Path(model_dir).iterdir():
        (dest / f.name).symlink_to(f)
    return dest


def _replace(directory: Path, name: str, content: str | None = None) -> Path:
    (directory / name).unlink()
    if content is not None:
        (directory / name).write_text(content)
    return directory / name


@pytest.fixture(scope="module")
def tiny_b_graphs(tmp_path_factory) -> Path:
    """encoder.onnx and decoder.onnx of a random tiny-b (3 layers, d_model 192, prediction network 96): another
    model size than the tiny-a of `tiny_model_dir`. Exported straight from random weights: no tuning needed."""
    out = tmp_path_factory.mktemp("tiny-b-graphs")
    spec = ARCHITECTURES["tiny-b"]
    sd = random_state_dict(spec)
    arch = parse_architecture(nemo_config(spec, "tokenizer"), sd)
    export_encoder(arch, sd, out / "encoder.onnx")
    export_decoder(arch, sd, out / "decoder.onnx")
    return out


@pytest.mark.parametrize("case", ["list", "encoder_string", "latency_string", "missing_field", "heads"])
def test_malformed_config_is_one_model_error(tiny_model_dir, tmp_path, case):
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    if case == "list":
        cfg, needle = [cfg], "it holds a list, not a JSON object"
    elif case == "encoder_string":
        cfg["encoder"], needle = "x", "encoder must be an object, not a string ('x')"
    elif case == "latency_string":
        cfg["encoder"]["latency_modes"][1]["latency_ms"] = "160"
        needle = "encoder.latency_modes[1].latency_ms must be an integer, not a string ('160')"
    elif case == "missing_field":
        del cfg["decoder"]["joint_hidden"]
        needle = "decoder.joint_hidden is missing"
    else:
        cfg["encoder"]["n_heads"], needle = "4", "encoder.n_heads must be an integer"
    directory = _copy(tiny_model_dir, tmp_path / "model")
    _replace(directory, "config.json", json.dumps(cfg))
    with pytest.raises(ModelError, match=re.escape(f"{directory / 'config.json'} is malformed: {needle}")):
        ModelConfig.load(directory)
    with pytest.raises(ModelError, match=re.escape(needle)):
        Model.load_dir(directory, threads=1)


@pytest.mark.parametrize("graph, needle", [("encoder.onnx", "its inputs are for 3 layers"),
                                           ("decoder.onnx", ("its input h has shape [2, ?, 96] where the "
                                                             "model needs [2, ?, 128]"))])
def test_graphs_of_another_model_size_are_refused_at_load(tiny_model_dir, tiny_b_graphs, tmp_path, graph, needle):
    directory = _copy(tiny_model_dir, tmp_path / "model")
    for name in (graph, graph + ".data"):  # the graph and its weights file
        _replace(directory, name)
        (directory / name).symlink_to(tiny_b_graphs / name)
    with pytest.raises(ModelError, match=re.escape(f"{graph} in {directory} does not match its config.json")) as err:
        Model.load_dir(directory, threads=1)
    assert needle in str(err.value) and "different models" in str(err.value)


def test_tokenizer_of_another_model_is_refused_at_load(tiny_model_dir, tmp_path):
    cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    cfg["decoder"]["vocab_size"] += 1
    cfg["decoder"]["blank_id"] += 1
    directory = _copy(tiny_model_dir, tmp_path / "model")
    _replace(directory, "config.json", json.dumps(cfg))
    with pytest.raises(ModelError, match="tokenizer.model .* has 256 pieces"):
        Model.load_dir(directory, threads=1)


def test_latency_as_a_string_is_the_mode_it_names(loaded_tiny):
    for mode in loaded_tiny.latency_modes:
        assert loaded_tiny.latency(str(mode)) == mode
        assert loaded_tiny.stream(str(mode)).latency_ms == mode
    assert loaded_tiny.latency(" 160 ") == 160 and loaded_tiny.latency(160.0) == 160
    for bad in ("fast", "160.5", 1.5, True):
        with pytest.raises(ModelError, match="latency_ms must be an integer number of milliseconds"):
            loaded_tiny.stream(bad)
    with pytest.raises(ModelError, match="unknown latency mode 333 ms; this model supports: 80, 160, 560, 1120"):
        loaded_tiny.stream("333")


def test_random_nemo_file_converts_to_a_random_weights_directory(tiny_model, tmp_path):
    """A `.nemo` that streamasr wrote with random weights stays marked random when it is converted as a plain
    file (no `random:` source): no transcript of it can pass for a trained model's."""
    nemo_path = tiny_model[0]
    ckpt = read_nemo(nemo_path)
    assert ckpt.config[RANDOM_MARKER] is True
    convert_checkpoint(ckpt, tmp_path / "m", model_id=str(nemo_path))
    assert ModelConfig.load(tmp_path / "m").random_weights is True
