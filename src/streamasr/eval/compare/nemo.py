"""`nemo`: NeMo's own PyTorch inference of a cache-aware streaming checkpoint (the same .nemo as `nemotron`).

latency mode: NeMo's reference cache-aware loop (`eval/nemo_reference.py`, the example script's algorithm)
in the mode whose right context gives that latency ((right + 1) x 80 ms). The loop is timed as a whole, so
the row has RTFx but no per-chunk latencies. batch: the whole utterance through NeMo's encoder in the model's
largest latency mode (its limited attention context), then greedy decoding. MODEL: a .nemo file, a hub id, or
random:NAME (an architecture of `convert/random_model.py` built in memory with speech-like weights;
`random:` alone is the full Nemotron English 0.6B).
"""

from __future__ import annotations

import numpy as np

from streamasr.convert.nemo_file import RANDOM_MARKER
from streamasr.convert.random_model import ARCHITECTURES, NEMOTRON_EN
from streamasr.eval.compare.backend import (
    SystemInfo,
    Transcript,
    batch_transcript,
    param_bytes,
)
from streamasr.eval.compare.nemo_common import (
    checkpoint_size,
    load_checkpoint,
    require_nemo,
)
from streamasr.eval.compare.spec import SpecError, SystemSpec
from streamasr.eval.nemo_baseline import random_nemo_model
from streamasr.eval.nemo_reference import nemo_offline_encoding, nemo_streaming

name = "nemo"
modes = ("latency", "batch")
extra = "verify"
FRAME_MS = 80


class NemoSystem:
    def __init__(self, spec: SystemSpec, threads: int):
        require_nemo(name, threads)
        if spec.random:
            arch = spec.random_name or NEMOTRON_EN
            if arch not in ARCHITECTURES:
                raise SpecError(f"--system {spec.text}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
            self.model = random_nemo_model(arch)
            size = param_bytes(self.model)
        else:
            self.model = load_checkpoint(spec.model, name)
            size = checkpoint_size(spec.model, self.model)
        rights = sorted({int(c[1]) for c in self.model.encoder.att_context_size_all})
        if spec.mode.kind == "latency":
            right = spec.mode.latency_ms // FRAME_MS - 1
            if spec.mode.latency_ms % FRAME_MS or right not in rights:
                known = ", ".join(str((r + 1) * FRAME_MS) for r in rights)
                raise SpecError(f"--system {spec.text}: no {spec.mode.latency_ms} ms mode; this model has: {known}")
        else:
            right = max(rights)
        self.right, self.batch = right, spec.mode.kind == "batch"
        self.info = SystemInfo(model_id=f"nemo:{spec.model}", size_bytes=size,
                               algorithmic_delay_s=spec.mode.algorithmic_delay_s,
                               random_weights=spec.random or bool(self.model.cfg.get(RANDOM_MARKER, False)),
                               streams=False, precision="fp32 (PyTorch)",
                               notes=[f"batch = whole utterance in the {(right + 1) * FRAME_MS} ms context"]
                               if self.batch else ["NeMo's streaming loop timed as a whole (no partial timings)"])

    def _batch_text(self, samples: np.ndarray) -> str:
        import torch

        enc = nemo_offline_encoding(self.model, samples, self.right)
        x = torch.from_numpy(enc.T.copy())[None]
        with torch.inference_mode():
            hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=x, encoded_lengths=torch.tensor([x.shape[2]]), return_hypotheses=True)
        hyp = hyps[0]
        return hyp.text if isinstance(hyp.text, str) else self.model.tokenizer.ids_to_text(
            [int(t) for t in hyp.y_sequence])

    def transcribe(self, samples: np.ndarray) -> Transcript:
        if self.batch:
            return batch_transcript(self._batch_text, samples)
        return batch_transcript(lambda x: nemo_streaming(self.model, x, self.right).text, samples)


def load(spec: SystemSpec, threads: int) -> NemoSystem:
    return NemoSystem(spec, threads)
