"""`canary`: Canary-1B-v2 (FastConformer encoder + Transformer decoder): batch through transformers, and
chunk(L-C-R) through NeMo's streaming AED decoding with the AlignAtt policy (`canary_alignatt.py`).

batch, MODEL: a `save_pretrained` directory or a hub id (`hf_common.load_checkpoint`) with `CanaryProcessor`,
asked for English transcription the documented way (`apply_transcription_request`: source = target =
English, punctuation on); greedy, stopping at the checkpoint's EOS. random: builds transformers'
`CanaryConfig()` (the 1B-v2 shape: 32 encoder layers, 8 decoder layers, d_model 1024, 16384 tokens) with
random weights and generates a fixed, speech-like number of tokens (`hf_common`).

chunk(L-C-R), MODEL: a .nemo file or hub id of a NeMo Canary, or `random:` (NeMo's EncDecMultiTaskModel at
the 1B-v2 shape). NeMo 3.0's AlignAtt streaming (`aed_decoding.GreedyBatchedStreamingAEDComputer` driven as
its example `speech_to_text_aed_streaming_infer.py` drives it: left + chunk + right seconds of audio encoded
per chunk) runs on CPU; the two modes of `random:` are the same shape on two runtimes (transformers, NeMo).
"""

from __future__ import annotations

import numpy as np

from streamasr.eval.compare.backend import (
    SAMPLE_RATE,
    SystemInfo,
    param_bytes,
)
from streamasr.eval.compare.canary_alignatt import CanaryAlignAtt
from streamasr.eval.compare.hf_common import (
    TransformersSystem,
    fixed_tokens,
    guard_tokens,
    require,
)
from streamasr.eval.compare.spec import SystemSpec

name = "canary"
modes = ("batch", "lcr")
extra = "verify"
PROMPT_LEN = 9  # Canary's multitask prompt (context, language, task, punctuation, ... tokens)
LANGUAGE = "en"


class CanarySystem(TransformersSystem):
    BACKEND = name
    MODEL_CLASS = "CanaryForConditionalGeneration"
    PROCESSOR_CLASS = "CanaryProcessor"
    REAL_NOTE = (f"greedy, stops at EOS; English transcription with punctuation "
                 f"(apply_transcription_request, source = target = {LANGUAGE})")

    def _build_random(self, model_cls, threads: int) -> None:
        config_cls = require(name, "CanaryConfig", threads)
        extractor_cls = require(name, "ParakeetFeatureExtractor", threads)
        import torch

        torch.manual_seed(0)
        self.model = model_cls(config_cls()).eval()
        self.extractor = extractor_cls(feature_size=128)
        self.prompt = torch.tensor([[self.model.config.decoder_start_token_id] + [16] * (PROMPT_LEN - 1)])
        self.info = SystemInfo(model_id="canary:random (CanaryConfig(), the 1B-v2 shape)",
                               size_bytes=param_bytes(self.model), algorithmic_delay_s=self.mode.algorithmic_delay_s,
                               random_weights=True, streams=False, precision=self.PRECISION,
                               notes=["random decoder: fixed 3 tokens/s, EOS suppressed"])

    def _decode_real(self, audio: np.ndarray) -> str:
        import torch

        inputs = self.processor.apply_transcription_request(audio, source_language=LANGUAGE)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=guard_tokens(audio.size / SAMPLE_RATE))
        new = out[:, inputs["decoder_input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def _decode_random(self, audio: np.ndarray) -> str:
        import torch

        feats = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        n = fixed_tokens(audio.size / SAMPLE_RATE)
        with torch.inference_mode():
            out = self.model.generate(input_features=feats["input_features"], attention_mask=feats["attention_mask"],
                                      decoder_input_ids=self.prompt, min_new_tokens=n, max_new_tokens=n,
                                      do_sample=False)
        return " ".join(f"t{int(t)}" for t in out[0, self.prompt.shape[1]:])


def load(spec: SystemSpec, threads: int):
    if spec.mode.kind == "lcr":
        return CanaryAlignAtt(spec, threads)
    return CanarySystem(spec, threads)
