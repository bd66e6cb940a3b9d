"""Routing work to several diagnosis bundles: memory and throughput both ways, in one run.

Prints figures, asserts nothing. Two worker children on this machine, loaded with
the real loaders (``ml.model.load_model``, as ``worker/runtime.py`` does: the cough
gate plus the child's diagnosis bundles, warmed up), each a fresh spawned process
as a Celery prefork child is (TensorFlow is never loaded before a fork:
../shared/docs/design-notes.md):

  (a) every child loads every bundle: two children of one worker, each holding
      YAMNet + Inception (``TUSSIS_WORKER_CONCURRENCY=2``: one TensorFlow thread each);
  (b) one bundle per child (a queue per model, one worker per model): a YAMNet-only
      child and an Inception-only child (each worker concurrency 1: two threads);
  (c) the baseline, YAMNet served alone: two children holding YAMNet only.

All six children are started first and measured in turns, the configurations
interleaved round by round (``--rounds``), so the machine's other load falls on
each alike; figures are the median over rounds. A "clip" is what a worker does
for one job: decode to 16 kHz, the cough gate, the diagnosis model (YAMNet's pass
is shared by gate and YAMNet bundle, as in the worker). YAMNet clips/s is over
the children that hold YAMNet, splitting the clips between them.

    .venv/bin/python scripts/bench_routing.py            # --clips 120 --rounds 9
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import real_files  # noqa: E402

from shared.config import load_settings  # noqa: E402

YAMNET_BUNDLE = ROOT / "models" / "default"
INCEPTION_BUNDLE = ROOT / "models" / "inception"
GIB = 1024**3


def _status_bytes(field: str) -> int:
    """VmRSS or VmHWM of this process, in bytes (Linux)."""
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1]) * 1024
    return 0


def _child(conn: Connection, bundles: dict[str, str], threads: int) -> None:
    """One worker child: load the gate and ``bundles`` (key -> path) as the worker
    does, report load times and RSS, then serve ("run", key, paths) requests."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml.backbones import shared_yamnet
    from ml.model import load_model
    from shared.audio import decode

    s = load_settings()

    def load(path: Path) -> Any:
        return load_model(
            path,
            inception_weights=s.inception_weights,
            yamnet_model=s.yamnet_model,
            yamnet_url=s.yamnet_url,
            threads=threads,
        )

    loaded: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    t = time.perf_counter()
    gate = load(s.cough_gate_bundle) if s.cough_gate_bundle else None
    if gate is not None:
        gate.warm_up()
    load_s["gate"] = time.perf_counter() - t
    for key, path in bundles.items():
        t = time.perf_counter()
        loaded[key] = load(Path(path))
        loaded[key].warm_up()  # graph tracing and the renderer's numba code, as at start
        load_s[key] = time.perf_counter() - t
    conn.send({"load_s": load_s, "rss": _status_bytes("VmRSS"), "pid": os.getpid()})
    yamnet = shared_yamnet(s.yamnet_model, s.yamnet_url)
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        _, key, paths = message
        model = loaded[key]
        t, cpu = time.perf_counter(), time.process_time()
        for p in paths:
            samples = decode(Path(p).read_bytes(), model.sample_rate).samples
            # Identical files recur in the data set and each round repeats the clips:
            # every clip pays its own YAMNet pass, never a hit in the recent-clips memo.
            yamnet.forget()
            if gate is None or gate.predict([samples])[0].diagnosis == "cough":
                model.predict([samples])
        conn.send(
            {
                "clips": len(paths),
                "seconds": time.perf_counter() - t,
                # CPU time of every thread of this process: what a clip costs, whatever
                # else the shared machine runs meanwhile.
                "cpu_s": time.process_time() - cpu,
                "rss": _status_bytes("VmRSS"),
                "hwm": _status_bytes("VmHWM"),
            }
        )


class Child:
    def __init__(self, ctx: Any, name: str, bundles: dict[str, Path], threads: int) -> None:
        self.name = name
        self.bundles = bundles
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(
            target=_child,
            args=(theirs, {k: str(v) for k, v in bundles.items()}, threads),
            name=name,
        )
        self.process.start()
        self.loaded: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def wait_loaded(self) -> None:
        self.loaded = self.conn.recv()

    def stop(self) -> None:
        self.conn.send(("stop",))
        self.process.join(60)


def run(children: list[Child], key: str, files: list[str]) -> tuple[float, float]:
    """Split ``files`` over ``children`` (all at once): clips/s over the slowest, and
    CPU milliseconds per clip."""
    for i, child in enumerate(children):
        child.conn.send(("run", key, files[i :: len(children)]))
    results = [child.conn.recv() for child in children]
    for child, result in zip(children, results, strict=True):
        child.last = result
    clips = sum(r["clips"] for r in results)
    return clips / max(r["seconds"] for r in results), 1000 * sum(
        r["cpu_s"] for r in results
    ) / clips


