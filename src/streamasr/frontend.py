"""Streaming log-mel front end in numpy, equal to NeMo's preprocessor on the whole file.

Everything is computed in float32 like NeMo's torch front end: in near-silent bins a float64 STFT differs
from NeMo's by ~2e-4 in log-mel, more than the rounding of matching float32 arithmetic (~2e-6).

NeMo computes features for a whole utterance: pre-emphasis, a centred STFT (zero padding of n_fft/2 on
both sides), power spectrum, Slaney mel filterbank, ln(x + 2^-24), and the frame at index
floor(N / hop) (one past the valid length) forced to `pad_value`. This class produces exactly those
frames incrementally: frame t is emitted as soon as every sample its window weights with a non-zero
value has arrived, and pre-emphasis and framing are continuous across `accept()` calls of any size.
"""

from __future__ import annotations

import numpy as np

from streamasr.model_config import FrontendConfig


class MelProjection:
    """The mel filterbank applied to power spectra, summing only each band's non-zero weights.

    A Slaney filterbank is a band of a few neighbouring bins per mel channel: about 500 of its 33,000 weights
    are non-zero. Summing those directly costs what the dense product costs on a few frames, and it never
    calls BLAS, whose threads (OpenBLAS splits larger products) spin-wait after each call and would take a
    core from ONNX Runtime's pool between encoder steps; guarding every call with a thread limit cost more
    than the product. Sums run in float32, bin order, like the dense product up to rounding."""

    def __init__(self, filterbank: np.ndarray):
        """`filterbank` (n_mels, n_bins)."""
        fb = np.asarray(filterbank, dtype=np.float32)
        mels, bins = np.nonzero(fb)  # row-major: grouped by mel channel, bins ascending
        self.n_mels = fb.shape[0]
        self._bins = bins
        self._weights = fb[mels, bins]
        counts = np.bincount(mels, minlength=self.n_mels)
        self._starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        self._filled = counts > 0  # reduceat returns a neighbour's value for an empty band: those stay 0
        self._all_filled = bool(self._filled.all())

    def __call__(self, power: np.ndarray) -> np.ndarray:
        """(frames, n_bins) -> (frames, n_mels)."""
        if self._weights.size == 0:
            return np.zeros((power.shape[0], self.n_mels), dtype=np.float32)
        sums = np.add.reduceat(power[:, self._bins] * self._weights, self._starts[self._filled], axis=1)
        if self._all_filled:
            return sums
        out = np.zeros((power.shape[0], self.n_mels), dtype=np.float32)
        out[:, self._filled] = sums
        return out


class StreamingLogMel:
    """Incremental log-mel features; one instance per audio stream."""

    def __init__(self, cfg: FrontendConfig, window: np.ndarray, filterbank: np.ndarray):
        self.cfg = cfg
        pad = (cfg.n_fft - cfg.win_length) // 2
        full_window = np.zeros(cfg.n_fft, dtype=np.float32)
        full_window[pad : pad + cfg.win_length] = window
        self._window = full_window
        nonzero = np.flatnonzero(full_window)
        # a frame's last sample with non-zero weight, relative to the frame's centre sample
        self._last_needed = int(nonzero[-1]) - cfg.n_fft // 2
        self._project = MelProjection(np.asarray(filterbank, dtype=np.float32).reshape(cfg.n_mels, -1))
        self._half = cfg.n_fft // 2
        # pre-emphasised samples from absolute index `_offset` on (older ones are no longer needed)
        self._buf = np.zeros(0, dtype=np.float32)
        self._offset = 0
        self._prev_sample = 0.0
        self._n_samples = 0
        self._next_frame = 0
        self._finished = False

    @property
    def samples_seen(self) -> int:
        return self._n_samples

    @property
    def frames_emitted(self) -> int:
        return self._next_frame

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Add float samples in [-1, 1]; return the (n, n_mels) float32 frames that became complete."""
        self.add(samples)
        return self.emit()

    def add(self, samples: np.ndarray) -> int:
        """Buffer float samples in [-1, 1] without computing frames; returns how many complete frames wait
        for `emit`. A caller that needs frames only in chunks computes each chunk's in one pass."""
        if self._finished:
            raise RuntimeError("accept() after finish()")
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size:
            # the sample before the stream counts as 0, which gives NeMo's y[0] = x[0]
            y = x - np.float32(self.cfg.preemph) * np.concatenate((np.float32([self._prev_sample]), x[:-1]))
            self._prev_sample = float(x[-1])
            self._buf = np.concatenate((self._buf, y))
            self._n_samples += x.size
        return self._complete_frames() - self._next_frame

    def emit(self) -> np.ndarray:
        """The (n, n_mels) float32 frames complete since the last call."""
        return self._emit(self._complete_frames())

    def _complete_frames(self) -> int:
        """Frames whose every sample with non-zero window weight has arrived: frame t needs samples up to
        hop*t + last_needed."""
        hop = self.cfg.hop_length
        ready = (self._n_samples - 1 - self._last_needed) // hop + 1 if self._n_samples > self._last_needed else 0
        return max(ready, self._next_frame)

    def finish(self) -> np.ndarray:
        """End of stream: the remaining valid frames, then NeMo's trailing `pad_value` frame."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        valid = self._n_samples // self.cfg.hop_length
        frames = self._emit(max(valid, self._next_frame))
        tail = np.full((1, self.cfg.n_mels), self.cfg.pad_value, dtype=np.float32)
        self._next_frame += 1
        return np.concatenate((frames, tail)) if frames.size else tail

    def _emit(self, end_frame: int) -> np.ndarray:
        start = self._next_frame
        if end_frame <= start:
            return np.zeros((0, self.cfg.n_mels), dtype=np.float32)
        hop, n_fft, half = self.cfg.hop_length, self.cfg.n_fft, self._half
        first = start * hop - half  # absolute index of the first sample of frame `start`
        last = (end_frame - 1) * hop - half + n_fft  # one past the last sample of the last frame
        seg = np.zeros(last - first, dtype=np.float32)
        lo = max(first, self._offset)
        hi = min(last, self._offset + self._buf.size)
        if hi > lo:
            seg[lo - first : hi - first] = self._buf[lo - self._offset : hi - self._offset]
        frames = np.lib.stride_tricks.sliding_window_view(seg, n_fft)[::hop]
        spec = np.fft.rfft(frames * self._window, axis=-1)
        power = np.abs(spec) ** np.float32(self.cfg.mag_power)  # sqrt then square, as NeMo
        projected = self._project(power)
        mel = np.log(projected + np.float32(self.cfg.log_zero_guard))
        self._next_frame = end_frame
        # drop samples no future frame can use
        keep_from = end_frame * hop - half
        if keep_from > self._offset:
            cut = min(keep_from - self._offset, self._buf.size)
            self._buf = self._buf[cut:]
            self._offset += cut
        return mel.astype(np.float32)


def log_mel(cfg: FrontendConfig, window: np.ndarray, filterbank: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Whole-utterance features (n_frames, n_mels), identical to streaming the same samples."""
    fe = StreamingLogMel(cfg, window, filterbank)
    head = fe.accept(samples)
    return np.concatenate((head, fe.finish()))
