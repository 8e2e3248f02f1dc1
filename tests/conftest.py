"""Shared fixtures: the workplace's real speech, and random-weight models built once per test session.

`tiny_model_dir` is NeMo-free (our own .nemo writer + converter) and fast; `nemo_model` builds the model
with NeMo itself (the parity reference) and is only used by the parity tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from streamasr.audio import read_audio

#: the workplace's recorded speech beside the checkout (or $STREAMASR_SPEECH_DIR); the product never reads it,
#: so the benchmarks run by the tests are pointed at it through the same variable a user would set
SPEECH_DIR = Path(os.environ.get("STREAMASR_SPEECH_DIR") or Path(__file__).resolve().parents[2] / "shared/data/speech")
os.environ["STREAMASR_SPEECH_DIR"] = str(SPEECH_DIR)


@pytest.fixture(scope="session")
def speech_manifest() -> list[dict]:
    manifest = SPEECH_DIR / "manifest.jsonl"
    assert manifest.is_file(), f"shared speech not found at {SPEECH_DIR} (set STREAMASR_SPEECH_DIR)"
    items = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for it in items:
        it["path"] = SPEECH_DIR / it["audio"]
    return items


@pytest.fixture(scope="session")
def speech(speech_manifest):
    """name -> float32 samples (16 kHz) for every shared utterance."""
    return {it["audio"]: read_audio(it["path"]) for it in speech_manifest}


@pytest.fixture(scope="session")
def tuning_speech(speech):
    return [x[: 16000 * 10] for x in list(speech.values())[::2]]


def _build(tmp_root: Path, name: str, tuning_speech, nemo_factory=None) -> tuple[Path, Path, object]:
    from streamasr.convert.export import convert_checkpoint
    from streamasr.convert.nemo_file import read_nemo
    from streamasr.convert.random_model import build_random_nemo

    nemo_path = tmp_root / f"{name}.nemo"
    report = build_random_nemo(name, nemo_path, speech=tuning_speech, nemo_model_factory=nemo_factory)
    model_dir = tmp_root / f"{name}-model"
    convert_checkpoint(read_nemo(nemo_path), model_dir, model_id=f"random:{name}", random_weights=True)
    return nemo_path, model_dir, report


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tuning_speech):
    """(nemo_path, model_dir, speech-like report) of a NeMo-free random tiny-a model."""
    return _build(tmp_path_factory.mktemp("tiny"), "tiny-a", tuning_speech)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model) -> Path:
    return tiny_model[1]


@pytest.fixture(scope="session")
def loaded_tiny(tiny_model_dir):
    from streamasr.runtime import Model

    return Model.load_dir(tiny_model_dir, threads=1)


def nemo_factory(cfg: dict):
    """NeMo builds the model of the config's class (a prompt model is EncDecRNNTBPEModelWithPrompt)."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from nemo.collections.asr.models.rnnt_bpe_models_prompt import (
        EncDecRNNTBPEModelWithPrompt,
    )
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    cls = EncDecRNNTBPEModelWithPrompt if cfg["target"].endswith("WithPrompt") else EncDecRNNTBPEModel
    return cls(cfg=OmegaConf.create(cfg)).eval()


_NEMO_BUILT: dict[str, dict] = {}


def nemo_built_model(name: str, tmp_path_factory, tuning_speech) -> dict:
    """A random model built, saved and restored by NeMo itself and converted by streamasr; built once per
    session whichever fixture asks first."""
    if name not in _NEMO_BUILT:
        from streamasr.eval.nemo_reference import load_nemo_model
        from streamasr.runtime import Model

        nemo_path, model_dir, report = _build(tmp_path_factory.mktemp(name), name, tuning_speech,
                                              nemo_factory=nemo_factory)
        _NEMO_BUILT[name] = {"name": name, "nemo_path": nemo_path, "nemo": load_nemo_model(nemo_path),
                             "model": Model.load_dir(model_dir, threads=1), "model_dir": model_dir, "report": report}
    return _NEMO_BUILT[name]


@pytest.fixture(scope="session", params=["tiny-a", "tiny-b"])
def nemo_built(request, tmp_path_factory, tuning_speech):
    """A random model built, saved and restored by NeMo itself; converted by streamasr."""
    return nemo_built_model(request.param, tmp_path_factory, tuning_speech)


@pytest.fixture(scope="session", params=["tiny-ml-a", "tiny-ml-b"])
def nemo_prompt_built(request, tmp_path_factory, tuning_speech):
    """A random multilingual prompt model (EncDecRNNTBPEModelWithPrompt) built by NeMo, converted by streamasr."""
    return nemo_built_model(request.param, tmp_path_factory, tuning_speech)


@pytest.fixture(scope="session")
def tiny_c_built(tmp_path_factory, tuning_speech):
    """tiny-c (no joint dropout, one LSTM layer, batch norm, tied biases) built by NeMo, converted by streamasr."""
    return nemo_built_model("tiny-c", tmp_path_factory, tuning_speech)


@pytest.fixture(scope="session")
def prompt_model_dir(tmp_path_factory, tuning_speech) -> Path:
    """The converted model directory of a small random multilingual prompt model (tiny-ml-a)."""
    return nemo_built_model("tiny-ml-a", tmp_path_factory, tuning_speech)["model_dir"]
