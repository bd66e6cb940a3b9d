"""Benchmarks: prints figures, asserts nothing. ``make bench`` (BENCH_ARGS=...).

Parts (one or more; ``all``, the default, runs every one):
  components   decode, spectrogram, YAMNet, cough gate and Inception V3 timings in-process
  service      real gunicorn + celery worker: upload latency, end-to-end latency, throughput
  bare         decode + gate + diagnosis in a tight loop, --children processes
  bare-yamnet  the issue's bare limit: decode + one YAMNet pass per window, no heads,
               --children processes, on the same clips as bare (ratio to bare printed)
  batch        the bare loop, then one zip of --batch-files recordings through the real stack;
               prints pipeline efficiency = end to end / bare, measured in the same run
  latency      idle warm service, one job at a time, 50 ms polls: upload start -> terminal
  polls        wrk on one finished job's URL and on /healthz: req/s, p99, their ratio
  conditional  polls, and the same polls with the job's ETag (304 answers), against /healthz
  wakeup       long polls (Prefer: wait): worker commit -> client has the answer, p50/p95
  waiters      --waiters clients long-polling at once: /healthz p99 and upload -> 202 beside
               them, against the same without them
  singles      the batch's recordings as single jobs from --concurrency clients: jobs/s
               against the batch's clips/s and the bare limit, same run
  rss          peak RSS (VmHWM) of each gunicorn worker and celery child after the batch run
  coldstart    worker start -> first result, and API + worker started together -> first result
  poc          the proof of concept's way (model per clip, figure -> PNG) against the bare loop
  scale        1, 2, 4 celery worker processes (--concurrency 1 each) on the same zip
  evaluation   a finished batch's evaluation (--eval-items in --eval-groups groups): computed
               per request for every group, as the API did, against computed once by a
               worker (50 largest groups) and a request answered from the stored row
  compare      the paired comparison of two models on a --compare-items recording pair
               (issue 25): computed once by a worker (DeLong, paired bootstrap per group,
               the ROC figure) and a warm request answered from the stored row
  rescore      issue 25's target on the live stack, one worker serving models/default and
               models/inception: a labelled zip of --rescore-files recordings (labels and
               groups from the data set's metadata) scored by YAMNet, re-scored with
               Inception (POST /batches/{id}/rescore, no upload), then the paired
               comparison and its ROC figure: first request -> 200 and warm requests
  long         an --hours long 16-bit WAV (8 h: about 920 MB) streamed to a real stack: API
               RSS while streaming, upload finished -> result against decode + one YAMNet
               pass over its windows in --children processes, child RSS (scripts/bench_long.py)
  decode-strategies  --minutes of MP3 cut into segments: seek in the container per segment
               over ranged reads, against one transcode to 16 kHz PCM

batch, singles, latency, wakeup, polls, conditional, waiters and rss share one running
stack (API + worker with --children).

    python scripts/bench.py components
    python scripts/bench.py service --jobs 100 --concurrency 1      # embedded defaults
    python scripts/bench.py batch latency polls rss --batch-files 100
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
import uuid
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


def usable(f: Path) -> bool:
    """Whether the service would take the recording (it decodes and lasts 0.3 s)."""
    try:
        return decode(f.read_bytes(), 16000).duration_s >= 0.3
    except Exception:
        return False


def real_files(count: int) -> list[Path]:
    meta = json.loads((COUGHS / "metadata.json").read_text())
    files = [COUGHS / "raw" / m["filename"] for m in meta]
    good = []
    for f in files:
        if usable(f):
            good.append(f)
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


# A limit far above anything these runs send: the benchmark measures the pipeline, not
# the limiter's refusals (the default, 20/second per client, would answer 429 to a
# 50 ms poller and to wrk). The limiter still counts every request, as in production.
BENCH_RATE_LIMIT = "1000000/second"
POLL_S = 0.05  # the polling interval for single-job latency


def _stack(tmp_path: Path, model_bundles: tuple[Path, ...] = ()) -> tuple[Any, str]:
    """A stack (not started) on DATABASE_URL + REDIS_URL when set, else on the
    embedded defaults in ``tmp_path``, with its own queue; and what it runs on.
    ``model_bundles``: the diagnosis bundles its worker serves (the Stack's
    TUSSIS_MODEL_BUNDLES), default first; none: the settings' default bundle alone."""
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
        # One queue per stack: several stacks of one run share the database and broker,
        # and a stopped stack's leftover message must not reach the next one's workers.
        queue_name=f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        rate_limit=BENCH_RATE_LIMIT,
        **({"model_bundles": model_bundles} if model_bundles else {}),
    )
    kind = "PostgreSQL + Redis" if env_db else "embedded SQLite + SQLite broker"
    return Stack(run_settings, tmp_path), kind


class LiveStack:
    """One started stack (API + a worker with ``children`` children), shared by the
    parts that measure a running service (batch, latency, polls, rss), so one run
    pays the start once and rss reads the processes that did all that work."""

    def __init__(self, children: int) -> None:
        self.children = children
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stack: Any = None
        self.kind = ""

    def get(self) -> Any:
        if self._stack is None:
            self._tmp = tempfile.TemporaryDirectory()
            stack, self.kind = _stack(Path(self._tmp.name))
            self._stack = stack  # set before starting, so close() stops a half-started one
            stack.start_api()
            stack.start_worker(self.children)
        return self._stack

    def close(self) -> None:
        try:
            if self._stack is not None:
                self._stack.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


def _job_url(stack: Any, job_id: str) -> str:
    return f"{stack.url}/api/v1/jobs/{job_id}"


