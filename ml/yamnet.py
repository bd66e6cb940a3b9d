"""YAMNet (AudioSet event classifier, TFLite): per-window class scores and
1,024-d embeddings for 16 kHz mono audio.

The TFLite file is looked up at ``TUSSIS_YAMNET_MODEL`` (``shared.config``). Where it is missing,
it is downloaded once from ``TUSSIS_YAMNET_URL`` and accepted only if its
SHA-256 matches the pinned digest, so a changed upstream file cannot silently
change every prediction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 15600  # 0.975 s: the network's fixed input
HOP = 7680  # 0.48 s, YAMNet's own patch hop
EMBEDDING_TENSOR = "yamnet_frames/global_average_pooling2d/Mean"
SHA256 = "469be6a3421cbc52cf97e9f2f966cba984198e8e7af9854d68b3e3ebb1e04194"
# AudioSet class indices (yamnet_class_map.csv).
SPEECH, COUGH, THROAT_CLEARING, SNEEZE = 0, 42, 43, 44


class YamnetUnavailable(Exception):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_model_file(path: Path, url: str | None, sha256: str = SHA256) -> Path:
    """Return ``path``, downloading it from ``url`` (``TUSSIS_YAMNET_URL``) and
    verifying it first if it is missing."""
    path = Path(path)
    if path.is_file():
        return path
    if not url:
        raise YamnetUnavailable(
            f"YAMNet model missing at {path} and no download address is set. "
            "Set TUSSIS_YAMNET_MODEL to a local yamnet.tflite or TUSSIS_YAMNET_URL to its address."
        )
    log.warning("YAMNet model not found at %s; downloading it from %s", path, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".yamnet-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        urllib.request.urlretrieve(url, tmp)
        actual = sha256_of(tmp)
        if actual != sha256:
            raise YamnetUnavailable(
                f"the file downloaded from {url} has SHA-256 {actual}, expected {sha256}; "
                "refusing to use it"
            )
        os.replace(tmp, path)
    except YamnetUnavailable:
        raise
    except Exception as exc:
        raise YamnetUnavailable(
            f"YAMNet model missing at {path} and could not be downloaded from {url} "
            f"({type(exc).__name__}: {exc}). Set TUSSIS_YAMNET_MODEL to a local yamnet.tflite."
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def frame(samples: np.ndarray) -> np.ndarray:
    """Split into 0.975 s windows every 0.48 s; a short clip is zero-padded to one window."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) < WINDOW:
        samples = np.pad(samples, (0, WINDOW - len(samples)))
    count = 1 + (len(samples) - WINDOW) // HOP
    index = np.arange(WINDOW)[np.newaxis, :] + HOP * np.arange(count)[:, np.newaxis]
    return samples[index]


@dataclass(frozen=True)
class YamnetOutput:
    scores: np.ndarray  # (windows, 521)
    embeddings: np.ndarray  # (windows, 1024)


def with_embedding_output(model_path: Path) -> bytes:
    """The model with its embedding tensor declared as a third output.

    The published file outputs only the class scores and the log-mel patch. Reading
    an intermediate tensor needs ``experimental_preserve_all_tensors``, which keeps
    every activation alive and cost about 10 % of each pass; a declared output is
    computed by the same graph (identical values, tested) and costs nothing extra.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(model_path))
    graph = model.subgraphs[0]
    names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in graph.tensors]
    if EMBEDDING_TENSOR not in names:
        raise YamnetUnavailable(f"{model_path} has no tensor {EMBEDDING_TENSOR!r}")
    index = names.index(EMBEDDING_TENSOR)
    if index not in list(graph.outputs):
        graph.outputs = np.append(np.asarray(graph.outputs, np.int32), np.int32(index))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class Yamnet:
    """One interpreter per process (TFLite interpreters are not thread-safe).

    Bundles that name the same YAMNet file share one instance
    (``ml.backbones.shared_yamnet``), and it keeps the outputs of the last
    ``RECENT`` clips by content: the cough gate and a YAMNet diagnosis bundle
    looking at the same clip cost one pass, not two. Outputs are read-only.
    """

    RECENT = 32  # two of the worker's default 16-clip chunks
    MEMO_MAX_SAMPLES = 121 * SAMPLE_RATE  # clips (at most 120 s) are remembered, segments not

    def __init__(self, model_path: Path) -> None:
        self._recent: OrderedDict[bytes, YamnetOutput] = OrderedDict()
        self.passes = 0  # clips actually run through the network
        # LiteRT, TensorFlow Lite's own runtime package: the same graph as tf.lite
        # without importing TensorFlow, which took about 9 s of a 10 s cold start (its
        # XNNPACK build rounds differently from tf.lite's: docs/performance.md).
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(
            model_content=with_embedding_output(Path(model_path)), num_threads=1
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = self._interpreter.get_output_details()
        self._scores = next(o["index"] for o in outputs if tuple(o["shape"]) == (1, 521))
        self._embedding = next(o["index"] for o in outputs if o["name"] == EMBEDDING_TENSOR)

    def run(self, samples: np.ndarray) -> YamnetOutput:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if len(samples) > self.MEMO_MAX_SAMPLES:
            # A long recording's segment is looked at once: remembering it would only
            # hold megabytes (32 five-minute segments' outputs are 124 MB).
            return self._run(samples)
        # A digest of the samples, not id(): an array freed and another allocated
        # at the same address must not get the old clip's output.
        key = hashlib.blake2b(samples.tobytes(), digest_size=16).digest()
        if (hit := self._recent.get(key)) is not None:
            self._recent.move_to_end(key)
            return hit
        out = self._run(samples)
        self._recent[key] = out
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return out

    def forget(self) -> None:
        """Drop the remembered outputs (benchmarks compare with and without them)."""
        self._recent.clear()

    def _run(self, samples: np.ndarray) -> YamnetOutput:
        self.passes += 1
        # A view of the windows, not a copy (frame() gathers them): a five-minute segment's
        # 625 windows would otherwise take 39 MB, and their index 78 MB more.
        padded = samples if len(samples) >= WINDOW else np.pad(samples, (0, WINDOW - len(samples)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP]
        scores = np.empty((len(windows), 521), np.float32)
        embeddings = np.empty((len(windows), 1024), np.float32)
        for i, window in enumerate(windows):
            self._interpreter.set_tensor(self._input, window[np.newaxis, :])
            self._interpreter.invoke()
            scores[i] = self._interpreter.get_tensor(self._scores)[0]
            embeddings[i] = self._interpreter.get_tensor(self._embedding).reshape(-1)
        scores.setflags(write=False)
        embeddings.setflags(write=False)
        return YamnetOutput(scores=scores, embeddings=embeddings)
