"""Live recognition for applications: a WebSocket server with batched multi-stream scheduling.

Protocol (`streamasr serve`, default ws://127.0.0.1:8080):

    GET /v1/stream?latency=160&sample_rate=16000&encoding=pcm_s16le      (WebSocket; also pcm_f32le)
                      optional &vad=silero|off: Silero VAD endpointing for this stream (session.py)
    client -> server  binary frames: little-endian mono PCM, any number of whole samples per frame
                      text {"type": "end"}: no more audio; the server sends the last final and closes (1000)
    server -> client  {"type": "partial", "text": ..., "audio_s": ...}   the current utterance, when it changes
                      {"type": "final", "text", "start_s", "end_s", "reason", "words": [{"word", "start_s",
                       "end_s", "confidence"}]}   at each endpoint and once at the end of the stream; reason:
                       silence | max_length | vad | end
                      {"type": "error", "message": ...}
    GET /health (JSON), GET /metrics (Prometheus text), GET / (browser microphone page)

Minimal client:

    import asyncio, json, aiohttp, soundfile as sf
    async def main(path):
        pcm = sf.read(path, dtype="int16")[0].tobytes()           # 16 kHz mono WAV
        async with aiohttp.ClientSession() as s, s.ws_connect(
                "ws://127.0.0.1:8080/v1/stream?latency=160&encoding=pcm_s16le") as ws:
            for i in range(0, len(pcm), 3200):                    # 100 ms per frame
                await ws.send_bytes(pcm[i:i + 3200])
            await ws.send_str(json.dumps({"type": "end"}))
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev["type"] == "final":
                    print(ev["text"])
    asyncio.run(main("speech.wav"))
"""
