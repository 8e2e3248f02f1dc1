"""Streaming Silero VAD on ONNX Runtime: speech probability per 32 ms window, and speech ends for endpointing.

The model is the `silero_vad.onnx` that the `silero-vad` package ships as package data. That package's own
Python code imports torch, and its declared dependencies pull torch in, so streamasr never imports it: the
model file is located with `importlib.util.find_spec` (which reads the package's location without running
its `__init__`) and run with onnxruntime directly. Install it with `pip install --no-deps 'silero-vad>=6,<7'`.

The v5/v6 model is a recurrent network over 512-sample windows at 16 kHz. Each call takes the window with
the last 64 samples of the previous window in front of it (zeros before the first), the recurrent `state`
(2, batch, 128) and the rate `sr`; it returns the window's speech probability and the next state. Both the
context and the state belong to the stream, so a `SileroVAD` is per stream while the ORT session is one per
process (single-threaded: one window is ~0.08 ms of work, so a thread pool would cost more than it saves).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamasr.errors import StreamASRError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

SAMPLE_RATE = 16000
WINDOW = 512  # samples per model call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window prepended to each call
STATE_SHAPE = (2, 1, 128)
MODEL_FILE = "silero_vad.onnx"
INSTALL_HINT = "pip install --no-deps 'silero-vad>=6,<7'"

_session: InferenceSession | None = None
_session_lock = threading.Lock()


def silero_model_path() -> Path:
    """The packaged ONNX model, found without importing `silero_vad` (whose __init__ imports torch)."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / MODEL_FILE
        if path.is_file():
            return path
    if not locations:
        raise StreamASRError(f"--vad silero needs the silero-vad package: {INSTALL_HINT}")
    raise StreamASRError(f"the installed silero-vad package has no data/{MODEL_FILE}; "
                         f"reinstall a version that ships it: {INSTALL_HINT}")


def silero_session() -> InferenceSession:
    """The process-wide ORT session (created on first use). `run` is thread-safe; all state is per stream."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            path = silero_model_path()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            names = {i.name for i in sess.get_inputs()} | {o.name for o in sess.get_outputs()}
            if names != {"input", "state", "sr", "output", "stateN"}:
                raise StreamASRError(f"{path} is not a Silero VAD v5/v6 model (inputs and outputs "
                                     f"{sorted(names)}); {INSTALL_HINT}")
            _session = sess
        return _session


class SileroVAD:
    """One stream's VAD: feed 16 kHz float32 pieces of any size, get the probabilities of the windows they
    complete. Window i covers samples [i*512, (i+1)*512); a piece that ends mid-window leaves the rest
    pending, so the probabilities never depend on how the audio was cut into pieces."""

    def __init__(self, session: InferenceSession | None = None):
        self.session = session if session is not None else silero_session()
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._buf = np.zeros(CONTEXT + WINDOW, np.float32)  # [context | window being filled]
        self._filled = 0
        self.windows = 0  # windows processed so far

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities (float32) of the windows this piece completes, in order."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        probs = []
        pos = 0
        while pos < x.size:
            take = min(WINDOW - self._filled, x.size - pos)
            self._buf[CONTEXT + self._filled : CONTEXT + self._filled + take] = x[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == WINDOW:
                probs.append(self._run())
        return np.asarray(probs, dtype=np.float32)

    def _run(self) -> float:
        out, self._state = self.session.run(["output", "stateN"], {"input": self._buf[None, :],
                                                                   "state": self._state, "sr": self._sr})
        self._buf[:CONTEXT] = self._buf[-CONTEXT:]  # this window's tail is the next call's context
        self._filled = 0
        self.windows += 1
        return float(out.reshape(-1)[0])


@dataclass(frozen=True)
class VadRule:
    """When speech has ended, from window probabilities (the same hysteresis as Silero's own iterator).

    A window is speech at p >= threshold. After speech, a silence run starts at a window with
    p < threshold - 0.15 (at least 0.01) and goes on until a window is speech again. Windows between the two
    thresholds extend a started run but neither start nor break one, so a probability hovering around the
    threshold (breaths, soft consonants) does not flicker between speech and silence. A run that reaches
    `silence_ms` is a speech end; the next speech end needs speech again.
    """

    threshold: float = 0.5
    silence_ms: int = 800

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)

    @property
    def silence_windows(self) -> int:
        return max(1, int(np.ceil(self.silence_ms / 1000 * SAMPLE_RATE / WINDOW)))


class SpeechEnds:
    """A stream's VAD plus the `VadRule`: audio pieces in, the sample positions of speech ends out.

    The position returned is the end of the window that completed the silence run, i.e. the moment the rule
    was met (speech end + `silence_ms`, rounded up to a window), not the speech end itself: the session cuts
    the utterance there, and a word's last tokens, which the recognizer emits a few frames after the sound,
    still fall before the cut."""

    def __init__(self, rule: VadRule, vad: SileroVAD | None = None):
        self.rule = rule
        self.vad = vad if vad is not None else SileroVAD()
        self._in_speech = False
        self._quiet = 0  # non-speech windows since the last speech window

    def accept(self, samples: np.ndarray) -> list[int]:
        ends = []
        first = self.vad.windows
        for i, p in enumerate(self.vad.accept(samples)):
            if p >= self.rule.threshold:
                self._in_speech, self._quiet = True, 0
            elif self._in_speech and (self._quiet or p < self.rule.neg_threshold):
                self._quiet += 1
                if self._quiet >= self.rule.silence_windows:
                    ends.append((first + i + 1) * WINDOW)
                    self._in_speech, self._quiet = False, 0
        return ends
