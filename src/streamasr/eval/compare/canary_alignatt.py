"""`canary` in chunk(L-C-R): NeMo's streaming AED decoding with the AlignAtt policy, on CPU.

NeMo 3.0 streams a Canary (`EncDecMultiTaskModel`) as its example script
`examples/asr/asr_chunked_inference/aed/speech_to_text_aed_streaming_infer.py` does, with library pieces this
module calls: an audio buffer of L seconds of left context, the C-second chunk and R seconds of right context
(`streaming_utils.StreamingBatchedAudioBuffer`, sizes rounded down to whole encoder frames as the script does)
is encoded whole for every new chunk; the decoder attends to the left context and the chunk (the right context
is masked) and `aed_decoding.GreedyBatchedStreamingAEDComputer` continues the hypothesis greedily under the
AlignAtt policy: a token is kept while the frame the decoder attends to most is at least `alignatt_thr` frames
before the end of the chunk, otherwise it waits for the next chunk; the first `waitk_lagging` chunks only
listen, and the last chunk decodes to EOS. The step's audio end is the chunk's end plus R; a step's text is
the tokens kept so far. Defaults are `AEDStreamingDecodingConfig`'s (threshold 8 frames, 2 chunks of lag);
the script's recommended buffer for about 1.5 s of latency is chunk(10-1-0.5).

MODEL: a .nemo file or hub id of a Canary checkpoint (real weights; asked for English transcription with
punctuation), or `random:`: NeMo's `EncDecMultiTaskModel` at Canary-1B-v2's shape (FastConformer 32 x 1024,
8x subsampling, 128 mels; Transformer decoder 8 x 1024; 16384 tokens; the canary2 prompt) with random
weights, built in memory with a locally made tokenizer (NeMo's special-token tokenizer plus a word-level
SentencePiece model whose pieces are `t0`, `t1`, ...). Random attention has no alignment and a random head
no sense of when to stop, so the random head is steered like the other random decoders: it keeps emitting
tokens until `TOKENS_PER_S` per second of audio the decoder has heard (EOS held back until then; at the last
chunk it then ends the utterance), and the AlignAtt threshold is set so that the test always passes. The
decoder, its cross-attention scores and the encoder all still run in full, so the speed row is the real
work at a speech-like token rate.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import ModelError
from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    Step,
    SystemInfo,
    Transcript,
    param_bytes,
    timed,
)
from streamasr.eval.compare.hf_common import TOKENS_PER_S, fixed_tokens
from streamasr.eval.compare.nemo_common import (
    checkpoint_size,
    load_checkpoint,
    require_nemo,
)
from streamasr.eval.compare.spec import SpecError, SystemSpec

BACKEND = "canary"
#: the task asked of a real checkpoint; slots a prompt format does not have are ignored by NeMo
PROMPT_SLOTS = {"source_lang": "en", "target_lang": "en", "pnc": "yes", "task": "asr"}
#: canary2 prompt tokens beside NeMo's defaults (`canary_tokenizer.DEFAULT_TOKENS`)
SPECIAL_TOKENS = ("en", "startofcontext", "transcribe", "translate", "emo:undefined", "itn", "noitn",
                  "timestamp", "notimestamp", "diarize", "nodiarize")
RANDOM_PROMPT = {"decodercontext": "", "emotion": "<|emo:undefined|>", "source_lang": "en", "target_lang": "en",
                 "pnc": "yes", "itn": "no", "timestamp": "no", "diarize": "no"}


@dataclass(frozen=True)
class CanaryShape:
    """The published shape of a NeMo Canary, enough to build it with random weights."""

    n_mels: int
    enc_layers: int
    d_model: int
    enc_heads: int
    subsampling_channels: int
    conv_kernel: int
    dec_layers: int
    dec_hidden: int
    dec_heads: int
    vocab_size: int  # special tokens + text tokens


#: nvidia/canary-1b-v2 (the shape transformers' `CanaryConfig()` also has)
CANARY_1B_V2 = CanaryShape(128, 32, 1024, 8, 256, 9, 8, 1024, 8, 16384)
SHAPE = CANARY_1B_V2


def _word_tokenizer(out_dir: Path, n_pieces: int) -> None:
    """A SentencePiece word model with pieces `t0` ... (and <unk>): any size in milliseconds, and its texts
    read like the other random rows' (`t17 t4242`)."""
    import io

    import sentencepiece as spm

    n_words = n_pieces - 1  # <unk>
    lines = [" ".join(f"t{j}" for j in range(i, min(i + 20, n_words))) for i in range(0, n_words, 20)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=n_pieces,
                                   model_type="word", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
                                   hard_vocab_limit=True, use_all_vocab=True, num_threads=1, minloglevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (out_dir / "vocab.txt").write_text("".join(p + "\n" for p in pieces))
    (out_dir / "tokenizer.vocab").write_text("".join(f"{p}\t0\n" for p in pieces))


def random_config(shape: CanaryShape, spl_dir: Path, text_dir: Path) -> dict:
    """A NeMo EncDecMultiTaskModel config of `shape` (canary2 prompt, aggregate Canary tokenizer)."""
    d, h = shape.d_model, shape.dec_hidden
    return {
        "prompt_format": "canary2",
        # no forced-alignment model to restore (NeMo would look for one in whatever .nemo it restored last)
        "restore_timestamps_model": False,
        "prompt_defaults": [{"role": "user", "slots": dict(RANDOM_PROMPT)}],
        "sample_rate": SAMPLE_RATE,
        "model_defaults": {"asr_enc_hidden": d, "lm_enc_hidden": h, "lm_dec_hidden": h},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": shape.n_mels, "n_fft": 512,
                         "log": True, "frame_splicing": 1, "dither": 0.0, "pad_to": 0, "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": shape.n_mels,
                    "feat_out": -1, "n_layers": shape.enc_layers, "d_model": d, "subsampling": "dw_striding",
                    "subsampling_factor": 8, "subsampling_conv_channels": shape.subsampling_channels,
                    "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": shape.enc_heads,
                    "att_context_size": [-1, -1], "xscaling": False, "untie_biases": True, "pos_emb_max_len": 5000,
                    "conv_kernel_size": shape.conv_kernel, "conv_norm_type": "batch_norm", "dropout": 0.0,
                    "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0},
        "transf_decoder": {"_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer",
                           "model_name": None, "pretrained": False, "encoder": None, "pre_ln_final_layer_norm": True,
                           "config_dict": {"max_sequence_length": 1024, "num_token_types": 0, "embedding_dropout": 0.0,
                                           "learn_positional_encodings": False, "hidden_size": h,
                                           "inner_size": 4 * h, "num_layers": shape.dec_layers,
                                           "num_attention_heads": shape.dec_heads, "ffn_dropout": 0.0,
                                           "attn_score_dropout": 0.0, "attn_layer_dropout": 0.0, "hidden_act": "relu",
                                           "pre_ln": True, "vocab_size": None}},
        "head": {"_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier",
                 "num_layers": 1, "activation": "relu", "log_softmax": True, "hidden_size": h, "num_classes": None,
                 "dropout": 0.0, "use_transformer_init": True},
        "tokenizer": {"dir": None, "type": "agg",
                      "langs": {"spl_tokens": {"dir": str(spl_dir), "type": "bpe"},
                                "en": {"dir": str(text_dir), "type": "bpe"}},
                      "custom_tokenizer": {
                          "_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryTokenizer",
                          "tokenizers": None}},
        "loss": {"_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                 "label_smoothing": 0.0},
    }


def build_random(shape: CanaryShape, workdir: Path, seed: int = 0):
    """NeMo's EncDecMultiTaskModel of `shape` with random weights; tokenizer files go to `workdir` (NeMo reads
    them while building; keep it until `save_to` if the model is to be saved)."""
    import torch
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from nemo.collections.common.tokenizers.canary_tokenizer import CanaryTokenizer
    from omegaconf import OmegaConf

    spl_dir, text_dir = Path(workdir) / "spl_tokens", Path(workdir) / "en"
    special = CanaryTokenizer.build_special_tokenizer(list(SPECIAL_TOKENS), spl_dir)
    _word_tokenizer(text_dir, shape.vocab_size - special.vocab_size)
    torch.manual_seed(seed)
    return EncDecMultiTaskModel(cfg=OmegaConf.create(random_config(shape, spl_dir, text_dir)))


def _greedy(model) -> None:
    from nemo.collections.asr.parts.submodules.multitask_decoding import (
        MultiTaskDecodingConfig,
    )
    from omegaconf import OmegaConf

    model.change_decoding_strategy(OmegaConf.structured(MultiTaskDecodingConfig(strategy="greedy")))


def steer_tokens(model, computer, prompt_len: int, frame_s: float) -> None:
    """Make a random head emit `TOKENS_PER_S` text tokens per second of audio heard, then EOS (see the module
    docstring). Reads the decoding state NeMo's computer is working on, so any driver of `computer` gets the
    same tokens; the tokens rotate over the text vocabulary so NeMo's repetition detector never fires."""
    tokenizer = model.tokenizer
    eos = int(tokenizer.eos)
    text = [i for i, piece in enumerate(tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size))))
            if re.fullmatch("\u2581t[0-9]+", piece)]  # the word tokenizer's pieces (`_word_tokenizer`)
    head = model.decoding.decoding.greedy_search.classifier
    forward = head.forward

    def steered(hidden_states):
        out = forward(hidden_states=hidden_states).clone()
        state = computer.state
        emitted = int(state.current_context_lengths[0]) - prompt_len
        heard_s = (state.prev_encoder_shift + int(state.encoder_output_len[0])) * frame_s
        token = eos if emitted >= fixed_tokens(heard_s) else text[(emitted * 7919) % len(text)]
        out[..., token] = out.max() + 10.0
        return out

    head.forward = steered


