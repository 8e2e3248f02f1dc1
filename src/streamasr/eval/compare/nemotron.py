"""`nemotron`: streamasr itself (`streamasr.load`: a model directory, .nemo, hub id or random:NAME).

latency mode (e.g. @560, @160): the utterance is fed in 80 ms blocks through `Model.stream`, as a
microphone would feed it; every block is one step (its compute timed, the text after it the partial).
batch: the whole utterance in one `accept` call in the model's largest latency mode (the exported encoder is a
streaming step with bounded context, so this is the most accurate mode of the same graph, not NeMo's
unlimited-context offline encoder). Random-weight model directories are marked so and never scored.
"""

from __future__ import annotations

import time

import numpy as np

import streamasr
from streamasr.errors import ModelError
from streamasr.eval.compare.backend import SAMPLE_RATE, Step, SystemInfo, Transcript
from streamasr.eval.compare.spec import SpecError, SystemSpec
from streamasr.eval.utterance import BLOCK_S

name = "nemotron"
modes = ("latency", "batch")
extra = "(none: the runtime)"


class NemotronSystem:
    def __init__(self, spec: SystemSpec, threads: int):
        self.model = streamasr.load(spec.model, threads=threads)
        cfg = self.model.config
        if spec.mode.kind == "batch":
            self.latency_ms, self.whole = max(self.model.latency_modes), True
        else:
            try:
                self.latency_ms = self.model.latency(spec.mode.latency_ms)
            except ModelError as exc:
                raise SpecError(f"--system {spec.text}: {exc}") from exc
            self.whole = False
        quant = str(cfg.quantization.get("method", "fp32"))
        self.info = SystemInfo(model_id=cfg.model_id, size_bytes=cfg.size_bytes,
                               algorithmic_delay_s=spec.mode.algorithmic_delay_s,
                               random_weights=bool(cfg.random_weights), streams=not self.whole,
                               precision=f"{quant} (ONNX Runtime)",
                               notes=[f"batch = one call in the {self.latency_ms} ms mode"] if self.whole else [])

    def transcribe(self, samples: np.ndarray) -> Transcript:
        stream = self.model.stream(self.latency_ms)
        block = samples.size if self.whole else max(1, round(SAMPLE_RATE * BLOCK_S))
        steps: list[Step] = []
        unreported = 0.0  # batch: the accept call's compute, reported with the final step
        for i in range(0, samples.size, block):
            t0 = time.perf_counter()
            stream.accept(samples[i: i + block])
            dt = time.perf_counter() - t0
            if self.whole:
                unreported += dt
            else:
                steps.append(Step(min(i + block, samples.size) / SAMPLE_RATE, dt, stream.text))
        t0 = time.perf_counter()
        result = stream.finish()
        dt = time.perf_counter() - t0 + unreported
        steps.append(Step(samples.size / SAMPLE_RATE, dt, result.text))
        return Transcript(result.text, steps)


def load(spec: SystemSpec, threads: int) -> NemotronSystem:
    return NemotronSystem(spec, threads)
