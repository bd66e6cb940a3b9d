"""Long-recording benchmarks (``scripts/bench.py long`` and ``decode-strategies``):
prints figures, asserts nothing.

long               an N-hour 16 kHz mono 16-bit WAV (8 h: about 920 MB) streamed to a real
                   stack with ``POST /api/v1/recordings``: the API's peak RSS while it
                   streams, then upload finished -> result, against the bare time of decode
                   + one YAMNet pass over all its windows in the same number of processes,
                   measured in the same run; each worker child's peak RSS and its share of
                   the segments.
decode-strategies  an N-minute MP3 cut into segments two ways: a seek in the container over
                   ranged reads per segment, against one transcode to 16 kHz PCM whose byte
                   ranges are the segments (time, and where each segment's samples start).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SR = 16000
SEGMENT_S = 60.0


def _cough_clips(count: int) -> list[np.ndarray]:
    from bench import COUGHS

    from shared.audio import decode

    meta = json.loads((COUGHS / "metadata.json").read_text())
    clips: list[np.ndarray] = []
    for m in meta:
        try:
            clip = decode((COUGHS / "raw" / m["filename"]).read_bytes(), SR).samples
        except Exception:
            continue
        if SR // 2 <= len(clip) <= 3 * SR:
            clips.append((clip / (np.abs(clip).max() + 1e-9) * 0.5).astype(np.float32))
        if len(clips) >= count:
            break
    return clips


def write_night(path: Path, hours: float, seed: int = 0) -> int:
    """An ``hours``-long 16 kHz mono s16 WAV: quiet noise with a real cough every 2 to 6
    minutes, written ten minutes at a time; returns its size."""
    rng = np.random.default_rng(seed)
    clips = _cough_clips(40)
    total = int(hours * 3600 * SR)
    block = 600 * SR
    with open(path, "wb") as out:
        out.write(b"RIFF" + struct.pack("<I", 36 + 2 * total) + b"WAVE")
        out.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16))
        out.write(b"data" + struct.pack("<I", 2 * total))
        for start in range(0, total, block):
            n = min(block, total - start)
            samples = rng.standard_normal(n).astype(np.float32) * 0.003
            at = int(rng.integers(0, 240 * SR))
            while at < n - 3 * SR:
                clip = clips[int(rng.integers(len(clips)))]
                samples[at : at + len(clip)] += clip
                at += int(rng.integers(120 * SR, 360 * SR))
            out.write((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path.stat().st_size


class _Multipart:
    """``audio`` of a multipart body read from disk as it is sent, with its length (a
    plain object with ``read`` and ``__len__``: requests streams it with that length)."""

    BOUNDARY = "tussis-bench-boundary"

    def __init__(self, path: Path) -> None:
        head = (
            f'--{self.BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; '
            f'filename="{path.name}"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        tail = f"\r\n--{self.BOUNDARY}--\r\n".encode()
        self._pieces: list[Any] = [io.BytesIO(head), open(path, "rb"), io.BytesIO(tail)]  # noqa: SIM115
        self.len = len(head) + path.stat().st_size + len(tail)

    def __len__(self) -> int:
        return self.len

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        while self._pieces:
            data = self._pieces[0].read(size)
            if data:
                return bytes(data)
            self._pieces.pop(0).close()
        return b""

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.BOUNDARY}"


def _bare_worker(args: tuple[str, int, int, int]) -> tuple[float, int]:
    """The bare limit of one process: read its share of the WAV (decode: s16 -> float)
    and one YAMNet pass over its windows, a segment at a time; no heads, no service."""
    path, first, last, offset = args
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml import events
    from ml.yamnet import Yamnet, ensure_model_file
    from shared.config import load_settings

    settings = load_settings()
    yamnet = Yamnet(ensure_model_file(settings.yamnet_model, settings.yamnet_url))
    yamnet.run(np.zeros(SR, np.float32))  # warm, untimed, as the service's children are
    per = int(SEGMENT_S / 0.48)
    windows = 0
    started = time.perf_counter()
    with open(path, "rb") as fh:
        for a in range(first, last + 1, per):
            b = min(last, a + per - 1)
            start, stop = events.window_span(a, b)
            fh.seek(offset + 2 * start)
            samples = np.frombuffer(fh.read(2 * (stop - start)), "<i2").astype(np.float32) / 32768
            windows += len(yamnet.run(samples).scores)
            yamnet.forget()
    return time.perf_counter() - started, windows


def bare_limit(path: Path, processes: int) -> tuple[float, int]:
    """Seconds for ``processes`` processes to decode and run YAMNet once over every
    window of the WAV (each process half of the windows), and the windows."""
    import multiprocessing

    from ml import events

    samples = (path.stat().st_size - 44) // 2
    total = events.window_count(samples)
    share = -(-total // processes)
    jobs = [(str(path), i * share, min(total, (i + 1) * share) - 1, 44) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_bare_worker, jobs)
    return max(r[0] for r in results), sum(r[1] for r in results)


def _rss_sampler(pids: list[int], stop: threading.Event, peak: dict[int, int]) -> None:
    from bench import _status_kb

    while not stop.is_set():
        for pid in pids:
            kb = _status_kb(pid, "VmRSS")
            if kb is not None:
                peak[pid] = max(peak.get(pid, 0), kb)
        stop.wait(0.05)


def bench_long(hours: float, children: int, segment_s: float | None = None) -> None:
    import requests
    from bench import _children, _loads_tensorflow, _stack, _status_kb

    from shared import long_audio

    print(
        f"long: {hours:g} h of 16 kHz mono 16-bit WAV, {children} worker children, "
        f"segments of {segment_s or 'TUSSIS_SEGMENT_S'} s"
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("TUSSIS_BENCH_TMP")) as tmp:
        night = Path(tmp) / "night.wav"
        t = time.perf_counter()
        size = write_night(night, hours)
        print(
            f"  {'recording written':<52} {size / 1e6:8.1f} MB in {time.perf_counter() - t:.0f} s"
        )
        (Path(tmp) / "stack").mkdir()
        stack, kind = _stack(Path(tmp) / "stack")
        if segment_s:
            stack.env["TUSSIS_SEGMENT_S"] = str(segment_s)
        try:
            stack.start_api()
            stack.start_worker(children)
            print(f"  {'stack':<52} {kind}")
            workers = _children(stack.api.pid)
            peak: dict[int, int] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=_rss_sampler, args=(workers, stop, peak))
            sampler.start()
            body = _Multipart(night)
            t0 = time.perf_counter()
            response = requests.post(
                f"{stack.url}/api/v1/recordings",
                data=body,
                headers={"Content-Type": body.content_type},
                timeout=3600,
            )
            uploaded = time.perf_counter()
            stop.set()
            sampler.join()
            if response.status_code != 202:
                raise RuntimeError(f"upload refused: {response.status_code} {response.text}")
            recording = response.json()
            print(
                f"  {'upload (POST, streamed)':<52} {uploaded - t0:8.1f} s "
                f"({size / 1e6 / (uploaded - t0):.0f} MB/s)"
            )
            hwm = max((_status_kb(pid, "VmHWM") or 0) for pid in workers)
            print(
                f"  {'API worker peak RSS while streaming (sampled)':<52} "
                f"{max(peak.values()) / 1024:8.1f} MiB (VmHWM {hwm / 1024:.1f} MiB; target 200)"
            )
            url = f"{stack.url}/api/v1/recordings/{recording['id']}"
            while True:
                state = requests.get(url, timeout=30).json()
                if state["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.5)
            counted = time.perf_counter() - uploaded
            assert state["status"] == "succeeded", state
            result = state["result"]
            print(
                f"  {'upload finished -> result':<52} {counted:8.1f} s "
                f"({state['progress']['segments_total']} segments, {result['cough_count']} "
                f"coughs, {result['episodes']} episodes)"
            )
            child_peaks = [
                (_status_kb(pid, "VmHWM") or 0) / 1024
                for pid in _children(stack.worker.pid)
                if _loads_tensorflow(pid)
            ]
            print(
                f"  {'worker child peak RSS (VmHWM), each':<52} "
                + ", ".join(f"{p:.1f}" for p in child_peaks)
                + " MiB (target 400)"
            )
            print(f"  {'segments per child':<52} {_segments_per_worker(stack, recording['id'])}")
        finally:
            stack.stop()
        bare, windows = bare_limit(night, children)
        print(
            f"  {'bare: decode + one YAMNet pass, ' + str(children) + ' processes':<52} "
            f"{bare:8.1f} s ({windows} windows, {windows / bare:.0f} windows/s)"
        )
        print(f"  {'counted / bare, same run (target <= 1.5)':<52} {counted / bare:8.2f}")
        del long_audio


def _segments_per_worker(stack: Any, recording_id: str) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(stack.settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT worker, count(*) FROM jobs WHERE recording_id = :r "
                    "AND segment IS NOT NULL GROUP BY worker"
                ),
                {"r": recording_id},
            ).all()
    finally:
        engine.dispose()
    return {str(w).split(":")[1]: int(n) for w, n in rows}


def bench_decode_strategies(minutes: float) -> None:
    """Seek in the container per segment (over ranged reads) vs one transcode to PCM."""
    import av

    from shared.long_audio import PartsReader, Pcm, read_samples, transcode
    from shared.storage import FileStorage
    from tests.audio_samples import encode

    print(f"decode-strategies: {minutes:g} min of MP3 (44.1 kHz mono), {SEGMENT_S:g} s segments")
    rng = np.random.default_rng(1)
    samples = rng.standard_normal(int(minutes * 60 * SR)).astype(np.float32) * 0.05
    for clip, at in zip(
        _cough_clips(20), range(5 * SR, len(samples) - 4 * SR, 90 * SR), strict=False
    ):
        samples[at : at + len(clip)] += clip
    data = encode(samples, SR, "mp3")
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStorage(Path(tmp))
        store.put("upload", data)
        parts = [["upload", len(data)]]
        count = int(len(samples) / SR // SEGMENT_S)

        t = time.perf_counter()
        with store.open_write("pcm") as writer:
            n = transcode(PartsReader(store, parts), writer, 10**6)
            writer.commit()
        once = time.perf_counter() - t
        pcm = Pcm([["pcm", 2 * n]], 0, n)
        t = time.perf_counter()
        reference = [
            read_samples(store, pcm, int(k * SEGMENT_S * SR), int(SEGMENT_S * SR))
            for k in range(count)
        ]
        reads = time.perf_counter() - t

        t = time.perf_counter()
        pieces: list[np.ndarray] = []
        for k in range(count):
            reader = PartsReader(store, parts)
            with av.open(reader, mode="r") as container:
                stream = container.streams.audio[0]
                base = stream.time_base or Fraction(1, SR)
                start_s = k * SEGMENT_S
                container.seek(int(start_s / base), stream=stream)
                resampler = av.AudioResampler(format="s16", layout="mono", rate=SR)
                got: list[np.ndarray] = []
                first_pts = None
                for frame in container.decode(stream):
                    if first_pts is None:
                        first_pts = float((frame.pts or 0) * base)
                    for out in resampler.resample(frame):
                        got.append(out.to_ndarray().reshape(-1))
                    if sum(map(len, got)) >= (SEGMENT_S + 1) * SR:
                        break
            piece = np.concatenate(got).astype(np.float32) / 32768
            skip = round((start_s - (first_pts or 0.0)) * SR)
            pieces.append(piece[max(0, skip) : max(0, skip) + int(SEGMENT_S * SR)])
        seeks = time.perf_counter() - t
        offsets = [_lag(ref, got_) for ref, got_ in zip(reference, pieces, strict=True)]
    print(f"  {'segments':<52} {count}")
    print(f"  {'one transcode to 16 kHz PCM (once)':<52} {once:8.2f} s")
    print(f"  {'  then each segment: one ranged read':<52} {reads / count * 1000:8.2f} ms")
    print(f"  {'seek in the container + decode, per segment':<52} {seeks / count * 1000:8.2f} ms")
    print(f"  {'  all segments by seeking':<52} {seeks:8.2f} s")
    print(
        f"  {'seek: samples off from the transcode (per segment)':<52} "
        f"{min(offsets)} .. {max(offsets)}"
    )


def _lag(a: np.ndarray, b: np.ndarray, search: int = 4000) -> int:
    """By how many samples ``b`` is shifted against ``a`` (0: aligned), from the peak of
    their cross-correlation within ``search`` samples."""
    n = min(len(a), len(b))
    if n <= 2 * search:
        return 0
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(b[:n], size) * np.conj(np.fft.rfft(a[:n], size)), size)
    lags = np.concatenate([corr[: search + 1], corr[-search:]])
    best = int(np.argmax(lags))
    return best if best <= search else best - len(lags)
