"""NeMo's own cache-aware streaming inference, as the parity reference (needs nemo-toolkit[asr]).

This drives NeMo exactly like its example script `speech_to_text_cache_aware_streaming_infer.py`:
`CacheAwareStreamingAudioBuffer` (whole-file features, default schedule without pad-and-drop), then
`conformer_stream_step` per chunk with `greedy_batch` decoding (max 10 symbols per frame), carrying caches
and hypotheses. The encoder output of every step is recorded so that it can be compared chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import ModelError


@dataclass
class NemoStreamingOutput:
    token_ids: list[int]
    token_frames: list[int]
    text: str
    chunk_encodings: list[np.ndarray]  # per step, (T, D)


def load_nemo_model(source: str | Path):
    """Restore a `.nemo` file (or a pretrained name) with NeMo, in eval mode on CPU, full fp32 precision."""
    try:
        import torch
        from nemo.collections.asr.models import ASRModel
    except ImportError as exc:
        raise ModelError("NeMo is not installed; `pip install 'streamasr[verify]'` (nemo-toolkit[asr])") from exc
    torch.set_float32_matmul_precision("highest")
    src = str(source)
    model = ASRModel.restore_from(src, map_location="cpu") if src.endswith(".nemo") else ASRModel.from_pretrained(src, map_location="cpu")
    model.eval()
    model.preprocessor.featurizer.dither = 0.0
    return model


def _configure(model, right_context: int) -> None:
    from omegaconf import open_dict

    left = model.encoder.att_context_size[0]
    model.encoder.set_default_att_context_size([left, right_context])
    decoding = model.cfg.decoding
    with open_dict(decoding):
        decoding.strategy = "greedy_batch"
        decoding.preserve_alignments = False
        decoding.fused_batch_size = -1
        decoding.greedy.max_symbols = 10
    model.change_decoding_strategy(decoding, verbose=False)


def nemo_streaming(model, samples: np.ndarray, right_context: int, language: str | None = None,
                   switch: dict[int, str] | None = None) -> NemoStreamingOutput:
    """Stream `samples` (float32, 16 kHz mono) through NeMo in the mode [left, right_context].

    For a prompt model, `language` is set with NeMo's `set_inference_prompt` before the first step and
    `switch` maps a step index to the language set before that step; the recorded encodings are then the
    prompt's output (what the joint sees)."""
    import torch
    from nemo.collections.asr.parts.utils.streaming_utils import (
        CacheAwareStreamingAudioBuffer,
    )

    _configure(model, right_context)
    prompt = bool(getattr(model, "concat", False))
    if prompt:
        model.set_inference_prompt(language or "en-US")
    elif language is not None or switch:
        raise ModelError("a language was given for a NeMo model without a language prompt")
    recorded: list[np.ndarray] = []
    lengths: list[int] = []
    original = model.encoder.cache_aware_stream_step
    original_prompt = model._apply_prompt_to_encoded

    def recording_step(*args, **kwargs):
        out = original(*args, **kwargs)
        encoded, encoded_len = out[0], out[1]
        lengths.append(int(encoded_len[0]))
        if not prompt:
            recorded.append(encoded[0, :, : lengths[-1]].transpose(0, 1).detach().cpu().numpy().copy())
        return out

    def recording_prompt(encoded):
        out = original_prompt(encoded)
        recorded.append(out[0, :, : lengths[-1]].transpose(0, 1).detach().cpu().numpy().copy())
        return out

    model.encoder.cache_aware_stream_step = recording_step
    if prompt:
        model._apply_prompt_to_encoded = recording_prompt
    try:
        buffer = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
        buffer.append_audio(np.asarray(samples, dtype=np.float32))
        cache_ch, cache_t, cache_len = model.encoder.get_initial_cache_state(batch_size=1)
        hyps = None
        pred_out = None
        with torch.inference_mode():
            for step, (chunk, length) in enumerate(buffer):
                if switch and step in switch:
                    model.set_inference_prompt(switch[step])
                pred_out, _texts, cache_ch, cache_t, cache_len, hyps = model.conformer_stream_step(
                    processed_signal=chunk,
                    processed_signal_length=length,
                    cache_last_channel=cache_ch,
                    cache_last_time=cache_t,
                    cache_last_channel_len=cache_len,
                    keep_all_outputs=buffer.is_buffer_empty(),
                    previous_hypotheses=hyps,
                    previous_pred_out=pred_out,
                    drop_extra_pre_encoded=0 if step == 0 else None,
                    return_transcription=True,
                )
    finally:
        del model.encoder.cache_aware_stream_step
        if prompt:
            del model._apply_prompt_to_encoded
    hyp = hyps[0] if hyps else None
    ids = [int(t) for t in hyp.y_sequence] if hyp is not None else []
    frames = [int(t) for t in hyp.timestamp] if hyp is not None and len(hyp.timestamp) == len(ids) else []
    text = hyp.text if hyp is not None and isinstance(hyp.text, str) else model.tokenizer.ids_to_text(ids)
    return NemoStreamingOutput(token_ids=ids, token_frames=frames, text=text, chunk_encodings=recorded)


def nemo_offline_encoding(model, samples: np.ndarray, right_context: int) -> np.ndarray:
    """NeMo's whole-utterance encoder output (T, D) in the given mode (its offline chunked-limited mask)."""
    import torch

    _configure(model, right_context)
    x = torch.from_numpy(np.asarray(samples, dtype=np.float32))[None]
    with torch.inference_mode():
        feats, feat_len = model.preprocessor(input_signal=x, length=torch.tensor([x.shape[1]]))
        enc, enc_len = model.encoder(audio_signal=feats, length=feat_len)
    return enc[0, :, : int(enc_len[0])].transpose(0, 1).numpy().copy()