def _poll_job(stack: Any, job_id: str, interval: float = POLL_S, timeout: float = 600) -> dict:
    """Poll the job every ``interval`` s, as a client would, until it is terminal."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(_job_url(stack, job_id), timeout=30)
        r.raise_for_status()  # a 429 or 5xx here is a broken run, not a slow job
        job = r.json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(interval)


def _submit(stack: Any, name: str, data: bytes) -> str:
    import requests

    r = requests.post(f"{stack.url}/api/v1/jobs", files={"audio": (name, data)}, timeout=60)
    r.raise_for_status()
    return str(r.json()["id"])


def _when(stamp: str) -> float:
    """An API timestamp (ISO 8601, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- process memory (/proc, no psutil) ----------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, from each process's /proc/<pid>/stat."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Field 4 is the parent; the command name (field 2) may contain spaces and ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith(field + ":"):
                return int(row.split()[1])
    except OSError:
        return None
    return None


def _loads_tensorflow(pid: int) -> bool:
    """Whether the process has a model runtime mapped (LiteRT for YAMNet bundles,
    TensorFlow for Inception): the worker's pool children load the models; the worker
    parent and the embedded beat process never do."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "ai_edge_litert" in maps or "tensorflow" in maps


def print_rss(stack: Any, when: str) -> None:
    """Peak (VmHWM) and current RSS of every gunicorn and celery process of ``stack``."""
    if not Path("/proc/self/status").is_file():
        print(f"rss {when}: skipped (no /proc on this system)")
        return
    print(f"rss {when}: peak RSS (VmHWM) per process, current RSS in brackets")

    def show(label: str, pid: int) -> None:
        hwm, rss = _status_kb(pid, "VmHWM"), _status_kb(pid, "VmRSS")
        if hwm is None or rss is None:
            print(f"  {label:<44} (exited)")
        else:
            print(f"  {label:<44} {hwm / 1024:8.1f} MiB   ({rss / 1024:.1f} MiB)  pid {pid}")

    if stack.api is not None:
        show("gunicorn master", stack.api.pid)
        for i, pid in enumerate(_children(stack.api.pid), 1):
            show(f"gunicorn worker {i}", pid)
    if stack.worker is not None:
        show("celery worker parent", stack.worker.pid)
        pool = 0
        for pid in _children(stack.worker.pid):
            if _loads_tensorflow(pid):
                pool += 1
                show(f"celery child {pool} (models loaded)", pid)
            else:
                show("celery other child (embedded beat)", pid)


# --- parts --------------------------------------------------------------------------


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
            print_rss(stack, "after the service run")
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


def _bare_yamnet_worker(args: tuple[list[str], int]) -> tuple[int, float, float, int]:
    """One process of the issue's bare limit: PyAV decode to 16 kHz and one YAMNet
    TFLite pass over every window of the clip; no heads, no gate, nothing else."""
    paths, warm = args
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml.yamnet import SAMPLE_RATE, Yamnet, ensure_model_file

    settings = load_settings()
    yamnet = Yamnet(ensure_model_file(settings.yamnet_model, settings.yamnet_url))
    blobs = [Path(p).read_bytes() for p in paths]
    for b in blobs[:warm]:
        yamnet.run(decode(b, SAMPLE_RATE).samples)
    seconds_of_audio, windows = 0.0, 0
    t = time.perf_counter()
    for b in blobs:
        samples = decode(b, SAMPLE_RATE).samples
        # The data set holds identical files, and the warm-up clips come round again:
        # every clip must cost its pass, not a hit in YAMNet's memo of recent clips.
        yamnet.forget()
        windows += len(yamnet.run(samples).scores)
        seconds_of_audio += len(samples) / SAMPLE_RATE
    return len(blobs), time.perf_counter() - t, seconds_of_audio, windows


def bench_bare_yamnet(n_files: int, processes: int) -> float:
    """The issue's bare limit on the same clips as ``bare``: ``processes`` processes,
    clips/s over the slowest one."""
    import multiprocessing

    files = [str(f) for f in real_files(n_files)]
    shares = [(files[i::processes], 3) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_bare_yamnet_worker, shares)
    clips = sum(r[0] for r in results)
    rate = clips / max(r[1] for r in results)
    audio = sum(r[2] for r in results)
    windows = sum(r[3] for r in results)
    print(
        f"bare-yamnet: PyAV decode to 16 kHz + one YAMNet pass over every window, no heads, "
        f"{processes} process(es), {clips} clips"
    )
    print(f"  {'mean clip duration':<44} {audio / clips:8.2f} s")
    print(f"  {'YAMNet windows per clip (0.975 s, hop 0.48)':<44} {windows / clips:8.2f}")
    print(f"  {'clips/s (the issue bare limit)':<44} {rate:8.1f}")
    print(f"  {'windows/s':<44} {windows / max(r[1] for r in results):8.1f}")
    return rate


def bench_batch(live: LiveStack, n_files: int) -> float:
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
    stack = live.get()
    print(f"batch on {live.kind}: one zip of {len(files)} recordings, {live.children} child(ren)")
    t = time.perf_counter()
    r = requests.post(
        f"{stack.url}/api/v1/batches",
        files={"archive": ("study.zip", archive.getvalue())},
        timeout=600,
    )
    r.raise_for_status()
    batch_id = r.json()["id"]
    t_uploaded = time.perf_counter()
    batch = _wait_batch(stack, batch_id)
    seconds = time.perf_counter() - t
    print(f"  {'upload (zip -> 202)':<44} {t_uploaded - t:8.2f} s")
    print(f"  {'upload start -> completed':<44} {seconds:8.2f} s")
    print(f"  {'counts':<44} {batch['counts']}")
    if batch["counts"].get("failed"):
        print(f"  {'why the failed ones failed':<44} {_failure_codes(stack, batch_id)}")
    rate = len(files) / seconds
    print(f"  {'clips/s end to end':<44} {rate:8.1f}")
    return rate


def _failure_codes(stack: Any, batch_id: str) -> dict[str, int]:
    """Error codes of a batch's failed items (a recording the gate refuses is a
    normal outcome; anything else is worth a look)."""
    import requests

    codes: dict[str, int] = {}
    cursor = ""
    while True:
        page = requests.get(
            f"{stack.url}/api/v1/batches/{batch_id}/items",
            params={"limit": "100", "cursor": cursor} if cursor else {"limit": "100"},
            timeout=30,
        ).json()
        for job in page["items"]:
            if job["status"] == "failed":
                code = job["error"]["code"]
                codes[code] = codes.get(code, 0) + 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    return codes


def _wait_batch(stack: Any, batch_id: str, timeout: float = 1800) -> dict:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        batch = requests.get(f"{stack.url}/api/v1/batches/{batch_id}", timeout=30).json()
        if batch["status"] == "completed":
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} not completed after {timeout:.0f} s")
        time.sleep(0.1)


def bench_latency(live: LiveStack, n_jobs: int, warmup: int) -> None:
    """An idle warm service, one job at a time: upload start -> terminal status as a
    client sees it, polling every 50 ms."""
    stack = live.get()
    files = real_files(warmup + n_jobs)
    print(
        f"latency on {live.kind}: {len(files) - warmup} jobs one at a time after {warmup} "
        f"warm-up, polled every {POLL_S * 1000:.0f} ms, {live.children} child(ren)"
    )
    upload_ms: list[float] = []
    total_ms: list[float] = []
    queued_ms: list[float] = []  # row created -> a worker claimed it (broker + claim)
    work_ms: list[float] = []  # claimed -> terminal state written (decode, models, write)
    outcomes: dict[str, int] = {}
    t_run = time.perf_counter()
    for i, f in enumerate(files):
        if i == warmup:
            t_run = time.perf_counter()
        t = time.perf_counter()
        job_id = _submit(stack, f.name, f.read_bytes())
        t_accepted = time.perf_counter()
        job = _poll_job(stack, job_id)
        if i >= warmup:
            upload_ms.append((t_accepted - t) * 1000)
            total_ms.append((time.perf_counter() - t) * 1000)
            outcomes[job["status"]] = outcomes.get(job["status"], 0) + 1
            if job.get("started_at") and job.get("finished_at"):
                started = _when(job["started_at"])
                queued_ms.append((started - _when(job["created_at"])) * 1000)
                work_ms.append((_when(job["finished_at"]) - started) * 1000)
    if not total_ms:
        print("  no jobs measured (--latency-jobs 0)")
        return
    line("upload -> 202", upload_ms)
    line("upload start -> terminal status", total_ms)
    if queued_ms:
        line("  of which: row created -> claimed", queued_ms)
        line("  of which: claimed -> result written", work_ms)
    print(f"  {'mean upload start -> terminal status':<44} {statistics.mean(total_ms):8.2f} ms")
    rate = len(total_ms) / (time.perf_counter() - t_run)
    print(f"  {'jobs/s, one at a time':<44} {rate:8.2f}")
    print(f"  {'outcomes':<44} {statistics_str(outcomes)}")


def _wrk(
    url: str, seconds: int, threads: int, connections: int, headers: tuple[str, ...] = ()
) -> dict[str, float] | None:
    """``wrk --latency`` against ``url``: requests/s, p50/p99 latency (ms), and the
    count of non-2xx/3xx answers and socket errors, parsed from its report."""
    import re
    import shutil
    import subprocess

    exe = shutil.which("wrk")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
        + [arg for h in headers for arg in ("-H", h)]
        + [url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    unit_ms = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}

    def latency(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * unit_ms[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50": latency("50"),
        "p99": latency("99"),
        "requests": float(total.group(1)) if total else float("nan"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


ANONYMOUS_OWNER = "anonymous"  # api.auth.ANONYMOUS: who owns what open mode accepted


def _api_key(stack: Any, owner: str) -> tuple[str, str]:
    from shared import api_keys
    from shared.db import session_scope

    with session_scope(stack.settings.database_url) as session:
        new = api_keys.create(session, "bench polls", owner)
    return new.id, new.key


def _revoke(stack: Any, key_id: str) -> None:
    from shared import api_keys
    from shared.db import session_scope

    with session_scope(stack.settings.database_url) as session:
        api_keys.revoke(session, key_id)


def bench_polls(
    live: LiveStack, seconds: int, threads: int, connections: int, conditional: bool
) -> None:
    """Status polls of one finished job against ``/healthz`` (no database), same run;
    with ``conditional``, also the same polls with the job's ETag (``304`` answers)."""
    import shutil

    import requests

    if shutil.which("wrk") is None:
        print("polls: skipped: wrk is not installed (apt-get install wrk)")
        return
    stack = live.get()
    f = real_files(1)[0]
    job_id = _submit(stack, f.name, f.read_bytes())
    _poll_job(stack, job_id)
    workers = len(_children(stack.api.pid)) if stack.api is not None else 0
    print(
        f"polls on {live.kind}: wrk -t{threads} -c{connections} -d{seconds}s, "
        f"{workers} gunicorn worker(s) (gthread, {stack.settings.api_threads} threads each)"
    )
    # As a deployment polls: with a database API key (looked up on every request), not
    # the loopback open mode. The key is revoked afterwards, which reopens the mode for
    # the parts that follow.
    key_id, key = _api_key(stack, owner=ANONYMOUS_OWNER)
    auth = f"Authorization: Bearer {key}"
    etag = requests.get(
        _job_url(stack, job_id), headers={"Authorization": f"Bearer {key}"}
    ).headers["ETag"]
    runs: dict[str, tuple[str, tuple[str, ...]]] = {
        "GET job (finished), 200": (_job_url(stack, job_id), (auth,)),
        "GET /healthz": (f"{stack.url}/healthz", ()),
    }
    if conditional:
        runs["GET job, If-None-Match: 304"] = (
            _job_url(stack, job_id),
            (auth, f"If-None-Match: {etag}"),
        )
    results = {}
    try:
        for name, (url, headers) in runs.items():
            r = _wrk(url, seconds, threads, connections, headers)
            if r is None:  # wrk was found above; only a race with its removal gets here
                return
            results[name] = r
            extra = ""
            # wrk counts a 304 as a 3xx, which is not an error (its "Non-2xx or 3xx").
            if r["non_2xx"] or r["socket_errors"]:
                extra = f"   non-2xx {r['non_2xx']:.0f}, socket errors {r['socket_errors']:.0f}"
            print(
                f"  {name:<44} {r['rps']:8.1f} req/s   p50 {r['p50']:7.2f} ms   "
                f"p99 {r['p99']:7.2f} ms{extra}"
            )
    finally:
        _revoke(stack, key_id)
    health = results["GET /healthz"]
    for name, label in (
        ("GET job (finished), 200", "job polls"),
        ("GET job, If-None-Match: 304", "304 polls"),
    ):
        if name in results:
            r = results[name]
            print(f"  {label + ' / healthz, req/s (same run)':<44} {r['rps'] / health['rps']:8.2f}")
            print(f"  {label + ' p99':<44} {r['p99']:8.2f} ms")


