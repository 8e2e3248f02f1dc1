"""`streamasr client FILE | head`: when the reader closes our stdout, the client stops and exits 0 without a
traceback, an error line, or Python's "Exception ignored ... BrokenPipeError" at exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: the client's stdout into `head`, its stderr into a file, the client's own exit status as the shell's ($4, the
#: output option, unquoted: empty for plain text)
PIPED_CLIENT = '"$1" -m streamasr client "$2" --url "$3" $4 2>"$5" | head -n "$6"; exit "${PIPESTATUS[0]}"'


@pytest.mark.parametrize("output, keep_lines", [("--json", 1), ("", 0)])
def test_client_into_a_closed_pipe_exits_quietly(make_server, speech_manifest, tmp_path, output, keep_lines):
    """Paced in real time, so the reader (head) is gone long before the client's later writes: with one line
    kept the JSON partials that follow hit the closed pipe; with none, the plain-text final does."""
    _, url = make_server()
    audio = next(str(it["path"]) for it in speech_manifest if it["audio"].startswith("arctic"))
    stderr_file = tmp_path / "client.err"
    proc = subprocess.run(["bash", "-c", PIPED_CLIENT, "piped-client", sys.executable, audio, url, output,
                           str(stderr_file), str(keep_lines)], capture_output=True, text=True, timeout=60, check=False)
    err = stderr_file.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err and "error" not in err, err
    lines = proc.stdout.splitlines()
    assert len(lines) == keep_lines
    if keep_lines:
        assert json.loads(lines[0])["type"] in ("partial", "final")
