"""NeMo's own PyTorch streaming, timed in the same process as the ONNX models (`bench speed --nemo`).

A ratio against NeMo is only valid when both are measured in the same run on the same audio, because these
machines drift. NeMo runs its reference cache-aware loop (`convert/nemo_reference.py`: whole-file features,
`conformer_stream_step` per chunk, `greedy_batch` decoding) with `threads` torch threads.

The model is a `.nemo` file, a hub id, or `random:NAME`: an architecture from `convert/random_model.py`
built in memory by NeMo with speech-like random weights (speed does not depend on the weight values, but it
does depend on the decoder emitting a realistic number of tokens, which the speech-like tuning ensures).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamasr.convert.random_model import (
    ARCHITECTURES,
    RANDOM_PREFIX,
    long_tuning_streams,
    make_speech_like,
    nemo_config,
    random_state_dict,
    train_tokenizer,
)
from streamasr.errors import ModelError
from streamasr.eval.nemo_reference import load_nemo_model, nemo_streaming
from streamasr.speech import bundled_speech


@dataclass
class NemoRun:
    audio_s: float
    processing_s: float
    steps: int
    tokens: int
    token_ids: list[int] = field(default_factory=list)


def load_nemo_baseline(source: str, threads: int):
    """A NeMo ASR model in eval mode with `threads` torch threads; see the module docstring for `source`."""
    try:
        import torch
    except ImportError as exc:
        raise ModelError("--nemo needs torch and NeMo: pip install 'streamasr[verify]'") from exc

    torch.set_num_threads(threads)
    if source.startswith(RANDOM_PREFIX):
        return random_nemo_model(source[len(RANDOM_PREFIX):])

    return load_nemo_model(source)


def random_nemo_model(name: str, seed: int = 0):
    """NeMo's EncDecRNNTBPEModel of a named architecture with speech-like random weights, not saved."""
    import tempfile
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf

    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        from nemo.collections.asr.models import EncDecRNNTBPEModel
    except ImportError as exc:
        raise ModelError("--nemo needs NeMo: pip install 'streamasr[verify]'") from exc
    spec = ARCHITECTURES[name]
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = train_tokenizer(Path(tmp) / "tokenizer", spec.vocab_size, seed=seed)
        cfg = nemo_config(spec, str(tok_dir))
        sd = random_state_dict(spec, seed=seed)
        speech = bundled_speech(max_seconds=10.0) if spec.d_model < 512 else long_tuning_streams()
        make_speech_like(sd, cfg, speech, seed=seed)
        torch.manual_seed(seed)
        model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
        model.load_state_dict(sd, strict=True)
    model.eval()
    model.preprocessor.featurizer.dither = 0.0
    torch.set_float32_matmul_precision("highest")
    return model


def nemo_once(model, samples: np.ndarray, right_context: int, sample_rate: int = 16000) -> NemoRun:
    """One timed pass of NeMo's streaming loop over `samples`."""
    t0 = time.perf_counter()
    out = nemo_streaming(model, samples, right_context)
    return NemoRun(samples.size / sample_rate, time.perf_counter() - t0, len(out.chunk_encodings), len(out.token_ids),
                   list(out.token_ids))
