"""The browser page served at `/`: microphone capture in an AudioWorklet, 16 kHz s16le over the WebSocket.

The worklet downmixes to mono and resamples the context's rate (usually 44.1/48 kHz) to 16 kHz with a
polyphase windowed-sinc low-pass (Blackman, -6 dB at 7.6 kHz, about -74 dB from 8.4 kHz), so that
content between 8 kHz and the input's Nyquist (fricatives, hiss) does not fold back into the speech band;
any input rate works (the fractional input position picks one of 256 filter phases). It converts to int16
and posts ~100 ms blocks to the page, which sends them as binary frames on
`/v1/stream?latency=...&encoding=pcm_s16le` (README "Server protocol"). Partials replace the grey line,
finals are appended as paragraphs. Stop flushes the worklet's partial block, sends `{"type": "end"}` and
releases the microphone; the server answers with the last final and closes.

The browser's voice processing (echo cancellation, noise suppression, automatic gain control) is turned
off: it is tuned for calls, not for a recognizer trained on unprocessed audio (its gain control, for one,
drives speech into clipping), and the page plays nothing that could echo. Errors go to the red #error
line; #status only says where the stream is.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamasr live</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
#partial{color:#777;min-height:1.5em} #finals p{margin:.3em 0} #status{font-size:.9em;color:#555}
#error{color:#b00020}
</style></head><body>
<h1>streamasr live recognition</h1>
<p><label>Latency <select id="latency">__OPTIONS__</select> ms</label>
<label __LANGUAGE_HIDDEN__>Language <select id="language">__LANGUAGES__</select></label>
<button id="start">Start</button> <button id="stop" disabled>Stop</button> <span id="status">idle</span></p>
<p id="error" role="alert" hidden></p>
<div id="finals"></div><div id="partial"></div>
<script>
const WORKLET = `
const OUT_RATE = 16000, PHASES = 256, BLOCK = 1600;
class Pcm16k extends AudioWorkletProcessor {
  constructor() {
    super();
    const low = Math.min(sampleRate, OUT_RATE);
    const fc = 0.475 * low / sampleRate;                   // -6 dB cutoff, cycles per input sample
    const half = Math.ceil(2.75 * sampleRate / (0.1 * low)); // Blackman: transition 5.5/taps = 0.1 * low
    const taps = 2 * half;
    this.step = sampleRate / OUT_RATE; this.half = half; this.taps = taps;
    this.table = new Float32Array(PHASES * taps);
    for (let p = 0; p < PHASES; p++) {
      let sum = 0;
      for (let k = 0; k < taps; k++) {
        const d = k - half + 1 - p / PHASES, u = d / half;  // distance to the output instant
        const sinc = d === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * d) / (Math.PI * d);
        const win = Math.abs(u) >= 1 ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
        sum += (this.table[p * taps + k] = sinc * win);
      }
      for (let k = 0; k < taps; k++) this.table[p * taps + k] /= sum;  // unity gain at DC
    }
    this.x = new Float32Array(taps + 8192); this.len = half;  // input history, starting with silence
    this.pos = half;                                            // input position of the next output
    this.buf = new Int16Array(BLOCK); this.n = 0;
    this.port.onmessage = (m) => {
      if (m.data !== 'flush') return;
      const pcm = this.buf.slice(0, this.n).buffer; this.n = 0;
      this.port.postMessage({pcm, last: true}, [pcm]);
    };
  }
  process(inputs) {
    const chans = inputs[0];
    if (!chans || !chans.length) return true;
    const m = chans[0].length;
    if (this.len + m > this.x.length) { const y = new Float32Array(2 * (this.len + m)); y.set(this.x.subarray(0, this.len)); this.x = y; }
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let c = 0; c < chans.length; c++) s += chans[c][i];
      this.x[this.len + i] = s / chans.length;
    }
    this.len += m;
    const x = this.x, h = this.half, taps = this.taps, table = this.table;
    for (;;) {
      let i0 = Math.floor(this.pos), p = Math.round((this.pos - i0) * PHASES);
      if (p === PHASES) { i0 += 1; p = 0; }
      if (i0 + h >= this.len) break;
      const base = i0 - h + 1, row = p * taps;
      let s = 0;
      for (let k = 0; k < taps; k++) s += x[base + k] * table[row + k];
      const v = Math.max(-1, Math.min(1, s));
      this.buf[this.n++] = Math.round(v < 0 ? v * 32768 : v * 32767);
      if (this.n === BLOCK) { const pcm = this.buf.slice().buffer; this.port.postMessage({pcm, last: false}, [pcm]); this.n = 0; }
      this.pos += this.step;
    }
    const drop = Math.floor(this.pos) - h + 1;  // the oldest sample the next output needs
    if (drop > 0) { x.copyWithin(0, drop, this.len); this.len -= drop; this.pos -= drop; }
    return true;
  }
}
registerProcessor('pcm16k', Pcm16k);`;
let ws = null, ctx = null, stream = null, node = null, stopping = false;
const $ = (id) => document.getElementById(id);
function status(t) { $('status').textContent = t; }
function error(t) { $('error').textContent = t; $('error').hidden = !t; }
function busy(on) { $('start').disabled = on; $('latency').disabled = on; $('language').disabled = on; }
$('start').onclick = async () => {
  busy(true); error(''); stopping = false; $('finals').replaceChildren(); $('partial').textContent = '';
  // the context is created inside the click (a user gesture), so that autoplay rules do not leave it
  // suspended when the permission prompt takes long; resume() in case the browser suspended it anyway
  ctx = new AudioContext();
  try {
    stream = await navigator.mediaDevices.getUserMedia(
      {audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    await ctx.resume();
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], {type: 'application/javascript'})));
  } catch (e) {
    error((stream ? 'audio setup failed: ' : 'no microphone: ') + e.message); status('idle'); cleanup(); return;
  }
  const src = ctx.createMediaStreamSource(stream);
  node = new AudioWorkletNode(ctx, 'pcm16k', {numberOfOutputs: 0});
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const latency = encodeURIComponent($('latency').value);
  const language = $('language').value ? '&language=' + encodeURIComponent($('language').value) : '';
  ws = new WebSocket(`${proto}//${location.host}/v1/stream?latency=${latency}${language}&sample_rate=16000&encoding=pcm_s16le`);
  ws.binaryType = 'arraybuffer';
  status('connecting');
  ws.onopen = () => { status('listening'); $('stop').disabled = false; };
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === 'partial') $('partial').textContent = ev.text;
    else if (ev.type === 'final') {
      $('partial').textContent = '';
      if (ev.text) {
        const p = document.createElement('p'); p.textContent = ev.text; p.className = 'final';
        if (ev.language) { p.lang = ev.language; p.dataset.language = ev.language; p.title = ev.language; }
        $('finals').appendChild(p);
      }
    } else if (ev.type === 'error') error('server: ' + ev.message);
  };
  ws.onclose = (e) => {
    status('closed (' + e.code + ')');
    if (e.code !== 1000 && !stopping && !$('error').textContent) error('connection closed (' + e.code + ') ' + e.reason);
    ws = null; cleanup();
  };
  node.port.onmessage = (m) => {
    const open = ws && ws.readyState === WebSocket.OPEN;
    if (open && m.data.pcm.byteLength) ws.send(m.data.pcm);
    if (m.data.last) {  // Stop: the last samples are out; end the stream (or give up one not yet open)
      if (open) ws.send(JSON.stringify({type: 'end'})); else if (ws) { stopping = true; ws.close(); }
      cleanup();
    }
  };
  src.connect(node);
};
function cleanup() {  // releases the microphone and audio graph; the socket closes on its own
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  stream = null; ctx = null; node = null; $('stop').disabled = true;
  if (!ws) busy(false);
}
$('stop').onclick = () => {
  $('stop').disabled = true; status('finishing');
  if (node) node.port.postMessage('flush'); else cleanup();
};
</script></body></html>
"""


def page_html(latency_modes: list[int], default_latency: int, languages: list[str] | None = None,
              default_language: str | None = None) -> str:
    """The page with one <option> per latency mode of the served model, `default_latency` selected, and for a
    multilingual model a language picker (`default_language` selected); hidden for a model without one."""
    options = "".join(
        f'<option value="{int(m)}"{" selected" if m == default_latency else ""}>{html.escape(str(m))}</option>'
        for m in latency_modes)
    picks = "".join(
        f'<option value="{html.escape(k)}"{" selected" if k == default_language else ""}>{html.escape(k)}</option>'
        for k in languages or [])
    return (_PAGE.replace("__OPTIONS__", options).replace("__LANGUAGES__", picks)
            .replace("__LANGUAGE_HIDDEN__", "" if languages else "hidden"))