class CanaryAlignAtt:
    def __init__(self, spec: SystemSpec, threads: int):
        require_nemo(BACKEND, threads)
        import torch
        from nemo.collections.asr.models import EncDecMultiTaskModel
        from nemo.collections.asr.parts.submodules.aed_decoding import (
            GreedyBatchedStreamingAEDComputer,
            return_decoder_input_ids,
        )
        from nemo.collections.asr.parts.submodules.multitask_decoding import (
            AEDStreamingDecodingConfig,
        )
        from nemo.collections.asr.parts.utils.streaming_utils import ContextSize
        from omegaconf import OmegaConf

        self.mode = spec.mode
        if spec.random:
            with tempfile.TemporaryDirectory() as tmp:
                self.model = build_random(SHAPE, Path(tmp))
            size = param_bytes(self.model)
        else:
            self.model = load_checkpoint(spec.model, BACKEND)
            if not isinstance(self.model, EncDecMultiTaskModel):
                raise ModelError(f"backend {BACKEND}: {spec.model} is a {type(self.model).__name__}, not a Canary "
                                 "(EncDecMultiTaskModel)")
            size = checkpoint_size(spec.model, self.model)
        self.model.eval()
        _greedy(self.model)
        self.model.preprocessor.featurizer.dither = 0.0
        self.model.preprocessor.featurizer.pad_to = 0

        # context sizes as NeMo's script computes them: whole encoder frames, then audio samples
        feature_s = float(self.model.cfg.preprocessor.window_stride)
        sub = int(self.model.encoder.subsampling_factor)
        frame_samples = int(SAMPLE_RATE * feature_s) // sub * sub * sub  # audio samples per encoder frame
        frames = [int(v * (1.0 / feature_s) / sub) for v in (self.mode.left_s, self.mode.chunk_s, self.mode.right_s)]
        if frames[1] < 1:
            raise SpecError(f"--system {spec.text}: the chunk must be at least one encoder frame "
                            f"({frame_samples / SAMPLE_RATE:g} s)")
        self.frames = ContextSize(*frames)
        self.samples = ContextSize(*(f * frame_samples for f in frames))
        self.frame_samples = frame_samples

        self.decoding_cfg = OmegaConf.structured(AEDStreamingDecodingConfig(streaming_policy="alignatt"))
        if spec.random:
            self.decoding_cfg.alignatt_thr = -1e9  # random attention: the test always passes (module docstring)
        self.computer = GreedyBatchedStreamingAEDComputer(self.model, frame_chunk_size=self.frames.chunk,
                                                          decoding_cfg=self.decoding_cfg)
        slots = dict(RANDOM_PROMPT) if spec.random else dict(PROMPT_SLOTS)
        self.prompt = return_decoder_input_ids(OmegaConf.create({"prompt": slots, "batch_size": 1}), self.model)
        if spec.random:
            steer_tokens(self.model, self.computer, self.prompt.shape[1], frame_samples / SAMPLE_RATE)
        self._torch = torch
        chunk_s, right_s = (v / SAMPLE_RATE for v in (self.samples.chunk, self.samples.right))
        context = (f"NeMo AlignAtt, left {self.samples.left / SAMPLE_RATE:g} s, chunk {chunk_s:g} s, "
                   f"right {right_s:g} s (whole encoder frames)")
        self.info = SystemInfo(
            model_id=f"{BACKEND}:{spec.model}" if not spec.random else
            f"{BACKEND}:random (NeMo EncDecMultiTaskModel, the 1B-v2 shape)",
            size_bytes=size, algorithmic_delay_s=round(chunk_s + right_s, 6), random_weights=spec.random,
            streams=True, precision="fp32 (PyTorch, NeMo)",
            notes=[context] + ([f"random head steered to {TOKENS_PER_S:g} tokens/s heard, EOS held back; "
                                "AlignAtt threshold always passes"] if spec.random else
                               ["greedy, English transcription with punctuation"]))

    def _text(self, state) -> str:
        ids = state.pred_tokens_ids[0, self.prompt.shape[1]:state.current_context_lengths[0]].tolist()
        return self.model.tokenizer.ids_to_text(ids).strip()

    def _step(self, state, buffer, audio, start: int, stop: int, window_end: int):
        """Add audio[start:stop] to the buffer, encode the buffer and let the AlignAtt computer continue."""
        from nemo.collections.asr.models.aed_multitask_models import lens_to_mask

        torch = self._torch
        n = audio.shape[1]
        last = stop >= n
        buffer.add_audio_batch_(audio[:, start:stop], audio_lengths=torch.tensor([stop - start]), is_last_chunk=last,
                                is_last_chunk_batch=torch.tensor([False]))
        state.is_last_chunk_batch = torch.tensor([last])
        _, enc_len, enc, _ = self.model(input_signal=buffer.samples,
                                        input_signal_length=buffer.context_size_batch.total())
        ctx = buffer.context_size_batch.subsample(factor=self.frame_samples)
        heard = enc_len if last else ctx.left + ctx.chunk  # the right context is masked but for the last chunk
        state.prev_encoder_shift = max(window_end // self.frame_samples - self.frames.left - self.frames.chunk, 0)
        return self.computer(encoder_output=enc, encoder_output_len=heard,
                             encoder_input_mask=lens_to_mask(heard, enc.shape[1]).to(enc.dtype),
                             prev_batched_state=state)

    def transcribe(self, samples: np.ndarray) -> Transcript:
        from nemo.collections.asr.parts.submodules.aed_decoding import (
            GreedyBatchedStreamingAEDComputer,
        )
        from nemo.collections.asr.parts.utils.streaming_utils import (
            StreamingBatchedAudioBuffer,
        )

        torch = self._torch
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
        n = audio.shape[1]
        chunk, right = self.samples.chunk, self.samples.right
        with torch.inference_mode():
            state = GreedyBatchedStreamingAEDComputer.initialize_aed_model_state(
                asr_model=self.model, decoder_input_ids=self.prompt, batch_size=1,
                context_encoder_frames=self.frames, chunk_secs=chunk / SAMPLE_RATE,
                right_context_secs=right / SAMPLE_RATE)
            buffer = StreamingBatchedAudioBuffer(batch_size=1, context_samples=self.samples, dtype=audio.dtype,
                                                 device=audio.device)
            steps = []
            start, stop, window_end = 0, min(chunk + right, n), min(chunk, n)
            while start < n:
                state, dt = timed(self._step, state, buffer, audio, start, stop, window_end)
                steps.append(Step(stop / SAMPLE_RATE, dt, self._text(state)))
                start, stop, window_end = stop, min(stop + chunk, n), window_end + chunk
        return Transcript(steps[-1].text if steps else "", steps)
