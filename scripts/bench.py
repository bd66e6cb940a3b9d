"""Benchmarks: prints figures, asserts nothing. ``make bench`` (BENCH_ARGS=...).

Parts:
  components  decode, spectrogram, YAMNet, cough gate and Inception V3 timings in-process
  service     real gunicorn + celery worker: upload latency, end-to-end latency, throughput
  bare        the machine's limit: decode + gate + diagnosis in a tight loop, --children processes
  batch       the bare loop, then one zip of --batch-files recordings through the real stack;
              prints pipeline efficiency = end to end / bare, measured in the same run

    python scripts/bench.py components
    python scripts/bench.py service --jobs 100 --concurrency 1      # embedded defaults
    DATABASE_URL=postgresql://... REDIS_URL=redis://... python scripts/bench.py service
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.audio import decode  # noqa: E402
from shared.config import load_settings, normalise_database_url  # noqa: E402

SHARED = Path(os.environ.get("TUSSIS_SHARED_DIR", ROOT.parent / "shared"))
COUGHS = SHARED / "data" / "covid19-cough"


def real_files(count: int) -> list[Path]:
    meta = json.loads((COUGHS / "metadata.json").read_text())
    files = [COUGHS / "raw" / m["filename"] for m in meta]
    good = []
    for f in files:
        try:
            if decode(f.read_bytes(), 16000).duration_s >= 0.3:
                good.append(f)
        except Exception:
            continue
        if len(good) == count:
            break
    return good


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def line(name: str, values_ms: list[float], unit: str = "ms") -> None:
    print(
        f"  {name:<44} median {statistics.median(values_ms):8.2f} {unit}"
        f"   p95 {pct(values_ms, 95):8.2f} {unit}   n={len(values_ms)}"
    )


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_components(n_files: int) -> None:
    from ml.backbones import InceptionV3Backbone, spectrogram_batch
    from ml.model import load_model
    from ml.spectrogram import SpectrogramParams, render, warm_up

    settings = load_settings()
    files = real_files(n_files)
    blobs = [f.read_bytes() for f in files]
    durations = [decode(b, 16000).duration_s for b in blobs]
    print(f"components on {len(files)} real recordings (mean {np.mean(durations):.1f} s)")
    line(
        "decode + resample to 16 kHz (PyAV)",
        [timed(partial(decode, b, 16000), 1)[0] for b in blobs],
    )
    waves = [decode(b, 16000).samples for b in blobs]
    params = SpectrogramParams()
    t = time.perf_counter()
    warm_up(params)
    print(f"  {'first spectrogram in a process (numba)':<44} {time.perf_counter() - t:8.2f} s")
    line(
        "mel spectrogram per clip (librosa)",
        [timed(partial(render, w, params), 1)[0] for w in waves],
    )

    t = time.perf_counter()
    model = load_model(
        settings.model_bundle, yamnet_model=settings.yamnet_model, yamnet_url=settings.yamnet_url
    )
    print(f"  {'load default bundle (' + model.id + ')':<44} {time.perf_counter() - t:8.2f} s")
    line(
        "default model predict per clip",
        [timed(partial(model.predict, [w]), 1)[0] for w in waves],
    )
    if settings.cough_gate_bundle:
        gate = load_model(settings.cough_gate_bundle, yamnet_model=settings.yamnet_model)
        line("cough gate per clip", [timed(partial(gate.predict, [w]), 1)[0] for w in waves])
        yamnet = getattr(gate.backbone, "yamnet", None)
        if yamnet is not None and getattr(model.backbone, "yamnet", None) is yamnet:
            # What the worker does per clip: the gate, then the diagnosis model.
            # Forgetting the shared YAMNet output in between is the old way.
            def gate_then_model(w: np.ndarray, share: bool, shared: Any = yamnet) -> None:
                shared.forget()
                gate.predict([w])
                if not share:
                    shared.forget()
                model.predict([w])

            two = [timed(partial(gate_then_model, w, False), 1)[0] for w in waves]
            one = [timed(partial(gate_then_model, w, True), 1)[0] for w in waves]
            line("gate + model per clip, two YAMNet passes", two)
            line("gate + model per clip, one shared pass", one)
            ratio = statistics.median(two) / statistics.median(one)
            print(f"  {'one pass instead of two':<44} {ratio:8.2f}x faster")

    t = time.perf_counter()
    inception = InceptionV3Backbone(params, weights=None)
    print(
        f"  {'build Inception V3 (' + 'x'.join(map(str, params.shape)) + ')':<44} "
        f"{time.perf_counter() - t:8.2f} s"
    )
    inception.embed(waves[:1])
    line("Inception V3 batch 1 (incl. spectrogram)", timed(lambda: inception.embed(waves[:1]), 20))
    images = spectrogram_batch(waves[:16], params)
    inception._call(images)
    per_batch = timed(lambda: inception._call(images), 5)
    line("Inception V3 forward, batch 16", per_batch)
    clips_per_s = 16000 / statistics.median(per_batch)
    print(f"  {'Inception V3 throughput, batch 16':<44} {clips_per_s:8.1f} clips/s")


def _stack(tmp_path: Path) -> tuple[Any, str]:
    """A stack (not started) on DATABASE_URL + REDIS_URL when set, else on the
    embedded defaults in ``tmp_path``, with its own queue; and what it runs on."""
    from tests.conftest import migrate
    from tests.stack import Stack

    settings = load_settings()
    env_db = os.environ.get("DATABASE_URL")
    if env_db:
        database_url = normalise_database_url(env_db)
        broker = os.environ.get("REDIS_URL") or settings.broker_url
    else:
        database_url = f"sqlite:///{tmp_path / 'tussis.sqlite3'}"
        broker = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    migrate(database_url)
    run_settings = settings.changed(
        data_dir=tmp_path,
        database_url=database_url,
        broker_url=broker,
        queue_name=f"bench-{os.getpid()}",
    )
    kind = "PostgreSQL + Redis" if env_db else "embedded SQLite + SQLite broker"
    return Stack(run_settings, tmp_path), kind


def bench_service(n_jobs: int, concurrency: int, worker_children: int) -> None:
    import requests

    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp))
        files = real_files(n_jobs)
        blobs = [(f.name, f.read_bytes()) for f in files]
        print(
            f"service on {kind}: {len(blobs)} jobs, {concurrency} uploading clients, "
            f"{worker_children} worker child(ren)"
        )
        try:
            t = time.perf_counter()
            stack.start_api()
            stack.start_worker(worker_children)
            print(f"  {'start API + worker (model warm)':<44} {time.perf_counter() - t:8.2f} s")
            upload_ms: list[float] = []

            def submit(item: tuple[str, bytes]) -> str:
                t0 = time.perf_counter()
                r = requests.post(f"{stack.url}/api/v1/jobs", files={"audio": item}, timeout=60)
                upload_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                return r.json()["id"]

            t_start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                ids = list(pool.map(submit, blobs))
            t_uploaded = time.perf_counter()
            done = [stack.wait_done(i, timeout=1800) for i in ids]
            t_end = time.perf_counter()
            line("upload -> 202 (decode + store + publish)", upload_ms)
            e2e = [
                (
                    datetime.fromisoformat(j["finished_at"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(j["created_at"].replace("Z", "+00:00"))
                ).total_seconds()
                * 1000
                for j in done
            ]
            line("created -> finished (queue + analysis)", e2e)
            statuses = {s: sum(j["status"] == s for j in done) for s in ("succeeded", "failed")}
            print(f"  {'uploads/s':<44} {len(ids) / (t_uploaded - t_start):8.1f}")
            print(f"  {'jobs finished/s (whole run)':<44} {len(ids) / (t_end - t_start):8.1f}")
            print(f"  {'outcomes':<44} {statistics_str(statuses)}")
        finally:
            stack.stop()


def _bare_worker(args: tuple[list[str], int]) -> tuple[int, float]:
    """One process of the bare loop: load the models once, then decode + gate +
    diagnosis for each clip, nothing else (no database, broker, picture)."""
    paths, warm = args
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml.model import load_model

    settings = load_settings()
    model = load_model(settings.model_bundle, yamnet_model=settings.yamnet_model)
    gate = (
        load_model(settings.cough_gate_bundle, yamnet_model=settings.yamnet_model)
        if settings.cough_gate_bundle
        else None
    )
    blobs = [Path(p).read_bytes() for p in paths]
    for b in blobs[:warm]:
        model.predict([decode(b, 16000).samples])
    t = time.perf_counter()
    for b in blobs:
        samples = decode(b, model.sample_rate).samples
        if gate is None or gate.predict([samples])[0].diagnosis == "cough":
            model.predict([samples])
    return len(blobs), time.perf_counter() - t


def bench_bare(n_files: int, processes: int) -> float:
    """The machine's limit for this work: ``processes`` processes each running the
    bare loop over its share of the clips; clips/s over the slowest process."""
    import multiprocessing

    files = [str(f) for f in real_files(n_files)]
    shares = [(files[i::processes], 3) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_bare_worker, shares)
    clips = sum(n for n, _ in results)
    rate = clips / max(seconds for _, seconds in results)
    print(f"bare loop: decode + cough gate + diagnosis, {processes} process(es), {clips} clips")
    print(f"  {'clips/s (the limit)':<44} {rate:8.1f}")
    return rate


def bench_batch(n_files: int, worker_children: int) -> float:
    """One zip through ``POST /api/v1/batches``, timed from the start of the upload
    until the batch reports ``completed``: how a study uses the service."""
    import io
    import zipfile

    import requests

    files = real_files(n_files)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f.name)
    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp))
        print(f"batch on {kind}: one zip of {len(files)} recordings, {worker_children} child(ren)")
        try:
            stack.start_api()
            stack.start_worker(worker_children)
            t = time.perf_counter()
            r = requests.post(
                f"{stack.url}/api/v1/batches",
                files={"archive": ("study.zip", archive.getvalue())},
                timeout=600,
            )
            r.raise_for_status()
            batch_id = r.json()["id"]
            t_uploaded = time.perf_counter()
            while True:
                batch = requests.get(f"{stack.url}/api/v1/batches/{batch_id}", timeout=30).json()
                if batch["status"] == "completed":
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - t
            print(f"  {'upload (zip -> 202)':<44} {t_uploaded - t:8.2f} s")
            print(f"  {'upload start -> completed':<44} {seconds:8.2f} s")
            print(f"  {'counts':<44} {batch['counts']}")
            rate = len(files) / seconds
            print(f"  {'clips/s end to end':<44} {rate:8.1f}")
            return rate
        finally:
            stack.stop()


def statistics_str(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "part",
        choices=["components", "service", "bare", "batch", "all"],
        nargs="?",
        default="all",
    )
    parser.add_argument("--files", type=int, default=50, help="recordings for component timings")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="uploading clients")
    parser.add_argument("--children", type=int, default=1, help="worker child processes")
    parser.add_argument("--batch-files", type=int, default=400, help="recordings in the zip")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    if args.part in ("components", "all"):
        bench_components(args.files)
    if args.part in ("service", "all"):
        bench_service(args.jobs, args.concurrency, args.children)
    bare = batch = None
    if args.part in ("bare", "batch", "all"):
        bare = bench_bare(args.batch_files, args.children)
    if args.part in ("batch", "all"):
        batch = bench_batch(args.batch_files, args.children)
    if bare and batch:
        print(f"pipeline efficiency (batch end to end / bare loop, same run): {batch / bare:.2f}")


if __name__ == "__main__":
    main()
