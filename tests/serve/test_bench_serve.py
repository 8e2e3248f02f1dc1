"""`streamasr bench serve`: a real server process, N real-time WebSocket clients, on the tiny random model.

This checks that the load benchmark measures what it says (every chunk answered and timed, the batches the
server really ran, CPU of server and clients apart), not how fast anything is.
"""

from __future__ import annotations

import json

from streamasr.cli import main


def test_bench_serve_reports_latency_batching_and_cpu(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--model", str(tiny_model_dir), "--streams", "1,3", "--latency", "160",
               "--duration", "3", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "largest N with p95 < 160 ms:" in text and "client CPU %" in text
    data = json.loads(out.read_text())
    assert data["latency_ms"] == 160
    rows = data["rows"]
    assert [r["streams"] for r in rows] == [1, 3]
    for r in rows:
        assert r["errors"] == 0
        # 3 s at 160 ms: about 18 chunks per stream, each answered with a timed partial
        assert 15 * r["streams"] <= r["chunks"] <= 20 * r["streams"]
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["rtfx"] > 1  # the tiny model keeps up with real time many times over
        assert r["cpu_percent"] > 0 and r["clients_cpu_percent"] > 0 and r["peak_rss_mb"] > 50
    assert rows[0]["mean_batch"] == 1.0  # one stream can only ever batch with itself
    assert 1.0 <= rows[1]["mean_batch"] <= 3.0
    assert all(r["refused"] == 0 for r in rows)  # --max-load 1 by default: every client is served


def test_bench_serve_counts_the_clients_the_server_refused(tiny_model_dir, tmp_path, capsys):
    """Clients joining one after another against a server whose --max-load is below what one stream costs:
    the first is served, the later ones are refused (1013) and counted apart from errors."""
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--model", str(tiny_model_dir), "--streams", "3", "--latency", "160",
               "--duration", "2", "--threads", "1", "--join-every", "0.7", "--max-load", "0.0001",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "a client joining every 0.7 s" in text and "largest N with p95 < 160 ms: none" in text
    (row,) = json.loads(out.read_text())["rows"]
    assert row["refused"] == 2 and row["errors"] == 0
    assert 10 <= row["chunks"] <= 14  # the one admitted stream's 2 s, every chunk answered
    assert main(["bench", "serve", "--model", str(tiny_model_dir), "--max-load", "0"]) == 2


def test_bench_soak_keeps_finals_coming_with_flat_memory(tiny_model_dir, tmp_path, capsys):
    """The short version of the hour-long soak (docs/benchmarks.md): 24 s of looped speech on one stream."""
    out = tmp_path / "soak.json"
    rc = main(["bench", "soak", "--model", str(tiny_model_dir), "--duration", "24", "--window", "8",
               "--latency", "160", "--threads", "1", "--json", str(out)])
    assert rc == 0
    assert "last window against the first" in capsys.readouterr().out
    data = json.loads(out.read_text())
    windows = data["windows"]
    assert len(windows) == 3
    for w in windows:
        assert w["errors"] == 0 and w["finals"] > 0, w
        assert 40 <= w["chunks"] <= 52  # 8 s at 160 ms: 50 chunks, each answered with a timed partial
    assert windows[-1]["rss_mb"] - windows[0]["rss_mb"] < 20
    assert windows[-1]["p50_ms"] < 3 * windows[0]["p50_ms"] + 50
