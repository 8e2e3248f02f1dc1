"""`streamasr serve` / `client` / `mic` as commands: a real server process and the client against it."""

from __future__ import annotations

import json
import subprocess
import sys

import soundfile as sf
from server_process import free_port, running_server

from streamasr.cli import main


def test_serve_and_client_commands(serve_model, short_speech, tmp_path, s16_roundtrip):
    with running_server(serve_model.directory, "--threads", "1", "--endpoint-ms", "0", "--max-streams", "12",
                        stdout=subprocess.PIPE) as (proc, port):
        wav = tmp_path / "a.wav"
        sf.write(wav, short_speech[0], 16000, subtype="PCM_16")
        out = subprocess.run([sys.executable, "-m", "streamasr", "client", str(wav), "--url",
                              f"ws://127.0.0.1:{port}", "--latency", "160", "--fast", "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        events = [json.loads(l) for l in out.stdout.splitlines()]
        assert events[-1]["type"] == "final"
        assert events[-1]["text"] == serve_model.transcribe(s16_roundtrip(short_speech[0]), 160).text.strip()
    # the model's default latency mode was warmed up at every batch size the server can form (up to its
    # --max-streams here) before it took streams
    assert "warmed up batches of 1-12 streams at" in proc.stdout.read().decode()


def test_serve_rejects_bad_scheduling_options(serve_model, capsys):
    model = ["serve", "--model", str(serve_model.directory), "--allow-random", "--port", str(free_port())]
    assert main(model + ["--batch-wait", "2"]) == 2
    assert "--batch-wait is a fraction of a chunk" in capsys.readouterr().err
    for bad in ("0", "1.5"):
        assert main(model + ["--max-load", bad]) == 2
        assert "--max-load is a fraction of the scheduler's time" in capsys.readouterr().err
    assert main(model + ["--busy-batch-wait", "0.1"]) == 2  # below --batch-wait (0.25)
    assert "--busy-batch-wait is a fraction of a chunk between --batch-wait" in capsys.readouterr().err
    assert main(model + ["--warmup-batches", "-1"]) == 2
    assert "--warmup-batches" in capsys.readouterr().err
    assert main(model + ["--warmup-latency", "fast"]) == 2
    assert "--warmup-latency takes latency modes" in capsys.readouterr().err
    assert main(model + ["--warmup-latency", "333"]) == 2
    assert "unknown latency mode 333" in capsys.readouterr().err


def test_client_errors_are_one_line(capsys):
    assert main(["client", "--url", f"ws://127.0.0.1:{free_port()}", "/nonexistent.wav"]) == 2
    assert "no such file" in capsys.readouterr().err
    import os
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "x.wav")
        sf.write(wav, np.zeros(1600, np.float32), 16000)
        assert main(["client", "--url", f"ws://127.0.0.1:{free_port()}", "--fast", wav]) == 2
        assert "cannot reach the server" in capsys.readouterr().err
    assert main(["client"]) == 2


def test_mic_path_with_a_file_and_without_device(serve_model, short_speech, tmp_path, capsys):
    wav = tmp_path / "b.wav"
    sf.write(wav, short_speech[1], 16000)
    assert main(["mic", "--model", str(serve_model.directory), "--allow-random", "--latency", "160",
                 "--endpoint-ms", "0", "--file", str(wav)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out and out[-1] == serve_model.transcribe(short_speech[1].astype("float32"), 160).text.strip()
    # no audio device here (no sounddevice/PortAudio, or no input): one clear line, exit 2
    rc = main(["mic", "--model", str(serve_model.directory), "--allow-random"])
    err = capsys.readouterr().err
    if rc == 2:
        assert "microphone" in err or "audio input device" in err
