"""NeMo's default STFT window and Slaney mel filterbank, for checkpoints we build ourselves.

Real checkpoints carry both as buffers (`preprocessor.featurizer.window` / `.fb`) and the converter copies
those; this is only for random-weight models. The filterbank follows librosa's `filters.mel(norm="slaney",
htk=False)`, which NeMo uses; the tests compare the two.
"""

from __future__ import annotations

import numpy as np


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters on the Slaney mel scale with area normalisation."""
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def nemo_window_and_filterbank(n_mels: int, sr: int = 16000, n_fft: int = 512, win_length: int = 400):
    """Symmetric Hann window (torch.hann_window(periodic=False)) and the Slaney filterbank, float32."""
    n = np.arange(win_length, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (win_length - 1))).astype(np.float32)
    return window, slaney_mel_filterbank(sr, n_fft, n_mels)