def bench_wakeup(live: LiveStack, n_jobs: int) -> None:
    """Long polls (``Prefer: wait=60``): one job at a time, the delay from the worker's
    commit (the row's ``finished_at``) to the client holding the answer (its clock;
    one machine, one clock)."""
    import requests

    stack = live.get()
    files = real_files(n_jobs + 2)
    delays: list[float] = []
    total_ms: list[float] = []
    for i, f in enumerate(files):
        t = time.perf_counter()
        job_id = _submit(stack, f.name, f.read_bytes())
        r = requests.get(_job_url(stack, job_id), headers={"Prefer": "wait=60"}, timeout=90)
        seen = time.time()
        job = r.json()
        if job["status"] not in ("succeeded", "failed"):
            raise RuntimeError(f"long poll answered {job['status']}: {r.headers}")
        if i >= 2:  # two warm-up jobs
            delays.append((seen - _when(job["finished_at"])) * 1000)
            total_ms.append((time.perf_counter() - t) * 1000)
    print(f"wake-up on {live.kind}: {len(delays)} jobs one at a time, each long-polled (wait=60)")
    line("worker commit -> client has the answer", delays)
    line("upload start -> answer (long poll)", total_ms)


class _Waiter:
    """One raw HTTP/1.1 client holding a long poll open."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        import socket

        self.request = request
        self.sock = socket.create_connection((host, port))
        self.sock.sendall(request)

    def answered(self) -> bool:
        import select

        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


def _hold_waiters(stack: Any, url_path: str, count: int) -> list[_Waiter]:
    """``count`` clients long-polling ``url_path``; one answered at once (its process was
    full: gunicorn's workers take connections as they come, unevenly) connects again."""
    request = (f"GET {url_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nPrefer: wait=60\r\n\r\n").encode()
    waiters = [_Waiter("127.0.0.1", stack.port, request) for _ in range(count)]
    for _ in range(20):
        time.sleep(0.5)
        again = [w for w in waiters if w.answered()]
        if not again:
            break
        for w in again:
            w.close()
            waiters[waiters.index(w)] = _Waiter("127.0.0.1", stack.port, request)
    return waiters


def _held(stack: Any) -> float:
    import re

    import requests

    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    m = re.search(r"^tussis_long_poll_waiters\S* ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def bench_waiters(
    live: LiveStack, count: int, seconds: int, threads: int, connections: int
) -> None:
    """``count`` clients long-polling an open batch (it never completes, so they all wait)
    while wrk measures ``/healthz`` and 20 uploads are timed; the same without them first."""
    import io
    import zipfile

    import requests

    if _wrk(f"{live.get().url}/healthz", 1, 1, 1) is None:
        print("waiters: skipped: wrk is not installed (apt-get install wrk)")
        return
    stack = live.get()
    files = real_files(20)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.write(files[0], files[0].name)
    batch = requests.post(
        f"{stack.url}/api/v1/batches",
        files={"archive": ("one.zip", archive.getvalue())},
        data={"open": "true"},
        timeout=60,
    ).json()

    def uploads() -> list[float]:
        out = []
        for f in files:
            t = time.perf_counter()
            _submit(stack, f.name, f.read_bytes())
            out.append((time.perf_counter() - t) * 1000)
        return out

    print(
        f"waiters on {live.kind}: {count} clients long-polling an open batch, "
        f"wrk -t{threads} -c{connections} -d{seconds}s on /healthz, 20 uploads one at a time"
    )
    alone = _wrk(f"{stack.url}/healthz", seconds, threads, connections)
    up_alone = uploads()
    waiters = _hold_waiters(stack, f"/api/v1/batches/{batch['id']}", count)
    try:
        held = _held(stack)
        busy = _wrk(f"{stack.url}/healthz", seconds, threads, connections)
        up_busy = uploads()
        still = _held(stack)
    finally:
        for w in waiters:
            w.close()
    assert alone is not None and busy is not None
    print(f"  {'waiters held (tussis_long_poll_waiters)':<44} {held:8.0f}   (after: {still:.0f})")
    for name, r in (("GET /healthz alone", alone), (f"GET /healthz, {count} waiting", busy)):
        print(
            f"  {name:<44} {r['rps']:8.1f} req/s   p50 {r['p50']:7.2f} ms   p99 {r['p99']:7.2f} ms"
        )
    line("upload -> 202, nobody waiting", up_alone)
    line(f"upload -> 202, {count} waiting", up_busy)
    print(f"  {'healthz req/s with waiters / without':<44} {busy['rps'] / alone['rps']:8.2f}")
    ratio = statistics.median(up_busy) / statistics.median(up_alone)
    print(f"  {'upload p50 with waiters / without':<44} {ratio:8.2f}")


def bench_singles(live: LiveStack, n_files: int, concurrency: int) -> float:
    """The batch part's recordings as single jobs from ``concurrency`` clients: first
    upload -> last result, jobs/s (compared with the batch's clips/s in the same run)."""
    stack = live.get()
    files = real_files(n_files)
    blobs = [(f.name, f.read_bytes()) for f in files]
    print(
        f"singles on {live.kind}: {len(blobs)} single jobs from {concurrency} clients, "
        f"{live.children} child(ren), TUSSIS_COALESCE_JOBS={stack.settings.coalesce_jobs}"
    )
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        ids = list(pool.map(lambda b: _submit(stack, *b), blobs))
    uploaded = time.perf_counter() - t
    for job_id in ids:
        stack.wait_done(job_id, timeout=1800)
    seconds = time.perf_counter() - t
    rate = len(ids) / seconds
    print(f"  {'uploads/s':<44} {len(ids) / uploaded:8.1f}")
    print(f"  {'single jobs/s, first upload -> last result':<44} {rate:8.1f}")
    return rate


def bench_coldstart(children: int) -> None:
    """Worker cold start: process start -> first result. (1) The API is up and one job
    is waiting; the worker starts. (2) As ``make run`` does: API and worker start
    together, and the job is sent as soon as the API answers."""
    f = real_files(1)[0]
    data = f.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp))
        print(f"coldstart on {kind}: {children} worker child(ren), one job")
        try:
            stack.start_api()
            job_id = _submit(stack, f.name, data)
            t_wall, t = time.time(), time.perf_counter()
            stack.start_worker(children)
            t_ready = time.perf_counter() - t
            job = _poll_job(stack, job_id)
            t_seen = time.perf_counter() - t
            print(f"  {'worker start -> children ready (its log)':<44} {t_ready:8.2f} s")
            print(
                f"  {'worker start -> first result (finished_at)':<44} "
                f"{_when(job['finished_at']) - t_wall:8.2f} s   ({job['status']})"
            )
            print(f"  {'worker start -> client sees it (50 ms polls)':<44} {t_seen:8.2f} s")
        finally:
            stack.stop()
    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp))
        try:
            t_wall, t = time.time(), time.perf_counter()
            with ThreadPoolExecutor(1) as pool:
                worker = pool.submit(stack.start_worker, children)
                stack.start_api()
                t_api = time.perf_counter() - t
                job_id = _submit(stack, f.name, data)
                job = _poll_job(stack, job_id)
                t_seen = time.perf_counter() - t
                worker.result()
            print(f"  {'make-run start -> API answers /healthz':<44} {t_api:8.2f} s")
            print(
                f"  {'make-run start -> first result (finished_at)':<44} "
                f"{_when(job['finished_at']) - t_wall:8.2f} s   ({job['status']})"
            )
            print(f"  {'make-run start -> client sees it':<44} {t_seen:8.2f} s")
        finally:
            stack.stop()


