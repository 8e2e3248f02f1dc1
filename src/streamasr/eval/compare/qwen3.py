"""`qwen3-asr`: Qwen3-ASR (audio encoder + Qwen3 LLM decoder) through transformers, batch and chunked.

MODEL: a `save_pretrained` directory or a hub id (`hf_common.load_checkpoint`) with `Qwen3ASRProcessor`,
asked for English the documented way (`apply_transcription_request(language="en")`, which pre-fills
"language English<asr_text>" so the model writes only the transcription); greedy, stopping at the
checkpoint's EOS; the text is the processor's `decode(..., return_format="transcription_only")`.

random: builds `Qwen3ASRForConditionalGeneration` at the 0.6B shape (LLM: Qwen3-0.6B, 28 layers, hidden 1024,
16/8 heads, 151936 tokens; audio encoder: 18 layers, d_model 896, 14 heads, FFN 3584, output 1024, the
smaller AuT encoder, as independent ports of the 0.6B checkpoint document it, e.g. qwen3-asr-swift's model
notes; transformers' own defaults are the 1.7B's) with random weights, and generates a fixed,
speech-like number of tokens (`hf_common`). chunk(W,O): windows of W s overlapping by O s (the paper's
"chunk / stride"), each transcribed alone, stitched by `merge.merge_overlap` (the paper stitches by
forced-aligner timestamps, which random weights cannot give).
"""

from __future__ import annotations

import numpy as np

from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    SystemInfo,
    param_bytes,
)
from streamasr.eval.compare.hf_common import (
    TransformersSystem,
    fixed_tokens,
    guard_tokens,
    require,
)
from streamasr.eval.compare.spec import SystemSpec

name = "qwen3-asr"
modes = ("batch", "window")
extra = "verify"
TEXT_0_6B = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
             "max_position_embeddings": 65536}
AUDIO_0_6B = {"d_model": 896, "encoder_layers": 18, "encoder_attention_heads": 14, "encoder_ffn_dim": 3584,
              "output_dim": 1024}
PROMPT_IDS = [151644, 8948, 198, 151645, 198, 151644, 872, 198, 151669]  # chat prefix before the audio
SUFFIX_IDS = [151670, 151645, 198, 151644, 77091, 198]  # audio end, assistant turn
LANGUAGE = "en"


class Qwen3System(TransformersSystem):
    BACKEND = name
    MODEL_CLASS = "Qwen3ASRForConditionalGeneration"
    PROCESSOR_CLASS = "Qwen3ASRProcessor"
    REAL_NOTE = f"greedy, stops at EOS; language forced to {LANGUAGE} (apply_transcription_request)"

    def _build_random(self, model_cls, threads: int) -> None:
        config_cls = require(name, "Qwen3ASRConfig", threads)
        extractor_cls = require(name, "Qwen3ASRFeatureExtractor", threads)
        import torch

        torch.manual_seed(0)
        self.model = model_cls(config_cls(audio_config=AUDIO_0_6B, text_config=TEXT_0_6B)).eval()
        self.extractor = extractor_cls()
        self.info = SystemInfo(model_id="qwen3-asr:random (0.6B shape)", size_bytes=param_bytes(self.model),
                               algorithmic_delay_s=self.mode.algorithmic_delay_s, random_weights=True,
                               streams=self.mode.kind != "batch", precision=self.PRECISION,
                               notes=["random decoder: fixed 3 tokens/s, EOS suppressed"])

    def _decode_real(self, audio: np.ndarray) -> str:
        import torch

        inputs = self.processor.apply_transcription_request(audio, language=LANGUAGE)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=guard_tokens(audio.size / SAMPLE_RATE))
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, return_format="transcription_only").strip()

    def _audio_tokens(self, mel_frames: int, n_window: int = 50) -> int:
        chunk = 2 * n_window
        rest = mel_frames % chunk
        per_chunk = ((rest - 1) // 2 + 1 - 1) // 2 + 1
        return (per_chunk - 1) // 2 + 1 + (mel_frames // chunk) * 13

    def _decode_random(self, audio: np.ndarray) -> str:
        import torch

        feats = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        mask = feats["attention_mask"]
        n_audio = self._audio_tokens(int(mask.sum()))
        ids = torch.tensor([PROMPT_IDS + [self.model.config.audio_token_id] * n_audio + SUFFIX_IDS])
        n = fixed_tokens(audio.size / SAMPLE_RATE)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      input_features=feats["input_features"], input_features_mask=mask,
                                      min_new_tokens=n, max_new_tokens=n, do_sample=False)
        return " ".join(f"t{int(t)}" for t in out[0, ids.shape[1]:])


def load(spec: SystemSpec, threads: int) -> Qwen3System:
    return Qwen3System(spec, threads)
