"""The numpy streaming front end against NeMo's preprocessor, and its continuity across accept() sizes.

Tolerance: NeMo's float32 STFT runs on MKL; in near-silent bins (log-mel below -14, power under 1e-6) its
own rounding error against exact arithmetic reaches 2e-4, and no other FFT reproduces MKL's rounding. So
we require 1e-4 wherever the bin is not near silence, and 3e-4 (NeMo's own error) in those bins.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_pieces import pieces

from streamasr.convert.reference_features import (
    nemo_window_and_filterbank,
    slaney_mel_filterbank,
)
from streamasr.frontend import MelProjection, StreamingLogMel, log_mel
from streamasr.model_config import FrontendConfig

CFG = FrontendConfig()
NEAR_SILENCE = -14.0


def assert_close_to_nemo(ours: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(ours - ref)
    loud = ref > NEAR_SILENCE
    assert diff[loud].max() < 1e-4, f"max diff {diff[loud].max():.2e} in bins above {NEAR_SILENCE}"
    assert diff.max() < 3e-4, f"max diff {diff.max():.2e}"
    assert diff.mean() < 2e-6


@pytest.fixture(scope="module")
def nemo_preprocessor():
    import torch
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    torch.set_float32_matmul_precision("highest")
    pre = AudioToMelSpectrogramPreprocessor(sample_rate=16000, normalize="NA", window_size=0.025, window_stride=0.01,
                                            window="hann", features=128, n_fft=512, log=True, frame_splicing=1,
                                            dither=0.0, pad_to=0, pad_value=0.0)
    return pre.eval()


def nemo_features(pre, samples: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(samples.astype(np.float32))[None]
    with torch.no_grad():
        feats, _ = pre(input_signal=x, length=torch.tensor([samples.size]))
    return feats[0].numpy().T  # (frames, mels), every frame NeMo's streaming buffer feeds


def window_and_fb(pre):
    fb = pre.featurizer.fb.detach().numpy().reshape(128, -1)
    return pre.featurizer.window.detach().numpy(), fb


@pytest.mark.parametrize("name", ["jfk_inaugural_1961.wav", "arctic_slt_a0005.wav", "speech_commands_yes_no_go_stop.wav"])
def test_log_mel_equals_nemo_on_whole_file(nemo_preprocessor, speech, name):
    window, fb = window_and_fb(nemo_preprocessor)
    ours = log_mel(CFG, window, fb, speech[name])
    ref = nemo_features(nemo_preprocessor, speech[name])
    assert ours.shape == ref.shape == (speech[name].size // 160 + 1, 128)
    assert_close_to_nemo(ours, ref)
    assert np.all(ours[-1] == 0.0), "NeMo pads the frame past the valid length with 0.0"
    assert ours[:-1].min() > -17 and ours[:-1].std() > 1.0, "features are real log-mel, not a constant"


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 399, 400, 401, 16000 + 37])
def test_edge_lengths_match_nemo(nemo_preprocessor, n):
    rng = np.random.default_rng(n)
    x = (0.1 * rng.standard_normal(n)).astype(np.float32)
    if n == 0:
        out = log_mel(CFG, *window_and_fb(nemo_preprocessor), x)
        assert out.shape == (1, 128) and np.all(out == 0.0)
        return
    window, fb = window_and_fb(nemo_preprocessor)
    ours = log_mel(CFG, window, fb, x)
    ref = nemo_features(nemo_preprocessor, x)
    assert ours.shape == ref.shape
    assert_close_to_nemo(ours, ref)


def test_streaming_in_random_pieces_equals_whole(speech):
    window, fb = nemo_window_and_filterbank(128)
    x = speech["ls_2412-153948-0000.wav"]
    whole = log_mel(CFG, window, fb, x)
    rng = np.random.default_rng(0)
    for max_len in (1, 7, 400, 16000 * 10):
        sizes = pieces(x[: 16000 * 2] if max_len == 1 else x, rng, max_len)
        fe = StreamingLogMel(CFG, window, fb)
        frames = [fe.accept(p) for p in sizes] + [fe.finish()]
        got = np.concatenate(frames)
        ref = whole if max_len != 1 else log_mel(CFG, window, fb, x[: 16000 * 2])
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # float32 rounding of batched FFT sizes


def test_frames_are_emitted_as_soon_as_their_window_is_complete():
    window, fb = nemo_window_and_filterbank(128)
    fe = StreamingLogMel(CFG, window, fb)
    # frame t's last non-zero window weight is at sample 160 t + 198 (symmetric Hann: zero at both ends)
    assert fe.accept(np.zeros(198, np.float32)).shape[0] == 0
    assert fe.accept(np.zeros(1, np.float32)).shape[0] == 1
    assert fe.accept(np.zeros(159, np.float32)).shape[0] == 0
    assert fe.accept(np.zeros(1, np.float32)).shape[0] == 1


def test_slaney_filterbank_matches_librosa():
    import librosa

    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=128, fmin=0, fmax=8000, norm="slaney")
    np.testing.assert_allclose(slaney_mel_filterbank(16000, 512, 128), ref, atol=1e-7)
    window, _ = nemo_window_and_filterbank(128)
    import torch

    np.testing.assert_allclose(window, torch.hann_window(400, periodic=False).numpy(), atol=1e-6)


def test_mel_projection_sums_each_band_like_the_dense_product():
    _, fb = nemo_window_and_filterbank(128)
    fb = np.asarray(fb, np.float32).reshape(128, -1)
    power = np.random.default_rng(3).random((37, fb.shape[1]), dtype=np.float32) ** 4  # spans decades
    got = MelProjection(fb)(power)
    assert got.dtype == np.float32 and got.shape == (37, 128)
    np.testing.assert_allclose(got, power @ fb.T, rtol=1e-6, atol=0)
    # a band with no weight (a filterbank with more channels than bins can make one) stays 0
    fb[5] = 0.0
    got = MelProjection(fb)(power)
    assert np.all(got[:, 5] == 0.0)
    np.testing.assert_allclose(got, power @ fb.T, rtol=1e-6, atol=0)