POC_BUNDLE = ROOT / "var" / "models" / "inception-mixed8-fp32"


def bench_poc(n_files: int) -> float | None:
    """The proof of concept's way on ``n_files`` clips, one process: per clip, load the
    diagnosis bundle afresh, draw the mel spectrogram as a matplotlib figure, save it
    as a PNG, decode the PNG again, then predict with a batch of one."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display; what a server process uses
        import librosa
        import librosa.display
        import matplotlib.pyplot as plt
        from PIL import Image
    except ImportError as exc:
        print(f"poc: skipped: {exc.name} is not installed in this environment")
        return None
    import io

    from ml import backbones
    from ml.model import load_model

    settings = load_settings()
    files = real_files(n_files)
    blobs = [f.read_bytes() for f in files]
    # The proof of concept's own network: Inception V3 (the fp32 mixed8 bundle that
    # `make bench-inception` trains). Without it, the shipped bundle stands in, which
    # loads and predicts far faster than an Inception V3, so the ratio is then low.
    bundle = POC_BUNDLE if (POC_BUNDLE / "manifest.json").is_file() else settings.model_bundle

    def one_clip(blob: bytes) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        # The per-process YAMNet interpreter cache would turn every load after the
        # first into a dictionary lookup; the proof of concept built its model anew.
        backbones._yamnet_instances.clear()
        model = load_model(bundle, yamnet_model=settings.yamnet_model)
        t1 = time.perf_counter()
        samples = decode(blob, model.sample_rate).samples
        sr = model.sample_rate
        power = librosa.feature.melspectrogram(y=samples, sr=sr, n_fft=1024, hop_length=256)
        db = librosa.amplitude_to_db(power, ref=np.max)  # as the proof of concept did
        fig, ax = plt.subplots(figsize=(2.99, 2.99), dpi=100)  # a 299x299 picture
        librosa.display.specshow(db, sr=sr, hop_length=256, x_axis="time", y_axis="mel", ax=ax)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        # The decoded picture is what its Inception V3 was fed. A bundle renders its
        # own spectrogram from the waveform in predict, so the picture here only costs
        # what it cost then (the network's forward pass is paid in predict).
        np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        t2 = time.perf_counter()
        model.predict([samples])  # a batch of one
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    # What a long-running proof-of-concept server paid once, not per clip: imports,
    # TensorFlow's start, numba's compilation of librosa, matplotlib's font cache.
    one_clip(blobs[0])
    t = time.perf_counter()
    parts = [one_clip(b) for b in blobs]
    rate = len(blobs) / (time.perf_counter() - t)
    print(
        f"poc: the proof of concept's way, 1 process, {len(blobs)} clips "
        "(model loaded per clip, matplotlib figure -> PNG -> decode, batch of one), "
        f"bundle {bundle}"
    )
    line("load the bundle", [p[0] * 1000 for p in parts])
    line("decode + figure -> PNG -> decoded picture", [p[1] * 1000 for p in parts])
    line("predict, batch of one", [p[2] * 1000 for p in parts])
    print(f"  {'clips/s':<44} {rate:8.2f}")
    return rate


def _start_named_worker(stack: Any, name: str, beat: bool) -> tuple[Any, Path]:
    """A ``celery worker --concurrency 1 -n NAME@%h`` on ``stack``'s settings and queue,
    as ``Stack.start_worker`` starts one; only one of them runs beat (the sweeper), as a
    deployment of several workers would."""
    from tests.stack import BIN

    log = stack.log_dir / f"worker-{name}.log"
    schedule = ["--beat", "--schedule", str(stack.settings.data_dir / f"beat-{name}")]
    args = [str(BIN / "celery"), "-A", "worker.celery_app", "worker"]
    args += [*(schedule if beat else []), "--concurrency", "1", "--loglevel", "INFO"]
    return stack._spawn([*args, "-n", f"{name}@%h"], log), log


def bench_scale(counts: list[int], n_files: int) -> dict[int, float]:
    """Scale-out: N celery worker processes, each ``--concurrency 1`` with its own node
    name, on the same database, broker and queue, the same zip for each N. Workers are
    added between runs (1, then 1 more, then 2 more) rather than all restarted: each
    start loads the models, the longest part of the run on a small machine."""
    import io
    import signal
    import zipfile

    import requests

    from tests.stack import wait_until

    files = real_files(n_files)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f.name)
    rates: dict[int, float] = {}
    run = uuid.uuid4().hex[:4]  # node names unique to this run: others may share Redis
    workers: list[tuple[Any, Path]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp))
        print(
            f"scale on {kind}: one zip of {len(files)} recordings; worker processes "
            f"{', '.join(map(str, counts))}, each --concurrency 1 (-n w<i>-{run}@%h)"
        )

        def ready() -> bool:
            for proc, log in workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"celery worker exited: {stack.tail(log)}")
            texts = [log.read_text(errors="replace") for _, log in workers]
            return all(" ready in " in t and " ready." in t for t in texts)

        try:
            stack.start_api()
            for n in sorted(set(counts)):
                t = time.perf_counter()
                while len(workers) < n:
                    i = len(workers) + 1
                    workers.append(_start_named_worker(stack, f"w{i}-{run}", beat=i == 1))
                wait_until(ready, 600, f"{n} worker(s) to load their models")
                started = time.perf_counter() - t
                t = time.perf_counter()
                r = requests.post(
                    f"{stack.url}/api/v1/batches",
                    files={"archive": ("study.zip", archive.getvalue())},
                    timeout=600,
                )
                r.raise_for_status()
                batch = _wait_batch(stack, r.json()["id"])
                seconds = time.perf_counter() - t
                rates[n] = len(files) / seconds
                print(
                    f"  {f'{n} worker process(es) x 1 child':<44} {rates[n]:8.1f} clips/s   "
                    f"({seconds:.2f} s; succeeded {batch['counts']['succeeded']}, "
                    f"failed {batch['counts']['failed']}; workers started in {started:.1f} s)"
                )
        finally:
            stack.stop()
            for proc, _ in workers:
                stack._stop(proc, signal.SIGTERM)
    ordered = sorted(rates)
    if len(ordered) > 1:
        base = rates[ordered[0]]
        speedups = ", ".join(f"{n}: {rates[n] / base:.2f}" for n in ordered[1:])
        print(f"  {f'clips/s relative to {ordered[0]} worker(s)':<44} {speedups}")
    return rates


def bench_evaluation(n_items: int, n_groups: int, requests_timed: int = 20) -> None:
    """Issue 24: the evaluation endpoint's CPU per request, before and after it was
    computed once by a worker and stored. In-process, on SQLite, no worker needed: the
    worker's function runs here."""
    from api import create_app
    from shared import batches, evaluations
    from shared.db import session_scope
    from shared.tables import BatchStatus
    from tests.conftest import base_settings, migrate
    from worker.evaluation import Cohort, pictures, report

    rng = np.random.default_rng(1)
    cohort = Cohort("bench", "1", {"threshold": 0.5, "labels": ["not sick", "sick"]})
    cohort.labels = rng.integers(0, 2, n_items).tolist()
    cohort.scores = rng.random(n_items).tolist()
    cohort.groups = [f"g{i % n_groups}" for i in range(n_items)]
    print(f"evaluation: {n_items} items in {n_groups} groups")

    def every_group() -> None:  # what each request computed before (bar the O(n x g) split)
        groups, _ = cohort.group_arrays(limit=n_groups)
        from shared import metrics

        for gy, gs in groups.values():
            metrics.summarise(gy, gs, 0.5, 0)
        metrics.summarise(*cohort.arrays(), 0.5, 0)

    before_ms = timed(every_group, 1)[0]
    started = time.perf_counter()
    body = report(cohort)
    roc, calibration = pictures(cohort)
    once = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        settings = base_settings(Path(tmp), api_keys={"k": "bench"})
        migrate(settings.database_url)
        with session_scope(settings.database_url) as session:
            batch = batches.create(session, "bench", None)
            batch.status, batch_id = BatchStatus.COMPLETED, batch.id
        with session_scope(settings.database_url) as session:
            evaluations.request(session, batch_id)
        with session_scope(settings.database_url) as session:
            asked = evaluations.claimed_at(session, batch_id)
            assert asked is not None
            evaluations.store(
                session, batch_id, evaluations.DEFAULT, asked, body=body,
                roc_png=roc, calibration_png=calibration,
            )  # fmt: skip
        client = create_app(settings).test_client()
        url = f"/api/v1/batches/{batch_id}/evaluation"
        headers = {"Authorization": "Bearer k"}
        assert client.get(url, headers=headers).status_code == 200
        stored = timed(lambda: client.get(url, headers=headers), requests_timed)
    line("a request now, from the stored row", stored)
    print(f"  {'per request before (every group, in the API)':<44} {before_ms / 1000:8.2f} s")
    print(f"  {'once now, by a worker (50 largest groups)':<44} {once:8.2f} s")
    ratio = before_ms / statistics.median(stored)
    print(f"  {'a request before / a request now, same run':<44} {ratio:8.0f}x")


