"""`parakeet-tdt-onnx` and `parakeet-tdt-onnx-int8`: Parakeet TDT in batch on onnx-asr (ONNX Runtime).

onnx-asr (istupakov, MIT, the `onnx-asr` extra) runs NeMo's own ONNX export of a transducer: NumPy log-mel
features, `encoder-model.onnx`, and a greedy TDT loop over `decoder_joint-model.onnx` (prediction network and
joint in one graph, one call per decoding step), with `vocab.txt` and `config.json` beside them. `-int8`
loads the `*.int8.onnx` graphs (ONNX Runtime's `quantize_dynamic`) of the same directory.

MODEL: an onnx-asr directory (`nemo-parakeet-tdt-0.6b-v3`'s layout), a .nemo file, or `random:` (the Parakeet
TDT 0.6B v3 shape of `nemo_chunked.SHAPES` with random weights: speed, size and memory only). A .nemo file or
`random:` is exported once, the way onnx-asr's conversion guide makes its models (NeMo's `model.export`, the
vocabulary with `<blk>` last, fp32, plus `quantize_dynamic` int8), into the streamasr cache
(`$STREAMASR_CACHE/onnx-asr/`). A hub id needs the hub (onnx-asr downloads it); offline it fails with one line.

Random builds cannot use `nemo_chunked`'s steered joint (a Python counter, not part of any graph), so
`steer_blank_bias` edits the joint's output layer instead: the duration rows are constant with "1 frame"
on top, and the blank bias is bisected until greedy decoding of the bundled speech emits `TOKENS_PER_S`
tokens per second. The edit is in the weights, so NeMo and the ONNX graphs decode the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.convert.nemo_file import RANDOM_MARKER
from streamasr.errors import ModelError, OfflineError
from streamasr.eval.compare.backend import SystemInfo, Transcript, batch_transcript
from streamasr.eval.compare.nemo_chunked import (
    SHAPES,
    TOKENS_PER_S,
    TransducerShape,
    build_random,
)
from streamasr.eval.compare.nemo_common import (
    ONNX_ASR_CONFIG,
    ONNX_ASR_TDT,
    load_checkpoint,
    require_nemo,
)
from streamasr.eval.compare.spec import SpecError, SystemSpec
from streamasr.model_store import cache_root, offline_reason
from streamasr.speech import bundled_speech

CONFIG = ONNX_ASR_CONFIG
VOCAB = "vocab.txt"
GRAPHS = ("encoder-model", "decoder_joint-model")
MODEL_TYPE = ONNX_ASR_TDT
#: version of what `export_onnx_asr` writes for a random build (a new one invalidates cached exports)
RANDOM_EXPORT_VERSION = 2
#: bisection steps of the blank bias (each a greedy decode of the calibration speech)
BLANK_STEPS = 20
DURATION_MARGIN = 20.0
#: per-unit spread of the joint's encoder term after steering, and the factor on its prediction term
ENCODER_SCALE = 1.0
PREDICTION_SCALE = 0.1


def require_onnx_asr(backend: str):
    try:
        import onnx_asr
    except ImportError as exc:
        raise SpecError(f"backend {backend} needs onnx-asr: pip install 'streamasr[onnx-asr]'") from exc
    return onnx_asr


# ---------------------------------------------------------------- random builds (needs NeMo)
def _joint_output_layer(model):
    import torch

    layer = model.joint.joint_net[-1]
    if not isinstance(layer, torch.nn.Linear):
        raise ModelError(f"unexpected joint network {model.joint.joint_net}")
    return layer


def steer_blank_bias(model, shape: TransducerShape, speech: list[np.ndarray],
                     tokens_per_s: float = TOKENS_PER_S) -> float:
    """Edit a random TDT joint so that greedy decoding of `speech` emits `tokens_per_s` (module docstring);
    returns the rate reached."""
    import torch

    layer = _joint_output_layer(model)
    blank = shape.vocab_size
    seconds = sum(x.size for x in speech) / 16000
    with torch.no_grad():
        if shape.durations:  # constant duration logits, duration 1 on top: one joint call per frame
            layer.weight[blank + 1:] = 0.0
            layer.bias[blank + 1:] = -DURATION_MARGIN
            layer.bias[blank + 1 + shape.durations.index(1)] = DURATION_MARGIN
        encoded = []
        for x in speech:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
            feats, n = model.preprocessor(input_signal=t, length=torch.tensor([t.shape[1]]))
            encoded.append(model.encoder(audio_signal=feats, length=n))
        # a random encoder's output varies little over time next to the prediction network's term, which
        # makes the token rate a step function of the blank bias: centre the encoder projection over the
        # speech and let it dominate, so that the margin of blank moves from frame to frame
        frames = torch.cat([enc[0].transpose(0, 1)[: int(n[0])] for enc, n in encoded])
        proj = model.joint.enc(frames)
        model.joint.enc.bias -= proj.mean(dim=0)
        scale = ENCODER_SCALE / float(proj.std(dim=0).mean())
        model.joint.enc.weight *= scale
        model.joint.enc.bias *= scale
        model.joint.pred.weight *= PREDICTION_SCALE
        model.joint.pred.bias *= PREDICTION_SCALE
        base = float(layer.bias[blank])

        def rate(offset: float) -> float:
            layer.bias[blank] = base + offset
            tokens = 0
            for enc, n in encoded:
                hyp = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=n,
                                                                     return_hypotheses=True)[0]
                tokens += len(hyp.y_sequence)
            return tokens / seconds

        lo, hi = -50.0, 50.0  # more blank bias, fewer tokens
        for _ in range(BLANK_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rate(mid) > tokens_per_s else (lo, mid)
        rates = {lo: rate(lo), hi: rate(hi)}  # the rate may jump between them: keep the nearer
        best = min(rates, key=lambda b: abs(rates[b] - tokens_per_s))
        rate(best)
        return rates[best]


def build_steered_random(shape: TransducerShape, seed: int = 0, speech: list[np.ndarray] | None = None):
    """(NeMo model of `shape` with random weights and a steered joint, tokens/s it reached on `speech`)."""

    model = build_random(shape, seed)
    if speech is None:
        speech = bundled_speech(max_seconds=6.0)[:2]
    return model, steer_blank_bias(model, shape, speech)


# ---------------------------------------------------------------- export (needs NeMo, onnx)
def write_vocab(model, path: Path) -> None:
    """onnx-asr's vocab.txt: `token id` per line, spaces as U+2581, `<blk>` after the last token."""
    labels = list(model.joint.vocabulary)
    with path.open("w", encoding="utf-8") as f:
        for i, token in enumerate([*labels, "<blk>"]):
            f.write(f"{token.replace(' ', chr(0x2581))} {i}\n")