def cpu_name() -> str:
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=120, help="YAMNet clips per measurement")
    parser.add_argument(
        "--inception-clips", type=int, default=24, help="Inception clips per measurement"
    )
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for bundle in (YAMNET_BUNDLE, INCEPTION_BUNDLE):
        if not (bundle / "manifest.json").is_file():
            sys.exit(f"no bundle at {bundle}: run make models (or make inception-model)")

    files = [str(f) for f in real_files(args.clips)]
    inception_files = files[: args.inception_clips]
    cores = os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    both = {"yamnet": YAMNET_BUNDLE, "inception": INCEPTION_BUNDLE}
    # Threads as worker/runtime.py gives them: cores // the worker's concurrency.
    configs: dict[str, list[Child]] = {
        "a": [Child(ctx, f"a{i}", both, max(1, cores // 2)) for i in range(2)],
        "b": [
            Child(ctx, "b-yamnet", {"yamnet": YAMNET_BUNDLE}, cores),
            Child(ctx, "b-inception", {"inception": INCEPTION_BUNDLE}, cores),
        ],
        "c": [Child(ctx, f"c{i}", {"yamnet": YAMNET_BUNDLE}, max(1, cores // 2)) for i in range(2)],
    }
    load = os.getloadavg()
    for children in configs.values():
        for child in children:
            child.wait_loaded()

    yamnet_rates: dict[str, list[float]] = {k: [] for k in configs}
    yamnet_cpu: dict[str, list[float]] = {k: [] for k in configs}
    inception_rates: dict[str, list[float]] = {"a": [], "b": []}
    inception_cpu: dict[str, list[float]] = {"a": [], "b": []}
    hwm: dict[str, int] = {}
    try:
        for r in range(args.rounds):
            # The order turns each round, so no configuration always runs first.
            order = ["c", "a", "b"][r % 3 :] + ["c", "a", "b"][: r % 3]
            for key in order:
                holders = [c for c in configs[key] if "yamnet" in c.bundles]
                rate, cost = run(holders, "yamnet", files)
                yamnet_rates[key].append(rate)
                yamnet_cpu[key].append(cost)
            for key in ("a", "b") if r % 2 == 0 else ("b", "a"):
                holders = [c for c in configs[key] if "inception" in c.bundles]
                rate, cost = run(holders, "inception", inception_files)
                inception_rates[key].append(rate)
                inception_cpu[key].append(cost)
        for children in configs.values():
            for child in children:
                hwm[child.name] = child.last.get("hwm", 0)
    finally:
        for children in configs.values():
            for child in children:
                child.stop()
    load_after = os.getloadavg()

    print(f"Routing two diagnosis bundles, {cores} cores: {cpu_name()}")
    print(
        f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, at end "
        f"{load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} (a shared machine: "
        "other sessions' processes run beside this one)"
    )
    print(
        f"{len(files)} real clips from {Path(files[0]).parent.parent.name} for YAMNet, "
        f"{len(inception_files)} for Inception; median of {args.rounds} interleaved rounds; "
        "a clip = decode + cough gate + diagnosis"
    )
    print()
    print(f"{'child':<14} {'bundles':<26} {'RSS loaded':>11} {'peak RSS':>10}  load s")
    for children in configs.values():
        for child in children:
            loads = ", ".join(f"{k} {v:.1f}" for k, v in child.loaded["load_s"].items())
            print(
                f"{child.name:<14} {'gate + ' + ' + '.join(child.bundles):<26} "
                f"{child.loaded['rss'] / GIB:9.2f} G {hwm[child.name] / GIB:8.2f} G  {loads}"
            )
    print()
    med = {k: statistics.median(v) for k, v in yamnet_rates.items()}
    names = {
        "a": "(a) every child loads every bundle, YAMNet on 2 children",
        "b": "(b) one bundle per child, YAMNet on its 1 child",
        "c": "(c) YAMNet served alone, 2 children",
    }
    cpu = {k: statistics.median(v) for k, v in yamnet_cpu.items()}
    print("YAMNet clips/s, median [each round]; CPU ms per clip, median")
    for key in ("a", "b", "c"):
        rounds = " ".join(f"{r:.1f}" for r in yamnet_rates[key])
        print(f"  {names[key]:<58} {med[key]:7.1f} clips/s  {cpu[key]:6.1f} ms  [{rounds}]")
    print(
        f"  clips/s ratio (a)/(c) {med['a'] / med['c']:.3f}   (b)/(c) {med['b'] / med['c']:.3f};"
        f"   CPU per clip ratio (a)/(c) {cpu['a'] / cpu['c']:.3f}   (b)/(c) "
        f"{cpu['b'] / cpu['c']:.3f}"
    )
    # Each round's configurations ran back to back: their ratio within a round is less
    # exposed to the other sessions' load, which changes from minute to minute.
    paired = {
        k: statistics.median(x / y for x, y in zip(yamnet_rates[k], yamnet_rates["c"], strict=True))
        for k in ("a", "b")
    }
    print(
        f"  clips/s ratio within each round, median: (a)/(c) {paired['a']:.3f}   "
        f"(b)/(c) {paired['b']:.3f}"
    )
    print("Inception clips/s, median [each round]; CPU ms per clip, median")
    for key, label in (("a", "(a) on 2 children"), ("b", "(b) on its 1 child")):
        rounds = " ".join(f"{r:.1f}" for r in inception_rates[key])
        print(
            f"  {label:<58} {statistics.median(inception_rates[key]):7.1f} clips/s  "
            f"{statistics.median(inception_cpu[key]):6.1f} ms  [{rounds}]"
        )
    peak = {
        key: max(max(hwm[c.name], c.loaded["rss"]) for c in children)
        for key, children in configs.items()
    }
    print(
        "largest child peak RSS: "
        + ", ".join(f"({k}) {v / GIB:.2f} GiB" for k, v in peak.items())
        + "   (target: within 1.2 GiB)"
    )


if __name__ == "__main__":
    main()