def bench_compare(n_items: int, n_groups: int = 2, requests_timed: int = 20) -> None:
    """Issue 25: ``/evaluation?compare=`` on two batches of the same ``n_items``
    recordings scored by two models. In-process, on SQLite: the worker's function runs
    here over two hand-built cohorts, its result is stored as a worker stores it, and
    the API answers warm requests from the row."""
    from api import create_app
    from shared import batches, evaluations
    from shared.db import session_scope
    from shared.tables import BatchStatus
    from tests.conftest import base_settings, migrate
    from worker.evaluation import Cohort, comparison

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, n_items).tolist()
    cohorts = []
    for name, signal in (("first", 0.3), ("second", 0.6)):
        cohort = Cohort(name, "1", {"threshold": 0.5, "labels": ["not sick", "sick"]})
        cohort.labels = labels
        noise = 0.3 * rng.standard_normal(n_items)
        cohort.scores = np.clip(0.5 + signal * (np.array(labels) - 0.5) + noise, 0, 1).tolist()
        cohort.groups = [f"g{i % n_groups}" for i in range(n_items)]
        cohort.sha256s = [f"{i:064x}" for i in range(n_items)]
        cohort.seen = [None] * n_items
        cohort.duration_s = rng.random(n_items).tolist()
        cohort.active_share = rng.random(n_items).tolist()
        cohort.loudness_db = (-40 * rng.random(n_items)).tolist()
        cohorts.append(cohort)
    print(f"compare: two models on the same {n_items} recordings in {n_groups} groups")
    started = time.perf_counter()
    comparison(*cohorts)  # a worker child's first: imports matplotlib and scipy.stats
    cold = time.perf_counter() - started
    started = time.perf_counter()
    body, roc = comparison(*cohorts)
    once = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        settings = base_settings(Path(tmp), api_keys={"k": "bench"})
        migrate(settings.database_url)
        with session_scope(settings.database_url) as session:
            ids = []
            for _ in range(2):
                batch = batches.create(session, "bench", None)
                batch.status = BatchStatus.COMPLETED
                ids.append(batch.id)
        variant = evaluations.compare_variant(ids[1])
        with session_scope(settings.database_url) as session:
            evaluations.request(session, ids[0], variant)
        with session_scope(settings.database_url) as session:
            asked = evaluations.claimed_at(session, ids[0], variant)
            assert asked is not None
            evaluations.store(session, ids[0], variant, asked, body=body, roc_png=roc)
        client = create_app(settings).test_client()
        url = f"/api/v1/batches/{ids[0]}/evaluation?compare={ids[1]}"
        headers = {"Authorization": "Bearer k"}
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        stored = timed(lambda: client.get(url, headers=headers), requests_timed)
    o = body["overall"]
    print(
        f"  AUC first {o['auc_first']:.3f}, second {o['auc_second']:.3f}, difference "
        f"{o['difference']:+.3f} (DeLong 95 % CI {o['delong']['ci'][0]:+.3f} to "
        f"{o['delong']['ci'][1]:+.3f}; paired bootstrap {o['bootstrap_ci'][0]:+.3f} to "
        f"{o['bootstrap_ci'][1]:+.3f})"
    )
    print(f"  {'computed by a worker child, its first (cold)':<44} {cold:8.2f} s")
    print(f"  {'computed once, by a warm worker child':<44} {once:8.2f} s")
    line("a warm request, from the stored row", stored)
    total = once + statistics.median(stored) / 1000
    print(f"  {'warm worker once + a request, same run':<44} {total:8.2f} s")


