"""`parakeet-tdt` and `conformer-transducer`: NeMo transducers in batch and in NeMo's buffered chunked mode.

chunk(L-C-R) follows NeMo's `speech_to_text_streaming_infer_rnnt.py` (the paper's fork of it): for every C
seconds of audio, a window of L seconds before, the chunk, and R seconds after is encoded; only the encoder
frames of the chunk are decoded, greedily, continuing the previous chunk's hypothesis and decoder state. The
step's audio end is the chunk's end plus R (the right context must have arrived). batch: the whole utterance
encoded and decoded at once.

MODEL: a .nemo file or hub id (real weights), or `random:` for the real architecture with random weights
(speed, size and memory only). A random joint network would emit blank everywhere or a token on every
step, so random builds steer the joint's argmax to a token on a fixed share of the joint calls,
`TOKENS_PER_S` tokens per second of audio as in speech, leaving the joint's own compute in place.

Runtime of batch: NeMo PyTorch here, so that BSF divides chunked by batch on one runtime; `parakeet-tdt-onnx`
(`parakeet_onnx.py`) runs the same network in batch on onnx-asr, 2.7x (fp32) and 3.2x (int8) NeMo's batch RTFx
on this machine (docs/benchmarks.md); an onnx-asr folder given here is refused with that pointer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    Step,
    SystemInfo,
    Transcript,
    param_bytes,
    timed,
)
from streamasr.eval.compare.nemo_common import (
    checkpoint_size,
    load_checkpoint,
    require_nemo,
)
from streamasr.eval.compare.spec import SystemSpec

TOKENS_PER_S = 3.0  # speech-like BPE token rate for random-weight decoders


@dataclass(frozen=True)
class TransducerShape:
    """The published shape of a NeMo transducer, enough to build it with random weights."""

    n_mels: int
    n_layers: int
    d_model: int
    n_heads: int
    subsampling: str
    subsampling_factor: int
    subsampling_channels: int
    conv_kernel: int
    vocab_size: int
    pred_hidden: int = 640
    joint_hidden: int = 640
    durations: tuple[int, ...] = ()  # TDT


#: nvidia/parakeet-tdt-0.6b-v3 (FastConformer, 8x) and nvidia/stt_en_conformer_transducer_xlarge (Conformer, 4x)
SHAPES = {
    "parakeet-tdt": TransducerShape(128, 24, 1024, 8, "dw_striding", 8, 256, 9, 8192, durations=(0, 1, 2, 3, 4)),
    "conformer-transducer": TransducerShape(80, 24, 1024, 8, "striding", 4, 1024, 31, 1024),
}


def random_config(shape: TransducerShape) -> dict:
    """A NeMo EncDecRNNTModel config of `shape` (character labels stand in for the BPE vocabulary)."""
    labels = [f"t{i} " for i in range(shape.vocab_size)]  # words, so that texts split into tokens
    cfg = {
        "sample_rate": SAMPLE_RATE, "labels": labels,
        "model_defaults": {"enc_hidden": shape.d_model, "pred_hidden": shape.pred_hidden,
                           "joint_hidden": shape.joint_hidden},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": shape.n_mels, "n_fft": 512,
                         "log": True, "frame_splicing": 1, "dither": 0.0, "pad_to": 0, "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": shape.n_mels,
                    "feat_out": -1, "n_layers": shape.n_layers, "d_model": shape.d_model,
                    "subsampling": shape.subsampling, "subsampling_factor": shape.subsampling_factor,
                    "subsampling_conv_channels": shape.subsampling_channels, "ff_expansion_factor": 4,
                    "self_attention_model": "rel_pos", "n_heads": shape.n_heads, "att_context_size": [-1, -1],
                    "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
                    "conv_kernel_size": shape.conv_kernel, "conv_norm_type": "batch_norm",
                    "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True,
                    "prednet": {"pred_hidden": shape.pred_hidden, "pred_rnn_layers": 2, "t_max": None,
                                "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "preserve_memory": False, "fuse_loss_wer": False,
                  "jointnet": {"joint_hidden": shape.joint_hidden, "activation": "relu", "dropout": 0.0}},
        "decoding": {"strategy": "greedy", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
    }
    if shape.durations:
        cfg["joint"]["num_extra_outputs"] = len(shape.durations)
        cfg["decoding"].update(model_type="tdt", durations=list(shape.durations))
        cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": list(shape.durations), "sigma": 0.02,
                                                          "omega": 0.1}}
    return cfg


def build_random(shape: TransducerShape, seed: int = 0):
    import torch
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    model = EncDecRNNTModel(cfg=OmegaConf.create(random_config(shape)))
    return model.eval()


def steer_emissions(model, shape: TransducerShape) -> None:
    """Make a random joint emit `TOKENS_PER_S` tokens per second (see the module docstring)."""
    fps = 1.0 / (0.01 * shape.subsampling_factor)
    # RNN-T calls the joint once per frame plus once per token; TDT's duration 1 moves on after a token
    calls_per_s = fps + (0 if shape.durations else TOKENS_PER_S)
    period = max(1, round(calls_per_s / TOKENS_PER_S))
    blank = shape.vocab_size
    joint = model.joint.joint
    count = [0]

    def steered(f, g):
        out = joint(f, g).clone()
        count[0] += 1
        top = out.max() + 10.0
        token = blank if count[0] % period else (count[0] * 7919) % shape.vocab_size
        out[..., token] = top
        if shape.durations:
            out[..., blank + 1 + 1] = top  # duration index 1: one frame
        return out

    model.joint.joint = steered


def _greedy(model) -> None:
    from omegaconf import open_dict

    decoding = model.cfg.decoding
    with open_dict(decoding):
        decoding.strategy = "greedy"
        decoding.greedy.max_symbols = 10
    model.change_decoding_strategy(decoding, verbose=False)


class ChunkedTransducer:
    def __init__(self, backend: str, spec: SystemSpec, threads: int):
        require_nemo(backend, threads)
        self.mode = spec.mode
        shape = SHAPES[backend]
        if spec.random:
            self.model = build_random(shape)
            steer_emissions(self.model, shape)
            size = param_bytes(self.model)
        else:
            self.model = load_checkpoint(spec.model, backend)
            _greedy(self.model)
            size = checkpoint_size(spec.model, self.model)
        self.model.preprocessor.featurizer.dither = 0.0
        self.frame_s = float(self.model.cfg.preprocessor.window_stride) * int(self.model.encoder.subsampling_factor)
        self.info = SystemInfo(model_id=f"{backend}:{spec.model}", size_bytes=size,
                               algorithmic_delay_s=spec.mode.algorithmic_delay_s, random_weights=spec.random,
                               streams=spec.mode.kind != "batch", precision="fp32 (PyTorch)",
                               notes=[f"random joint steered to {TOKENS_PER_S:g} tokens/s"] if spec.random else [])

    def _encode(self, audio: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        with torch.inference_mode():
            feats, n = self.model.preprocessor(input_signal=x, length=torch.tensor([x.shape[1]]))
            enc, enc_len = self.model.encoder(audio_signal=feats, length=n)
        return enc, int(enc_len[0])

    def _decode(self, enc, first: int, last: int, previous):
        import torch

        part = enc[:, :, first:last]
        with torch.inference_mode():
            hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=part, encoded_lengths=torch.tensor([part.shape[2]]), return_hypotheses=True,
                partial_hypotheses=[previous] if previous is not None else None)
        return hyps[0]

    def _text(self, hyp) -> str:
        if hyp is None:
            return ""
        if isinstance(hyp.text, str):
            return " ".join(hyp.text.split())
        return self.model.tokenizer.ids_to_text([int(t) for t in hyp.y_sequence])

    def transcribe(self, samples: np.ndarray) -> Transcript:
        duration = samples.size / SAMPLE_RATE
        if self.mode.kind == "batch":
            def whole(x):
                enc, n = self._encode(x)
                return self._text(self._decode(enc, 0, n, None))

            text, dt = timed(whole, samples)
            return Transcript(text, [Step(duration, dt, text)])
        left, chunk, right = (round(v * SAMPLE_RATE) for v in
                              (self.mode.left_s, self.mode.chunk_s, self.mode.right_s))
        hyp, steps = None, []
        for c0 in range(0, samples.size, chunk):
            c1 = min(samples.size, c0 + chunk)
            w0, w1 = max(0, c0 - left), min(samples.size, c1 + right)

            def one(c0=c0, c1=c1, w0=w0, w1=w1, hyp=hyp):
                enc, n = self._encode(samples[w0:w1])
                first = min(n, round((c0 - w0) / SAMPLE_RATE / self.frame_s))
                last = n if c1 == samples.size else min(n, round((c1 - w0) / SAMPLE_RATE / self.frame_s))
                return self._decode(enc, first, last, hyp) if last > first else hyp

            hyp, dt = timed(one)
            steps.append(Step(w1 / SAMPLE_RATE, dt, self._text(hyp)))
        return Transcript(self._text(hyp), steps)


@dataclass(frozen=True)
class _Backend:
    name: str
    modes: tuple[str, ...] = ("batch", "lcr")
    extra: str = "verify"

    def load(self, spec: SystemSpec, threads: int) -> ChunkedTransducer:
        return ChunkedTransducer(self.name, spec, threads)


BACKENDS = (_Backend("parakeet-tdt"), _Backend("conformer-transducer"))
