"""Write a self-contained model directory from a NeMo checkpoint.

Layout: encoder.onnx, decoder.onnx, joint.onnx (each with its weights in NAME.onnx.data), frontend.npz
(STFT window and mel filterbank copied from the checkpoint), tokenizer.model, vocab.txt, config.json.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamasr import __version__
from streamasr.convert.architecture import (
    Architecture,
    ReadTracker,
    parse_architecture,
    unused_weights,
)
from streamasr.convert.graph_rewrite import fuse_skip_layer_norm
from streamasr.convert.nemo_file import RANDOM_MARKER, NemoCheckpoint
from streamasr.convert.onnx_file import save_graph
from streamasr.convert.torch_modules import (
    EncoderStep,
    Joint,
    PredictionStep,
    initial_inputs,
)
from streamasr.errors import ModelError
from streamasr.model_config import ModelConfig
from streamasr.runtime.cache import encoder_input_names

OPSET = 17

ENCODER_OUTPUTS = ["encoded", "encoded_proj", "k_new", "v_new", "conv_cache_next"]


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict[str, dict[int, str]],
            rewrite: Callable[[Any], int] | None = None) -> None:
    """torch.onnx.export `module` to `path`, then apply `rewrite` (an in-place graph rewrite) to the graph."""
    import onnx
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="streamasr-export-"))
    try:
        raw = tmp / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(raw), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(raw))
        if rewrite is not None:
            rewrite(model)
        save_graph(model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_encoder(arch: Architecture, sd: dict[str, Any], path: Path, module: EncoderStep | None = None) -> None:
    """Write encoder.onnx from the state dict (or from `module`, already built from it)."""
    import torch

    enc = arch.encoder
    module = module if module is not None else EncoderStep(arch, sd).eval()
    mode = enc.latency_modes[0]
    width = enc.pre_encode_cache + enc.subsampling_factor * (mode.right_context + 1)
    caches = initial_inputs(arch)
    caches[0][0] = 3  # a non-zero cache_len, so that tracing sees the general case
    args = (torch.zeros(1, width, arch.frontend.n_mels), torch.tensor(enc.drop_extra_pre_encoded, dtype=torch.int64),
            *caches)
    inputs = encoder_input_names(enc.n_layers, prompt=bool(arch.num_prompts))
    b = {0: "batch"}
    dynamic = {name: b for name in inputs[2:]}
    dynamic["mel"] = {0: "batch", 1: "mel_frames"}
    dynamic.update({"encoded": {0: "batch", 1: "frames"}, "encoded_proj": {0: "batch", 1: "frames"},
                    "k_new": {0: "batch", 2: "frames"}, "v_new": {0: "batch", 2: "frames"}, "conv_cache_next": b})
    _export(module, args, path, inputs, ENCODER_OUTPUTS, dynamic, rewrite=fuse_skip_layer_norm)


def export_decoder(arch: Architecture, sd: dict[str, Any], path: Path, module: PredictionStep | None = None) -> None:
    import torch

    dec = arch.decoder
    state = torch.zeros(dec.pred_layers, 1, dec.pred_hidden)
    args = (torch.tensor([dec.blank_id], dtype=torch.int64), state, state.clone())
    dynamic = {"label": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"},
               "pred_proj": {0: "batch"}, "h_next": {1: "batch"}, "c_next": {1: "batch"}}
    module = module if module is not None else PredictionStep(arch, sd).eval()
    _export(module, args, path, ["label", "h", "c"], ["pred_proj", "h_next", "c_next"], dynamic)


def export_joint(arch: Architecture, sd: dict[str, Any], path: Path) -> None:
    import torch

    j = arch.decoder.joint_hidden
    args = (torch.zeros(1, 4, j), torch.zeros(1, j))
    dynamic = {"encoded_proj": {0: "batch", 1: "frames"}, "pred_proj": {0: "batch"},
               "best": {0: "batch", 1: "frames"}, "logprob": {0: "batch", 1: "frames"},
               "logits": {0: "batch", 1: "frames"}}
    # `logits` (every label's score) is fetched only by fused decoding (hotwords, LM; runtime/decoder.py)
    _export(Joint(arch, sd, with_logits=True).eval(), args, path, ["encoded_proj", "pred_proj"],
            ["best", "logprob", "logits"], dynamic)


def convert_checkpoint(ckpt: NemoCheckpoint, out_dir: Path, model_id: str, random_weights: bool = False,
                       progress: Callable[[str], None] | None = None) -> ModelConfig:
    """Convert a loaded `.nemo` checkpoint into a model directory; returns its config. `progress` is told
    each graph as its export starts (the full encoder takes minutes)."""
    import sentencepiece as spm

    report = progress or (lambda step: None)

    cfg, sd = ckpt.config, ckpt.state_dict
    tok_cfg = cfg.get("tokenizer") or {}
    tokenizer = ckpt.artifact(tok_cfg.get("model_path"), "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    arch = parse_architecture(cfg, sd)
    vocab = arch.decoder.vocab_size
    if sp.get_piece_size() != vocab:
        raise ModelError(f"tokenizer has {sp.get_piece_size()} pieces but the joint predicts {vocab} labels + blank")
    for key in ("preprocessor.featurizer.window", "preprocessor.featurizer.fb"):
        if key not in sd:
            raise ModelError(f"checkpoint lacks {key}; cannot reproduce its front end")
    # every weight must end up in a graph: build the modules first and refuse what none of them reads
    tracked = ReadTracker(sd)
    encoder, prediction = EncoderStep(arch, tracked).eval(), PredictionStep(arch, tracked).eval()
    Joint(arch, tracked)
    unused = unused_weights(sd, tracked.read)
    if unused:
        shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
        raise ModelError(f"unsupported model: the checkpoint has weights streamasr does not convert ({shown}); "
                         "converting without them would compute something else")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report("exporting ONNX (encoder)")
    export_encoder(arch, sd, out_dir / "encoder.onnx", encoder)
    del encoder
    report("exporting ONNX (decoder, joint)")
    export_decoder(arch, sd, out_dir / "decoder.onnx", prediction)
    export_joint(arch, sd, out_dir / "joint.onnx")
    np.savez(out_dir / "frontend.npz",
             window=sd["preprocessor.featurizer.window"].float().numpy(),
             filterbank=sd["preprocessor.featurizer.fb"].float().numpy().reshape(arch.frontend.n_mels, -1))
    (out_dir / "tokenizer.model").write_bytes(tokenizer)
    (out_dir / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(vocab)))
    config = ModelConfig(
        model_id=model_id,
        frontend=arch.frontend,
        encoder=arch.encoder,
        decoder=arch.decoder,
        source_sha256=ckpt.sha256,
        random_weights=random_weights or bool(cfg.get(RANDOM_MARKER)),
        streamasr_version=__version__,
        files={"encoder": "encoder.onnx", "decoder": "decoder.onnx", "joint": "joint.onnx",
               "frontend": "frontend.npz", "tokenizer": "tokenizer.model", "vocab": "vocab.txt"},
        quantization={"method": "fp32"},
        languages=dict(arch.languages),
        default_language=arch.default_language,
    )
    return config.save_sized(out_dir)
