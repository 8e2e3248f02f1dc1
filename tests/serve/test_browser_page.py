"""The browser page at `/`, end to end in real headless Chromium with a fake microphone playing a real utterance.

Unit tests of the protocol cannot catch what breaks only in a browser: the AudioWorklet (its resampling
from the context's 44.1/48 kHz to 16 kHz, the int16 conversion, its block posting), the Web Audio graph
actually running, the start/stop buttons and the latency selector. So this test drives Debian's `chromium`
with `--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=<wav>` (Chromium plays the WAV,
looped, as the microphone) and `--use-fake-ui-for-media-stream` (auto-grants the permission prompt),
picks a non-default latency in the page's own <select>, presses Start and waits for recognized text.

It then checks what really happened on the server side, not just that some text showed up:
- the server made exactly one stream, at the latency picked in the page (a spy on the scheduler),
- the audio the server received IS the WAV: one loop period of it correlates with the file at the right
  period, which fails if the worklet resamples to the wrong rate, drops blocks or mangles the int16s,
- every text the page shows was sent by the server for that stream, /metrics counts the stream and its
  audio, the page shows no error, the browser console has no errors, and Stop ends the stream with a final
  and a normal close (1000).
A screenshot is saved to the test's tmp dir and, if set, to $STREAMASR_ARTIFACTS.

Why Selenium and not Playwright: Playwright drives Chromium over CDP with a protocol client pinned to the
one Chromium build it downloads (which cannot be downloaded here) and only supports that build; Debian's
`chromium-driver` is built from the same source as Debian's `chromium`, so the W3C WebDriver session is
version-matched by construction, whatever version Debian ships. We pass both paths explicitly, so
Selenium Manager never tries to download anything.

Skips only when chromium/chromedriver/selenium are missing outside CI; with `CI` set (where .ci/run
installs them) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf

WAIT_TEXT_S = 60.0  # bound on the wait for the first recognized text
UTTERANCE = "arctic_slt_a0001.wav"  # a short (3.4 s) clean utterance from the shared speech
PAD_S = 1.0  # silence after it in the fake-microphone WAV, so each loop ends with a pause (an endpoint)
MIC_RATE = 48000  # the fake microphone's WAV rate: above 16 kHz, so that the page has to resample
TONE_HZ, TONE_AMP = 12000.0, 0.1  # above 8 kHz: a resampler without a real low-pass folds it to 4 kHz


def _find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) or fail/skip by the policy in the module docstring."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
        missing_selenium = False
    except ImportError:
        missing_selenium = True
    missing = [name for name, gone in (("chromium", chromium is None), ("chromedriver", driver is None),
                                       ("selenium", missing_selenium)) if gone]
    if missing:
        reason = f"{', '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver; " \
                 f"pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    # Debian's /usr/bin/chromium is a shell launcher; prefer the real binary it execs when it is there
    real = Path("/usr/lib/chromium/chromium")
    if Path(chromium).resolve() == Path("/usr/bin/chromium") and real.is_file():
        chromium = str(real)
    return chromium, driver


@dataclass
class StreamSpy:
    """What the server really did with the page's streams, recorded on the server side."""

    sessions: list = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)

    def received(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    def texts(self, kind: str) -> set[str]:
        return {e["text"] for e in list(self.events) if e.get("type") == kind}


def _spy_on(server) -> StreamSpy:
    """Record every session the server's scheduler gets: its latency, the audio fed to it, the events it emits."""
    spy = StreamSpy()
    add = server.scheduler.add

    def recording_add(session) -> None:
        emit, feed = session.emit, session.feed

        def spy_emit(event: dict) -> None:
            spy.events.append(dict(event))
            emit(event)

        def spy_feed(samples: np.ndarray, *args: Any, **kw: Any) -> None:
            spy.audio.append(np.array(samples, np.float32, copy=True))
            feed(samples, *args, **kw)

        session.emit, session.feed = spy_emit, spy_feed
        spy.sessions.append(session)
        add(session)

    server.scheduler.add = recording_add
    return spy


def _metrics(http_base: str) -> dict[str, float]:
    """Each metric's value, a labeled family (per protocol) summed over its labels."""
    body = urllib.request.urlopen(f"{http_base}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(\w+)(?:\{[^}]*\})? ([-+.\deE]+)$", body, re.M):
        out[m[1]] = out.get(m[1], 0.0) + float(m[2])
    return out


def _best_match(received: np.ndarray, reference: np.ndarray, window: int) -> float:
    """The best normalized correlation of any `window`-sample stretch of `received` with the looped reference.

    Chromium loops the fake-microphone file but not with an exact period (it loses a few hundred samples
    at each wrap), so stretches are matched one by one rather than assuming periodicity. A stretch only
    matches if the page delivered the samples at the right rate: 0.05% off drifts 16 samples in 2 s."""
    looped = np.concatenate([reference, reference])
    n = 1 << int(np.ceil(np.log2(looped.size + window)))
    spectrum = np.fft.rfft(looped, n)
    energy = np.concatenate([[0.0], np.cumsum(looped.astype(np.float64) ** 2)])
    best = 0.0
    for start in range(0, received.size - window + 1, window // 8):
        seg = received[start: start + window]
        if np.linalg.norm(seg) < 1e-3 * np.sqrt(window):
            continue  # the pause: nothing to match
        c = np.fft.irfft(spectrum * np.conj(np.fft.rfft(seg, n)), n)[: looped.size - window + 1]
        norms = np.sqrt(energy[window:] - energy[:-window])[: c.size] * np.linalg.norm(seg)
        best = max(best, float(np.max(c / np.maximum(norms, 1e-9))))
    return best


def _tone_amplitude(x: np.ndarray, hz: float, rate: int = 16000) -> float:
    """Amplitude of a steady tone at `hz` in `x` (Hann-windowed FFT, the largest bin within 10 Hz)."""
    w = np.hanning(x.size)
    spectrum = np.abs(np.fft.rfft(x * w)) * 2 / w.sum()
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spectrum[np.abs(freqs - hz) <= 10].max())


def _wait(what: str, cond: Callable[[], Any], timeout: float, diagnose: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; {diagnose()}")


def _save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "chromium could not take a screenshot"
    assert path.stat().st_size > 1000
    artifacts = os.environ.get("STREAMASR_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
        path = Path(artifacts) / name
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def fake_mic_wav(speech, tmp_path) -> tuple[Path, np.ndarray]:
    """(WAV for Chromium's fake microphone, the 16 kHz speech in it).

    The WAV is the utterance and a pause, upsampled to 48 kHz, plus a steady 12 kHz tone, as mono 16-bit
    PCM (the format Chromium's fake capture reads). The page must deliver the speech and drop the tone."""
    import soxr

    x = np.concatenate([speech[UTTERANCE], np.zeros(int(16000 * PAD_S), np.float32)])
    hi = soxr.resample(x, 16000, MIC_RATE, quality="VHQ")
    hi = hi + TONE_AMP * np.sin(2 * np.pi * TONE_HZ / MIC_RATE * np.arange(hi.size))
    assert np.abs(hi).max() < 1
    path = tmp_path / "fake_mic.wav"
    sf.write(path, hi, MIC_RATE, subtype="PCM_16")
    return path, x


@pytest.fixture
def chromium_driver(fake_mic_wav):
    """Headless Chromium whose microphone plays `fake_mic_wav`, permission prompts auto-accepted."""
    chromium, driver_path = _find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new",
                "--no-sandbox",  # root and containers without user namespaces; the page is our own
                "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,600", "--mute-audio",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_mic_wav[0]}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_recognizes_the_fake_microphone(make_server, chromium_driver, fake_mic_wav, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = chromium_driver
    wav = fake_mic_wav[1]
    st, ws_base = make_server()
    http_base = ws_base.replace("ws://", "http://")
    spy = _spy_on(st.server)
    health = json.loads(urllib.request.urlopen(f"{http_base}/health", timeout=10).read())
    modes, default = health["latency_modes"], st.server.model.config.encoder.default_latency_ms
    others = [m for m in modes if m != default]
    assert others, f"the test model needs 2+ latency modes to test the selector, has {modes}"
    latency = min(others)

    driver.get(http_base + "/")
    el = driver.find_element
    assert el(By.ID, "status").text == "idle"
    selector = Select(el(By.ID, "latency"))
    assert [int(o.get_attribute("value")) for o in selector.options] == modes
    assert int(selector.first_selected_option.get_attribute("value")) == default
    selector.select_by_value(str(latency))
    el(By.ID, "start").click()

    def shown() -> tuple[str, list[str]]:
        """(partial line, final paragraphs) as the page shows them, read in one go."""
        partial, finals = driver.execute_script(
            "return [document.getElementById('partial').innerText,"
            " Array.from(document.querySelectorAll('#finals p'), (p) => p.innerText)];")
        return partial.strip(), [f.strip() for f in finals]

    def diagnose() -> str:
        return (f"page status {el(By.ID, 'status').text!r}, shown {shown()}, server streams "
                f"{[s.latency_ms for s in spy.sessions]}, audio received {spy.received().size / 16000:.2f} s, "
                f"events {spy.events[-3:]}, console {driver.get_log('browser')}")

    _wait("recognized text on the page", lambda: shown()[0] or any(shown()[1]), WAIT_TEXT_S, diagnose)
    assert el(By.ID, "status").text == "listening"
    assert not el(By.ID, "error").is_displayed(), el(By.ID, "error").text
    assert not el(By.ID, "start").is_enabled() and el(By.ID, "stop").is_enabled()
    assert not el(By.ID, "latency").is_enabled()  # the mode cannot change under a running stream
    # the browser really captures above 16 kHz (else the tone never reaches the page's resampler)
    assert driver.execute_script("return ctx.sampleRate") > 2 * TONE_HZ
    partial, finals = shown()
    # what the page shows is what the server sent for this stream
    assert not partial or partial in spy.texts("partial"), (partial, spy.texts("partial"))
    assert set(finals) <= spy.texts("final"), (finals, spy.texts("final"))

    # the audio that reached the server is the microphone's speech, at the right rate, without the tone
    _wait("a full loop of the fake microphone at the server", lambda: spy.received().size >= wav.size,
          WAIT_TEXT_S, diagnose)
    received = spy.received()
    corr = _best_match(received, wav, 2 * 16000)
    assert corr > 0.95, f"the audio the page sent does not match the microphone's (correlation {corr:.3f})"
    alias = _tone_amplitude(received, 16000 - TONE_HZ)
    print(f"received {received.size / 16000:.2f} s: best 2 s correlation with the speech {corr:.4f}, "
          f"{TONE_HZ:g} Hz tone folded to {alias / TONE_AMP:.2e} of its amplitude")
    assert alias < TONE_AMP * 0.01, f"the {TONE_HZ:g} Hz tone folded into the speech band at {alias:.4f} " \
                                    f"(the resampler's low-pass lets it through: {alias / TONE_AMP:.1%})"
    _save_screenshot(driver, tmp_path, "browser_page_live.png")

    # the server saw exactly this one stream, at the latency picked in the page
    assert [s.latency_ms for s in spy.sessions] == [latency]
    m = _metrics(http_base)
    assert m["streamasr_streams_total"] == 1 and m["streamasr_active_streams"] == 1
    assert m["streamasr_streams_rejected_total"] == 0 and m["streamasr_client_errors_total"] == 0
    assert m["streamasr_audio_seconds_total"] > 1.0

    # Stop: the server finishes the stream (a final), closes normally, and the page is ready again
    el(By.ID, "stop").click()
    _wait("the stream to close", lambda: el(By.ID, "status").text.startswith("closed"), 30, diagnose)
    assert el(By.ID, "status").text == "closed (1000)"
    assert el(By.ID, "start").is_enabled() and not el(By.ID, "stop").is_enabled()
    partial, finals = shown()
    assert partial == "" and finals and all(finals), finals
    assert set(finals) <= spy.texts("final")
    assert spy.events[-1]["type"] == "final"
    # the handler releases the stream right after the close handshake the page has just seen
    _wait("the server to release the stream", lambda: _metrics(http_base)["streamasr_active_streams"] == 0, 10,
          diagnose)
    path = _save_screenshot(driver, tmp_path, "browser_page.png")
    assert path.is_file()

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
