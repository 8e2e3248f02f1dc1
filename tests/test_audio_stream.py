"""Audio files read in blocks and resampled as a stream (`iter_audio`, what `transcribe FILE` uses): the same
samples and transcript as the whole-file `read_audio`, the same one-line errors, and a peak memory that does
not grow with the file's length.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamasr.audio import iter_audio, read_audio, resample
from streamasr.errors import AudioError

#: runs `python -m streamasr ARGS` and reports the process's own peak RSS (VmHWM, kB) on stderr's last line.
#: Not ru_maxrss: RUSAGE_CHILDREN adds up every child the test session ran, and a child's RUSAGE_SELF keeps
#: the high-water mark of the pytest process it was forked from across exec; VmHWM belongs to the new image.
PEAK_RSS_WRAPPER = (
    "import runpy, sys\n"
    "sys.argv = ['streamasr', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('streamasr', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "    print('peak_rss_kb', hwm[0], file=sys.stderr)\n"
)


@pytest.fixture(scope="module")
def stereo_44k(speech, tmp_path_factory) -> Path:
    """A real utterance at 44.1 kHz, stereo with different channels (so the mix-down is exercised)."""
    x = resample(speech["jfk_inaugural_1961.wav"], 16000, 44100)
    path = tmp_path_factory.mktemp("audio") / "jfk_44k_stereo.wav"
    sf.write(path, np.stack([0.9 * x, 0.5 * x + 0.01], axis=1), 44100, subtype="PCM_16")
    return path


def run_cli(*args: str, wrapper: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", wrapper, *args] if wrapper else [sys.executable, "-m", "streamasr", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize("block_s", [0.1, 0.013, 1.0])
def test_streamed_samples_match_the_whole_file_read(stereo_44k, block_s):
    whole = read_audio(stereo_44k, 16000)
    blocks = list(iter_audio(stereo_44k, 16000, block_s=block_s))
    assert all(b.dtype == np.float32 and b.ndim == 1 and b.size for b in blocks)
    streamed = np.concatenate(blocks)
    assert streamed.size == whole.size
    assert np.abs(streamed - whole).max() < 1e-5


def test_streamed_file_gives_the_same_transcript(stereo_44k, tiny_model_dir, tmp_path):
    # the whole-file path's samples, stored at the model's rate so the CLI reads them back unchanged
    reference = tmp_path / "reference_16k.wav"
    sf.write(reference, read_audio(stereo_44k, 16000), 16000, subtype="FLOAT")
    common = ("--model", str(tiny_model_dir), "--allow-random", "--json", "--latency", "160")
    streamed, whole = (run_cli("transcribe", str(p), *common) for p in (stereo_44k, reference))
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert whole.returncode == 0, whole.stderr.decode()
    a, b = json.loads(streamed.stdout), json.loads(whole.stdout)
    assert a["token_ids"] and a["token_ids"] == b["token_ids"]
    assert a["audio_s"] == b["audio_s"]


@pytest.mark.parametrize("case", ["missing", "empty", "not_audio", "directory"])
def test_bad_files_fail_at_once_with_read_audios_message(tmp_path, case):
    path = tmp_path / "x.wav"
    if case == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif case == "not_audio":
        path.write_text("this is not audio\n")
    elif case == "directory":
        path = tmp_path
    with pytest.raises(AudioError) as expected:
        read_audio(path)
    with pytest.raises(AudioError) as got:
        iter_audio(path)  # raised by the call itself, before any block is asked for
    assert str(got.value) == str(expected.value)
    assert "\n" not in str(got.value)


def test_truncated_file_reads_what_is_there(stereo_44k, tmp_path):
    cut = tmp_path / "cut.wav"
    data = stereo_44k.read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 1])  # mid-sample, header still promising the whole length
    whole = read_audio(cut)
    streamed = np.concatenate(list(iter_audio(cut)))
    assert streamed.size == whole.size and np.abs(streamed - whole).max() < 1e-5


def _write_tone(path: Path, seconds: int, rate: int = 48000) -> None:
    """A 48 kHz stereo WAV written 10 s at a time, so the test itself never holds the file."""
    rng = np.random.default_rng(0)
    t = np.arange(rate * 10) / rate
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            x = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
            f.write(np.stack([x, -x], axis=1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from Linux's /proc")
def test_transcribe_memory_does_not_grow_with_file_length(tiny_model_dir, tmp_path):
    peaks_mb = {}
    for seconds in (60, 360):
        path = tmp_path / f"tone_{seconds}s.wav"
        _write_tone(path, seconds)
        proc = run_cli("transcribe", str(path), "--model", str(tiny_model_dir), "--allow-random", "--json",
                       wrapper=PEAK_RSS_WRAPPER)
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert json.loads(proc.stdout)["audio_s"] == pytest.approx(seconds, abs=0.01)
        peaks_mb[seconds] = int(err.splitlines()[-1].split()[-1]) / 1024
        path.unlink()
    # a whole-file read of the 6 minutes would add ~280 MB (the file as float32, its mono mix, the resampled copy)
    assert peaks_mb[360] - peaks_mb[60] < 30, peaks_mb
