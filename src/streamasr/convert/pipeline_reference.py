"""Run the exportable torch modules through the runtime's own streaming loop.

`TorchBackend` implements the runtime's `Backend` interface with the torch modules that the exporter turns
into ONNX, so the converter can run a model (to tune random weights, to check an export) with the very
same chunk schedule and greedy decoder that ship, without ONNX Runtime and without NeMo.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from streamasr.convert.architecture import Architecture, parse_architecture
from streamasr.convert.torch_modules import EncoderStep, Joint, PredictionStep
from streamasr.frontend import log_mel
from streamasr.runtime.cache import CacheFeeds
from streamasr.runtime.decoder import GreedyDecoder
from streamasr.runtime.encoder import StreamingEncoder


class TorchBackend:
    def __init__(self, arch: Architecture, state_dict: dict[str, Any]):
        self.encoder = EncoderStep(arch, state_dict).eval()
        self.prediction = PredictionStep(arch, state_dict).eval()
        self.joint_net = Joint(arch, state_dict).eval()

    @torch.no_grad()
    def encode(self, mel, drop, caches: CacheFeeds):
        args = [torch.from_numpy(np.ascontiguousarray(a)) for a in (mel, np.array(drop), *caches.as_args())]
        return tuple(t.numpy() for t in self.encoder(*args))

    @torch.no_grad()
    def predict(self, label, h, c):
        return tuple(t.numpy() for t in self.prediction(*(torch.from_numpy(a) for a in (label, h, c))))

    @torch.no_grad()
    def joint(self, encoded_proj, pred_proj):
        return tuple(t.numpy() for t in self.joint_net(torch.from_numpy(encoded_proj), torch.from_numpy(pred_proj)))


class TorchReference:
    """A whole model (features, streaming encoder, greedy decoder) on the torch backend."""

    def __init__(self, arch: Architecture, state_dict: dict[str, Any]):
        self.arch = arch
        self.state_dict = state_dict
        self.backend = TorchBackend(arch, state_dict)
        self.window = state_dict["preprocessor.featurizer.window"].float().numpy()
        self.filterbank = state_dict["preprocessor.featurizer.fb"].float().numpy()

    @classmethod
    def from_state_dict(cls, nemo_cfg: dict[str, Any], state_dict: dict[str, Any]) -> "TorchReference":
        return cls(parse_architecture(nemo_cfg, state_dict), state_dict)

    def encode(self, samples: np.ndarray, latency_ms: int | None = None, language: int | None = None) -> torch.Tensor:
        """Encoder output (T, D) for a whole utterance, streamed in the given (default) latency mode; a prompt
        model's output after its prompt for the `language` slot (default: the model's default language)."""
        enc = self.arch.encoder
        mode = enc.mode(latency_ms or enc.default_latency_ms)
        if language is None and self.arch.num_prompts:
            language = self.arch.languages[self.arch.default_language]
        stream = StreamingEncoder(self.backend, enc, mode, self.arch.frontend.n_mels, language=language)
        mel = log_mel(self.arch.frontend, self.window, self.filterbank, samples)
        chunks = stream.finish(mel)
        return torch.from_numpy(np.concatenate([c.encoded for c in chunks]))

    def greedy(self, encoded: torch.Tensor, from_frame: int = 0) -> list[int]:
        """Greedy token ids over the encoder output (T, D); only those emitted at frame `from_frame` or later."""
        w, b = self.state_dict["joint.enc.weight"], self.state_dict.get("joint.enc.bias")
        proj = encoded @ w.t() + (0 if b is None else b)
        dec = GreedyDecoder(self.backend, self.arch.decoder)
        dec.decode_chunk(proj.numpy().astype(np.float32))
        return [t.id for t in dec.tokens if t.frame >= from_frame]