def export_onnx_asr(model, out_dir: Path, int8: bool = True, random_weights: bool = False,
                    extra_config: dict | None = None) -> Path:
    """Write an onnx-asr directory for a NeMo TDT `model` (module docstring); returns `out_dir`."""
    import onnx

    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    raw = work / "raw"  # NeMo writes a large graph's weights as one file per tensor beside it
    raw.mkdir(parents=True)
    model.export(str(raw / "model.onnx"))
    for graph in GRAPHS:
        proto = onnx.load(str(raw / f"{graph}.onnx"))
        onnx.save(proto, str(work / f"{graph}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{graph}.onnx.data", size_threshold=1024)
        del proto
    shutil.rmtree(raw)
    if int8:
        from onnxruntime.quantization import quantize_dynamic

        for graph in GRAPHS:
            quantize_dynamic(model_input=str(work / f"{graph}.onnx"), model_output=str(work / f"{graph}.int8.onnx"))
    write_vocab(model, work / VOCAB)
    cfg = {"model_type": MODEL_TYPE, "features_size": int(model.cfg.preprocessor.features),
           "subsampling_factor": int(model.encoder.subsampling_factor), "max_tokens_per_step": 10,
           RANDOM_MARKER: bool(random_weights), **(extra_config or {})}
    (work / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    work.rename(out_dir)
    return out_dir


def _cache_dir(key: str) -> Path:
    return cache_root() / "onnx-asr" / key


def exported(source: str, threads: int, backend: str) -> Path:
    """The onnx-asr directory for a .nemo file or `random:` (exported into the cache once)."""
    if source.startswith("random:"):
        shape = SHAPES["parakeet-tdt"]
        tag = hashlib.sha1(f"{shape}|seed0|{TOKENS_PER_S}|v{RANDOM_EXPORT_VERSION}".encode()).hexdigest()[:12]
        out = _cache_dir(f"parakeet-tdt-random-{tag}")
        if not (out / CONFIG).is_file():
            require_nemo(backend, threads)
            model, rate = build_steered_random(shape)
            export_onnx_asr(model, out, random_weights=True, extra_config={"streamasr_calibrated_tokens_per_s":
                                                                           round(rate, 3)})
        return out
    path = Path(source).expanduser()
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = _cache_dir(f"{path.stem}-{tag}")
    if not (out / CONFIG).is_file():
        require_nemo(backend, threads)
        model = load_checkpoint(str(path), backend)
        marker = bool(model.cfg.get(RANDOM_MARKER, False))
        export_onnx_asr(model, out, random_weights=marker)
    return out


# ---------------------------------------------------------------- running (needs onnx-asr)
def _dir_bytes(directory: Path, quantization: str | None) -> int:
    suffix = f".{quantization}.onnx" if quantization else ".onnx"
    total = (directory / VOCAB).stat().st_size if (directory / VOCAB).is_file() else 0
    for graph in GRAPHS:
        for f in directory.glob(f"{graph}{suffix}*"):
            if quantization or ".int8." not in f.name:
                total += f.stat().st_size
    return total


class OnnxAsrTdt:
    def __init__(self, backend: str, spec: SystemSpec, threads: int, quantization: str | None):
        onnx_asr = require_onnx_asr(backend)
        import onnxruntime as ort

        source = spec.model
        path = Path(source).expanduser()
        if spec.random or path.is_file():
            directory = exported(source, threads, backend)
        elif path.is_dir():
            if not (path / CONFIG).is_file():
                raise ModelError(f"backend {backend}: {path} is not an onnx-asr directory (no {CONFIG})")
            directory = path
        else:
            directory = None  # a hub id: onnx-asr downloads it
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        kwargs = {"quantization": quantization, "sess_options": opts, "providers": ["CPUExecutionProvider"]}
        if directory is None:
            why = offline_reason()
            if why:
                raise OfflineError(f"backend {backend}: cannot reach the Hugging Face hub to download {source} "
                                   f"({why}); pass an onnx-asr directory, a .nemo file, or random: for speed, "
                                   "size and memory only")
            self.model = onnx_asr.load_model(source, **kwargs)
            cfg, size = {}, 0
        else:
            self.model = onnx_asr.load_model(MODEL_TYPE, path=directory, **kwargs)
            cfg = json.loads((directory / CONFIG).read_text())
            size = _dir_bytes(directory, quantization)
        random_weights = spec.random or bool(cfg.get(RANDOM_MARKER, False))
        notes = []
        if "streamasr_calibrated_tokens_per_s" in cfg:
            notes.append(f"random joint's blank bias tuned to {cfg['streamasr_calibrated_tokens_per_s']:g} "
                         "tokens/s on the bundled speech")
        self.info = SystemInfo(model_id=f"{backend}:{source}", size_bytes=size, algorithmic_delay_s=None,
                               random_weights=random_weights, streams=False,
                               precision=f"{quantization or 'fp32'} (onnx-asr, ONNX Runtime)", notes=notes)

    def _text(self, samples: np.ndarray) -> str:
        return " ".join(self.model.recognize(np.ascontiguousarray(samples, dtype=np.float32)).split())

    def transcribe(self, samples: np.ndarray) -> Transcript:
        return batch_transcript(self._text, samples)


@dataclass(frozen=True)
class _Backend:
    name: str
    quantization: str | None
    modes: tuple[str, ...] = ("batch",)
    extra: str = "onnx-asr"

    def load(self, spec: SystemSpec, threads: int) -> OnnxAsrTdt:
        return OnnxAsrTdt(self.name, spec, threads, self.quantization)


BACKENDS = (_Backend("parakeet-tdt-onnx", None), _Backend("parakeet-tdt-onnx-int8", "int8"))