def machine() -> str:
    """The CPU model (lscpu's "Model name") and the load average now: absolute figures
    mean little without them on a machine other work shares."""
    import subprocess

    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (r.split(":", 1)[1].strip() for r in out.splitlines() if r.startswith("Model name")),
            model,
        )
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return f"{model}, {os.cpu_count()} CPUs; load average {load}"


DEFAULT_BUNDLE = ROOT / "models" / "default"
INCEPTION_BUNDLE = ROOT / "models" / "inception"


def labelled_files(count: int) -> list[Path]:
    """``count`` recordings of at least 0.3 s taken in turn from each (source, covid19)
    stratum of the data set, so both labels and both sources are in the batch (the data
    set's first 400 entries in file order are all negative)."""
    strata: dict[tuple[str, bool], list[Path]] = {}
    for m in json.loads((COUGHS / "metadata.json").read_text()):
        strata.setdefault((m["source"], bool(m["covid19"])), []).append(
            COUGHS / "raw" / m["filename"]
        )
    queues = [iter(v) for _, v in sorted(strata.items())]
    good: list[Path] = []
    while queues and len(good) < count:
        for q in list(queues):
            f = next(q, None)
            if f is None:
                queues.remove(q)
                continue
            if usable(f):
                good.append(f)
            if len(good) == count:
                break
    return good


