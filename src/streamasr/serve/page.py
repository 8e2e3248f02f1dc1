"""The browser page served at `/`: microphone capture in an AudioWorklet, 16 kHz s16le over the WebSocket.

The worklet low-passes (a short moving average) and decimates the context's rate (44.1/48 kHz) to 16 kHz
with fractional stepping, converts to int16 and posts ~100 ms blocks to the page, which sends them as
binary frames on `/v1/stream?latency=...&encoding=pcm_s16le`. Partials replace the grey line, finals are
appended as paragraphs.
"""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamasr live</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
#partial{color:#777;min-height:1.5em} #finals p{margin:.3em 0} #status{font-size:.9em;color:#555}
</style></head><body>
<h1>streamasr live recognition</h1>
<p><label>Latency <select id="latency">__OPTIONS__</select> ms</label>
<button id="start">Start</button> <button id="stop" disabled>Stop</button> <span id="status">idle</span></p>
<div id="finals"></div><div id="partial"></div>
<script>
const WORKLET = `
class Pcm16k extends AudioWorkletProcessor {
  constructor() { super(); this.step = sampleRate / 16000; this.pos = 0; this.buf = new Int16Array(1600); this.n = 0;
                  this.hist = new Float32Array(0); }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    const x = new Float32Array(this.hist.length + ch.length); x.set(this.hist); x.set(ch, this.hist.length);
    const w = Math.max(1, Math.round(this.step));
    while (this.pos + w <= x.length) {
      let s = 0; const i0 = Math.floor(this.pos);
      for (let k = 0; k < w; k++) s += x[i0 + k];
      const v = Math.max(-1, Math.min(1, s / w));
      this.buf[this.n++] = v < 0 ? v * 32768 : v * 32767;
      if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice().buffer); this.n = 0; }
      this.pos += this.step;
    }
    const keep = Math.floor(this.pos); this.hist = x.slice(keep); this.pos -= keep;
    return true;
  }
}
registerProcessor('pcm16k', Pcm16k);`;
let ws = null, ctx = null, stream = null;
const $ = (id) => document.getElementById(id);
function status(t) { $('status').textContent = t; }
$('start').onclick = async () => {
  $('start').disabled = true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: true}});
  } catch (e) { status('no microphone: ' + e.message); $('start').disabled = false; return; }
  ctx = new AudioContext();
  await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], {type: 'application/javascript'})));
  const src = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, 'pcm16k');
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${proto}//${location.host}/v1/stream?latency=${$('latency').value}&sample_rate=16000&encoding=pcm_s16le`);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { status('listening'); $('stop').disabled = false; };
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === 'partial') $('partial').textContent = ev.text;
    else if (ev.type === 'final') {
      $('partial').textContent = '';
      if (ev.text) { const p = document.createElement('p'); p.textContent = ev.text; p.className = 'final'; $('finals').appendChild(p); }
    } else if (ev.type === 'error') status('error: ' + ev.message);
  };
  ws.onclose = (e) => { status('closed (' + e.code + ')'); cleanup(); };
  node.port.onmessage = (m) => { if (ws && ws.readyState === 1) ws.send(m.data); };
  src.connect(node);
};
function cleanup() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  stream = null; ctx = null; $('start').disabled = false; $('stop').disabled = true;
}
$('stop').onclick = () => { if (ws && ws.readyState === 1) ws.send(JSON.stringify({type: 'end'})); status('finishing'); };
</script></body></html>
"""


def page_html(latency_modes: list[int], default_latency: int) -> str:
    options = "".join(
        f'<option value="{int(m)}"{" selected" if m == default_latency else ""}>{html.escape(str(m))}</option>'
        for m in latency_modes)
    return _PAGE.replace("__OPTIONS__", options)