def _labelled_zip(files: list[Path]) -> tuple[bytes, dict[str, int]]:
    """A zip of ``files`` with a labels.csv: the label from the data set's metadata.json
    (``covid19`` true: sick), the group its ``source``; and the recordings per group."""
    import csv
    import io
    import zipfile

    meta = {m["filename"]: m for m in json.loads((COUGHS / "metadata.json").read_text())}
    table = io.StringIO()
    rows = csv.writer(table, lineterminator="\n")
    rows.writerow(["path", "label", "group"])
    groups: dict[str, int] = {}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            m = meta[f.name]
            z.write(f, f.name)
            rows.writerow([f.name, "sick" if m["covid19"] else "not sick", m["source"]])
            groups[m["source"]] = groups.get(m["source"], 0) + 1
        z.writestr("labels.csv", table.getvalue())
    return archive.getvalue(), groups


def _until_200(url: str, timeout: float = 600) -> tuple[float, int, Any]:
    """GET ``url`` every 50 ms while it answers 202 (a worker computing it): seconds
    from the first request to the 200, the 202s before it, and that answer; a refusal
    is printed, and None."""
    import requests

    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    waits = 0
    while True:
        r = requests.get(url, timeout=60)
        if r.status_code == 200:
            return time.perf_counter() - started, waits, r
        if r.status_code != 202:
            print(f"  GET {url.split('/api/v1', 1)[1]}: {r.status_code} {r.text[:300].strip()}")
            return time.perf_counter() - started, waits, None
        waits += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} still 202 after {timeout:.0f} s")
        time.sleep(0.05)


def _get_ok(url: str) -> None:
    import requests

    requests.get(url, timeout=60).raise_for_status()


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _compared_line(name: str, c: dict[str, Any]) -> str:
    ci = c["delong"]["ci"] if c.get("delong") else None
    boot = c.get("bootstrap_ci")
    diff = "n/a" if c.get("difference") is None else f"{c['difference']:+.3f}"
    return (
        f"  {name:<14} n={c['n']:<4} positives {c['positives']:<4} AUC first "
        f"{_auc(c['auc_first'])}, second {_auc(c['auc_second'])}, difference {diff}"
        + (f" (DeLong 95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else " (DeLong: n/a")
        + (f"; paired bootstrap {boot[0]:+.3f} to {boot[1]:+.3f})" if boot else ")")
    )


def bench_rescore(n_files: int, children: int, requests_timed: int = 20) -> None:
    """Issue 25's target on the live stack: a labelled zip of ``n_files`` recordings
    scored by the default YAMNet bundle, re-scored with Inception V3 from its stored
    audio (``POST /batches/{id}/rescore``, no upload), then the paired comparison
    ``GET /batches/{first}/evaluation?compare={second}`` and its ROC figure: the first
    request (a worker computes and stores it meanwhile) and warm ones (the stored row).
    One worker with ``children`` children, each holding both bundles."""
    import requests

    for bundle in (DEFAULT_BUNDLE, INCEPTION_BUNDLE):
        if not (bundle / "manifest.json").is_file():
            print(f"rescore: skipped: no bundle at {bundle} (make models / make inception-model)")
            return
    first_model = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["name"]
    second_model = json.loads((INCEPTION_BUNDLE / "manifest.json").read_text())["name"]
    files = labelled_files(n_files)
    data, groups = _labelled_zip(files)
    print(f"machine: {machine()} (before the rescore part; other sessions share it)")
    with tempfile.TemporaryDirectory() as tmp:
        stack, kind = _stack(Path(tmp), model_bundles=(DEFAULT_BUNDLE, INCEPTION_BUNDLE))
        print(
            f"rescore on {kind}: one labelled zip of {len(files)} recordings "
            f"({statistics_str(groups)}), {first_model} then {second_model}; "
            f"one worker, {children} child(ren) each holding both bundles"
        )
        try:
            stack.start_api()
            t = time.perf_counter()
            # Inception V3 costs a child 20 to 80 s to load on a shared machine.
            stack.start_worker(children, timeout=600)

            def both_served() -> bool:
                models = requests.get(f"{stack.url}/api/v1/models", timeout=30).json()["models"]
                return {first_model, second_model} <= {m["id"] for m in models if m["active"]}

            from tests.stack import wait_until

            wait_until(both_served, 120, "the API to list both models as served")
            loaded = time.perf_counter() - t
            print(f"  {'worker start -> every child holds both':<44} {loaded:8.2f} s")

            t = time.perf_counter()
            r = requests.post(
                f"{stack.url}/api/v1/batches",
                files={"archive": ("study.zip", data)},
                data={"model": first_model},
                timeout=600,
            )
            r.raise_for_status()
            first_id = r.json()["id"]
            uploaded = time.perf_counter() - t
            first = _wait_batch(stack, first_id)
            first_s = time.perf_counter() - t
            print(f"  first batch ({first_model})")
            print(f"  {'  upload (zip -> 202)':<44} {uploaded:8.2f} s")
            print(f"  {'  upload start -> completed':<44} {first_s:8.2f} s")
            print(f"  {'  clips/s end to end':<44} {len(files) / first_s:8.1f}")
            print(f"  {'  counts':<44} {first['counts']}")

            t = time.perf_counter()
            r = requests.post(
                f"{stack.url}/api/v1/batches/{first_id}/rescore",
                data={"model": second_model},
                timeout=600,
            )
            if r.status_code != 202:
                raise RuntimeError(f"rescore refused: {r.status_code} {r.text[:500]}")
            second_id = r.json()["id"]
            accepted = time.perf_counter() - t
            second = _wait_batch(stack, second_id)
            second_s = time.perf_counter() - t
            print(f"  rescored ({second_model}), no upload")
            print(f"  {'  rescore request -> 202':<44} {accepted * 1000:8.1f} ms")
            print(f"  {'  rescore request -> completed':<44} {second_s:8.2f} s")
            print(f"  {'  clips/s':<44} {second['total'] / second_s:8.1f}")
            print(f"  {'  counts':<44} {second['counts']}")
            if second["counts"].get("failed"):
                print(f"  {'  why the failed ones failed':<44} {_failure_codes(stack, second_id)}")
            print(f"  machine: {machine()} (after the two batches)")

            base = f"{stack.url}/api/v1/batches/{first_id}/evaluation"
            answers: dict[str, Any] = {}
            cold_compare = float("nan")
            for label, url in (
                ("evaluation?compare=", f"{base}?compare={second_id}"),
                ("evaluation/roc.png?compare=", f"{base}/roc.png?compare={second_id}"),
            ):
                cold, waits, answer = _until_200(url)
                if answer is None:
                    continue
                answers[label] = answer
                if label == "evaluation?compare=":
                    cold_compare = cold
                warm = timed(partial(_get_ok, url), requests_timed)
                print(f"  GET {label} ({len(answer.content)} bytes)")
                # The figure is stored with the JSON, by the same worker run: its first
                # request finds the row there (0 x 202), as a client's would.
                first_label = f"  first request -> 200 ({waits} x 202 before)"
                print(f"  {first_label:<44} {cold:8.2f} s")
                line("  warm request (the stored row)", warm)
            if "evaluation?compare=" in answers:
                verdict = "met" if cold_compare < 2 else "missed"
                print(
                    f"  {'issue 25 target: the comparison under 2 s':<44} "
                    f"{verdict} (first request {cold_compare:.2f} s)"
                )
            print(f"  machine: {machine()} (after the comparison)")
        finally:
            stack.stop()
    if "evaluation?compare=" not in answers:
        return
    body = answers["evaluation?compare="].json()
    print("comparison headline (the second minus the first):")
    print(
        f"  first {body['first']['id']} {body['first']['version']}, second "
        f"{body['second']['id']} {body['second']['version']}"
    )
    print(f"  items: {body['items']['message']} compared: {body['items']['compared']}")
    print(_compared_line("overall", body["overall"]))
    for name, c in body["groups"].items():
        print(_compared_line(name, c))


def statistics_str(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


PARTS = [
    "components",
    "service",
    "bare",
    "bare-yamnet",
    "batch",
    "latency",
    "polls",
    "conditional",
    "wakeup",
    "waiters",
    "singles",
    "rss",
    "coldstart",
    "poc",
    "scale",
    "evaluation",
    "compare",
    "rescore",
    "decode-strategies",
    "long",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "parts",
        metavar="part",
        choices=[*PARTS, "all"],
        nargs="*",
        default="all",  # a string: argparse checks a list default against choices as one value
        help=f"one or more of: {', '.join(PARTS)}, all (default)",
    )
    parser.add_argument("--files", type=int, default=50, help="recordings for component timings")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="uploading clients")
    parser.add_argument("--children", type=int, default=1, help="worker child processes")
    parser.add_argument("--batch-files", type=int, default=400, help="recordings in the zip")
    parser.add_argument("--latency-jobs", type=int, default=50, help="jobs timed one at a time")
    parser.add_argument("--warmup", type=int, default=3, help="latency: untimed jobs first")
    parser.add_argument("--poll-seconds", type=int, default=10, help="polls: wrk -d per URL")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--waiters", type=int, default=500, help="waiters: long-polling clients")
    parser.add_argument("--poc-files", type=int, default=10, help="clips for the poc part")
    parser.add_argument(
        "--scale", default="1,2,4", help="scale: worker processes per run, comma-separated"
    )
    parser.add_argument("--scale-files", type=int, default=200, help="scale: recordings in the zip")
    parser.add_argument("--eval-items", type=int, default=10_000, help="evaluation: items")
    parser.add_argument(
        "--compare-items", type=int, default=400, help="compare: recordings in the pair"
    )
    parser.add_argument(
        "--rescore-files", type=int, default=400, help="rescore: recordings in the labelled zip"
    )
    parser.add_argument("--eval-groups", type=int, default=5_000, help="evaluation: groups")
    parser.add_argument("--hours", type=float, default=8.0, help="long: the recording's hours")
    parser.add_argument(
        "--minutes", type=float, default=30.0, help="decode-strategies: the MP3's minutes"
    )
    parser.add_argument(
        "--segment-s",
        type=float,
        action="append",
        help="long: TUSSIS_SEGMENT_S for the stack (repeat to compare sizes in one run)",
    )
    args = parser.parse_args()
    chosen = [args.parts] if isinstance(args.parts, str) else args.parts
    parts = set(PARTS) if "all" in chosen else set(chosen)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    if "components" in parts:
        bench_components(args.files)
    if "service" in parts:
        bench_service(args.jobs, args.concurrency, args.children)
    bare = bare_yamnet = batch = singles = None
    if parts & {"bare", "batch", "bare-yamnet"}:
        bare = bench_bare(args.batch_files, args.children)
    if "bare-yamnet" in parts:
        bare_yamnet = bench_bare_yamnet(args.batch_files, args.children)
        if bare:
            ratio = bare / bare_yamnet
            print(f"bare loop (gate + diagnosis) / bare-yamnet, clips/s, same run: {ratio:.2f}")
    live = LiveStack(args.children)
    try:
        if parts & {"batch", "rss"}:
            batch = bench_batch(live, args.batch_files)
        if "singles" in parts:
            singles = bench_singles(live, args.batch_files, args.concurrency)
        if "latency" in parts:
            bench_latency(live, args.latency_jobs, args.warmup)
        if "wakeup" in parts:
            bench_wakeup(live, args.latency_jobs)
        if parts & {"polls", "conditional"}:
            bench_polls(
                live,
                args.poll_seconds,
                args.wrk_threads,
                args.wrk_connections,
                conditional="conditional" in parts,
            )
        if "waiters" in parts:
            bench_waiters(
                live, args.waiters, args.poll_seconds, args.wrk_threads, args.wrk_connections
            )
        if "rss" in parts:
            ran = [p for p in ("batch", "singles", "latency", "polls") if p in parts] or ["batch"]
            print_rss(live.get(), f"after the {' + '.join(ran)} run")
    finally:
        live.close()
    if singles and batch:
        print(f"single jobs / the same recordings as a batch, same run: {singles / batch:.2f}")
    if singles and bare_yamnet:
        print(f"single jobs / bare-yamnet, same run: {singles / bare_yamnet:.2f}")
    if bare and batch:
        print(f"pipeline efficiency (batch end to end / bare loop, same run): {batch / bare:.2f}")
    if bare_yamnet and batch:
        print(
            f"pipeline efficiency (batch end to end / bare-yamnet, same run): "
            f"{batch / bare_yamnet:.2f}"
        )
    if "coldstart" in parts:
        bench_coldstart(args.children)
    if "poc" in parts:
        poc = bench_poc(args.poc_files)
        if poc:
            loop = bench_bare(args.poc_files, 1)
            ratio = loop / poc
            print(f"bare loop / the proof of concept's way, same clips, same run: {ratio:.1f}x")
    if "scale" in parts:
        bench_scale([int(n) for n in args.scale.split(",") if n.strip()], args.scale_files)
    if "compare" in parts:
        bench_compare(args.compare_items)
    if "rescore" in parts:
        bench_rescore(args.rescore_files, args.children)
    if "evaluation" in parts:
        bench_evaluation(args.eval_items, args.eval_groups)
    if "decode-strategies" in parts:
        from bench_long import bench_decode_strategies

        bench_decode_strategies(args.minutes)
    if "long" in parts:
        from bench_long import bench_long

        for segment_s in args.segment_s or [None]:
            bench_long(args.hours, args.children, segment_s)


if __name__ == "__main__":
    main()
