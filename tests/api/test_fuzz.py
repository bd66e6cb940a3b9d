"""Fuzzing the API with malformed requests, seeded so that any failure reproduces.

Over 1,000 requests go through the Flask test client on the embedded defaults (a
SQLite database of the test's own); those that put odd text into ids, parameters,
names and labels go again to PostgreSQL, which refuses NUL bytes; and a sample of
them, with what only a real HTTP server sees (long request lines, huge headers,
broken HTTP), through a real gunicorn. For every answer: no 5xx; every non-2xx
answer has the error shape with a code; every JSON body parses with a strict
parser (no NaN, no Infinity). After each run: no stored audio without its job, no
batch left open that the client did not ask to keep open, and the owner's whole
job listing is valid JSON.

``TUSSIS_FUZZ_SEED=<n>`` replays another seed; the seed and the counts per
category are printed (``pytest -s``).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import struct
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import requests
import sqlalchemy as sa
from flask.testing import FlaskClient

from api import create_app
from shared.audio import decode
from shared.config import Settings, normalise_database_url
from tests.audio_samples import (
    FORMATS,
    encode,
    float_wav,
    id3_chunk,
    info_chunk,
    noise,
    pcm16_wav,
    riff_chunk,
    riff_wav,
)
from tests.conftest import base_settings, migrate
from tests.stack import Stack

SEED = int(os.environ.get("TUSSIS_FUZZ_SEED", "20261203"))
OWNER, KEY = "fuzzer", "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Seconds spent per category, for the report.
SECONDS_SPENT: defaultdict[str, float] = defaultdict(float)
KEEP_OPEN = ("1", "true", "yes")
SUFFIXES = {"wav": "wav", "mp3": "mp3", "flac": "flac", "ogg-opus": "ogg", "webm-opus": "webm"}
SUFFIXES["m4a-aac"] = "m4a"


@dataclass
class Case:
    """One request. ``path`` is already percent-encoded (query string included)."""

    category: str
    method: str = "POST"
    path: str = "/api/v1/jobs"
    files: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)
    form: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Statuses the answer must have (empty: any but 5xx).
    expect: frozenset[int] = frozenset()
    # False: only the test client can send it (requests refuses such a request).
    over_http: bool = True

    @property
    def keeps_open(self) -> bool:
        return self.form.get("open", "").lower() in KEEP_OPEN


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_refuse)


def problems(case: Case, status: int, content_type: str, body: bytes) -> list[str]:
    """What is wrong with one answer (nothing, normally)."""
    found = []
    if status >= 500:
        found.append(f"{status}")
    if case.expect and status not in case.expect:
        found.append(f"status {status}, expected {sorted(case.expect)}")
    parsed: Any = None
    if "json" in content_type or not 200 <= status < 300:
        try:
            parsed = strict_json(body)
        except (ValueError, UnicodeDecodeError) as exc:
            found.append(f"not strict JSON ({exc}): {body[:120]!r}")
    if not 200 <= status < 300 and isinstance(parsed, dict):
        error = parsed.get("error")
        if not (
            isinstance(error, dict)
            and isinstance(error.get("code"), str)
            and error.get("status") == status
            and str(error.get("message", "")).endswith(".")
        ):
            found.append(f"not the error shape: {body[:200]!r}")
    elif not 200 <= status < 300 and parsed is not None:
        found.append(f"error body is not an object: {body[:120]!r}")
    return found


# --- inputs -------------------------------------------------------------------------


def flip_bits(rng: random.Random, data: bytes, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def corrupt_header(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        out[rng.randrange(min(len(out), 256))] = rng.randrange(256)
    return bytes(out)


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_zip(target: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link.wav")
        info.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
        info.create_system = 3
        zf.writestr(info, target)
    return buf.getvalue()


def odd_unicode(rng: random.Random) -> str:
    pool = ["\x00", "\x01", "\x1f", "\x7f", "\x85", "\u200b", "\u202e", "\ufeff", "٣", "²",
            "𝟘", "Ⅻ", "\U0001f600", "é", "\u0301", "%", "/", "..", "\\", "'", '"', "<",
            " "]  # fmt: skip
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))


class Inputs:
    """Audio for the cases: a real recording in every format, and hand-made WAVs."""

    def __init__(self, cough_file: Path) -> None:
        samples = decode(cough_file.read_bytes(), 16000, max_seconds=4).samples
        self.samples = samples
        self.formats = {kind: encode(samples, 16000, kind) for kind in sorted(FORMATS)}
        self.small_wav = pcm16_wav(noise(0.6, seed=1))
        pcm = (noise(1.0, seed=2) * 32767).astype("<i2").tobytes()
        self.odd_metadata = [
            riff_wav(pcm, 16000, 1, extra_chunks=(info_chunk(INAM=b"Caf\xe9", IART=b"\xc5sa"),)),
            riff_wav(pcm, 16000, 1, extra_chunks=(id3_chunk(b"Ronfl\xe9"),)),
            riff_wav(pcm, 16000, 1, extra_chunks=(info_chunk(ICMT=b"\xff" * 300_000),)),
            riff_wav(pcm, 16000, 1, extra_chunks=(riff_chunk(b"junk", b"\0" * 4095),)),
            riff_wav(pcm, 16000, 1, extra_chunks=(riff_chunk(b"bext", bytes(range(256)) * 3),)),
            riff_wav(pcm, 16000, 1, extra_chunks=(info_chunk(INAM=b"\xe9" * 3), id3_chunk(b""))),
        ]
        self._bombs: dict[str, bytes] = {}

    def bomb(self, kind: str) -> bytes:
        """Decompression bombs, built once (compressing hundreds of MiB takes a while)."""
        if kind not in self._bombs:
            if kind == "one-big-member":
                data = zip_of({"bomb.wav": b"\0" * (8 * 1024 * 1024), "ok.wav": self.small_wav})
            elif kind == "many-1mib-members":
                data = zip_of({f"m{i:03d}.wav": b"\0" * (1024 * 1024 - 1) for i in range(120)})
            elif kind == "many-64kib-members":
                data = zip_of({f"s{i:04d}.wav": b"\0" * 65536 for i in range(800)})
            else:  # many tiny members: passes the ratio checks, every one is decoded
                data = zip_of({f"t{i:04d}.wav": b"\0" * 2048 for i in range(1500)})
            self._bombs[kind] = data
        return self._bombs[kind]


# --- the cases, by category -----------------------------------------------------------


def gen_random_bytes(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    for _ in range(80):
        data = rng.randbytes(rng.choice([1, 4, 44, 100, 1000, 10_000, 60_000]))
        name = rng.choice(["x.wav", "x.mp3", "x", "x.webm", "x.m4a", "x.flac", "x.ogg"])
        yield Case("random_bytes", files=[("audio", name, data, None)])


def gen_damaged_files(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    for kind, data in inputs.formats.items():
        name = f"cough.{SUFFIXES[kind]}"
        yield Case("valid_formats", files=[("audio", name, data, None)], expect=frozenset({202}))
        for _ in range(8):
            for damaged in (
                data[: rng.randrange(1, len(data))],
                flip_bits(rng, data, rng.randint(1, 64)),
                corrupt_header(rng, data),
            ):
                yield Case("damaged_files", files=[("audio", name, damaged, None)])


def gen_content_types(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    wav = inputs.small_wav
    raw = [
        ("application/json", b'{"audio": "AAAA"}'),
        ("text/plain", b"hello"),
        ("multipart/form-data", wav),  # no boundary
        ("multipart/form-data; boundary=zzz", wav),  # no such boundary in the body
        ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"\r\n" + wav),
        ("application/x-www-form-urlencoded", b"audio=" + wav[:100]),
        ("audio/wav", wav),
        ("application/octet-stream", wav),
        (None, wav),
        ("multipart/mixed; boundary=x", b"--x\r\n\r\n" + wav + b"\r\n--x--\r\n"),
    ]
    for _ in range(3):
        for content_type, body in raw:
            for path in ("/api/v1/jobs", "/api/v1/batches"):
                yield Case("content_types", path=path, body=body, content_type=content_type)
    part_types = ["audio/wav", "text/html", "x" * 300, "audio/wav; charset=\x01", "é/ü", ""]
    for part_type in part_types:
        yield Case(
            "content_types",
            files=[("audio", "x.wav", wav, part_type or None)],
            expect=frozenset({202}),
            over_http=part_type.isascii() and "\x01" not in part_type,
        )


def gen_zero_length(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    yield Case("zero_length", files=[("audio", "x.wav", b"", None)])
    yield Case("zero_length", files=[("audio", "", inputs.small_wav, None)])
    yield Case("zero_length", files=[("other", "x.wav", inputs.small_wav, None)])
    yield Case("zero_length", body=b"", content_type="multipart/form-data; boundary=x")
    yield Case("zero_length", path="/api/v1/batches", files=[("files", "x.wav", b"", None)])
    yield Case("zero_length", path="/api/v1/batches", files=[("archive", "a.zip", b"", None)])
    yield Case(
        "zero_length", path="/api/v1/batches", files=[("archive", "a.zip", zip_of({}), None)]
    )
    yield Case("zero_length", path="/api/v1/batches", form={"open": "true"})
    for _ in range(12):
        yield Case("zero_length", files=[("audio", "x.wav", riff_wav(b"", 16000, 1), None)])


def gen_long_audio(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    long_pcm = pcm16_wav(noise(130.0, rate=8000, seed=3), rate=8000)
    lying = bytearray(inputs.small_wav)
    lying[40:44] = struct.pack("<I", 0xFFFFFFF0)  # the data chunk claims 4 GiB
    lying_riff = bytearray(inputs.small_wav)
    lying_riff[4:8] = struct.pack("<I", 0xFFFFFFFF)
    silent_flac = encode(np.zeros(48000 * 130, np.float32), 48000, "flac")
    slow_rate = pcm16_wav(noise(1.0, seed=4), rate=100)  # 16000 samples at 100 Hz: 160 s
    for data in (long_pcm, bytes(lying), bytes(lying_riff), silent_flac, slow_rate):
        yield Case("long_audio", files=[("audio", "long.wav", data, None)])
        yield Case("long_audio", path="/api/v1/batches", files=[("files", "l.wav", data, None)])


def gen_sample_rates(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    rates = [0, 1, 2, 7, 100, 1000, 4000, 8000, 11025, 22050, 44100, 96000, 192000, 384000,
             768000, 2**31 - 1, 2**32 - 1]  # fmt: skip
    for _ in range(30):
        rate = rng.choice(rates)
        data = pcm16_wav(noise(rng.uniform(0.2, 2.0), seed=rng.randrange(99)), rate=rate)
        yield Case("sample_rates", files=[("audio", "rate.wav", data, None)])


def gen_float_wavs(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    refused = frozenset({422})
    for _ in range(5):
        base = noise(1.0, seed=rng.randrange(99)).astype(np.float64)
        spiky = base.copy()
        spiky[rng.randrange(len(spiky))] = rng.choice([np.nan, np.inf, -np.inf])
        for data, expect in (
            (float_wav(np.full(16000, np.nan)), refused),
            (float_wav(spiky), refused),
            (float_wav(base * 1e38), refused),
            (float_wav(base * 1e300, bits=64), refused),
            (float_wav(base * 1e5), refused),
            (float_wav(base * rng.uniform(0.5, 2.0)), frozenset({202})),
        ):
            yield Case("float_wavs", files=[("audio", "f.wav", data, None)], expect=expect)


def gen_channels(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    for channels in (0, 2, 3, 6, 8, 8, 16, 64, 255, 1000, 65535):
        frames = (noise(0.5, seed=5) * 32767).astype("<i2").tobytes() * max(1, min(channels, 64))
        data = riff_wav(frames, 16000, channels)
        ok = frozenset({202}) if channels in (2, 8) else frozenset()
        yield Case("channels", files=[("audio", "c.wav", data, None)], expect=ok)
    for channels in (1, 2, 4, 8, 8):
        data = pcm16_wav(noise(1.0, seed=6), channels=channels)
        yield Case("channels", files=[("audio", "c.wav", data, None)], expect=frozenset({202}))


def gen_odd_metadata(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    for _ in range(4):
        for data in inputs.odd_metadata:
            yield Case(
                "odd_metadata", files=[("audio", "m.wav", data, None)], expect=frozenset({202})
            )


def gen_headers(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    for _ in range(10):
        size = rng.choice([9000, 12_000, 40_000])
        yield Case("headers", method="GET", headers={"X-Big": "h" * size}, expect=frozenset({431}))
        many = {f"X-F{i}": "v" for i in range(rng.randint(101, 300))}
        yield Case("headers", method="GET", headers=many, expect=frozenset({431}))
        yield Case(
            "headers", method="GET", headers={"X-" + "n" * size: "v"}, expect=frozenset({431})
        )
        odd = {"Idempotency-Key": odd_unicode(rng).encode().decode("latin-1")}
        yield Case(
            "headers", headers=odd, files=[("audio", "x.wav", b"RIFF", None)], over_http=False
        )


def gen_long_urls(rng: random.Random, _inputs: Inputs) -> Iterator[Case]:
    for _ in range(10):
        size = rng.choice([8100, 9000, 16_000, 60_000])
        yield Case("long_urls", "GET", "/api/v1/jobs/" + "a" * size, expect=frozenset({414}))
        yield Case("long_urls", "GET", "/api/v1/jobs?cursor=" + "c" * size, expect=frozenset({414}))
        yield Case("long_urls", "POST", "/api/v1/batches?x=" + "%00" * (size // 3))


def gen_query(rng: random.Random, _inputs: Inputs, batch_id: str) -> Iterator[Case]:
    limits = ["-1", "0", "1e9", "٣", "²", "\x00", "", " ", "1.5", "NaN", "inf", "0x10", "1_0",
              "9" * 5000, "+5", "5 ", "２", "true", "[]"]  # fmt: skip
    cursors = ["\x00", "٣", "²", "!!!", "=", "a" * 600, "WyIyMDI1LTAx", "eyJ9", "%", "--",
               "WyJqb2JzIiwiMjAyNS0wMS0wMVQwMDowMDowMCIsIlx1MDAwMCJd",  # ["jobs", ..., "\0"]
               "WyJqb2JzIiwiMjAyNS0wMS0wMVQwMDowMDowMCIsImEiXQ",  # no time zone
               "WyJpdGVtcyIsOTk5OTk5OTk5OTk5OTk5OTk5OTld",  # ["items", huge]
               "W1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tbW1tb"]  # fmt: skip
    listings = ["/api/v1/jobs", "/api/v1/batches", f"/api/v1/batches/{batch_id}/items",
                "/api/v1/recordings"]  # fmt: skip
    for _ in range(170):
        params = []
        if rng.random() < 0.6:
            params.append(("limit", rng.choice(limits)))
        if rng.random() < 0.6:
            params.append(
                ("cursor", rng.choice(cursors) if rng.random() < 0.7 else odd_unicode(rng))
            )
        if rng.random() < 0.2:
            params.append((odd_unicode(rng), odd_unicode(rng)))
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
        yield Case("query", "GET", f"{rng.choice(listings)}?{query}")


def gen_ids(rng: random.Random, _inputs: Inputs, batch_id: str) -> Iterator[Case]:
    templates = [
        ("GET", "/api/v1/jobs/{}"), ("DELETE", "/api/v1/jobs/{}"),
        ("GET", "/api/v1/jobs/{}/spectrogram.png"), ("GET", "/api/v1/batches/{}"),
        ("DELETE", "/api/v1/batches/{}"), ("POST", "/api/v1/batches/{}/close"),
        ("GET", "/api/v1/batches/{}/items"), ("GET", "/api/v1/batches/{}/results.csv"),
        ("POST", "/api/v1/batches/{}/items"),
        ("GET", "/api/v1/recordings/{}"), ("DELETE", "/api/v1/recordings/{}"),
        ("GET", "/api/v1/recordings/{}/events"), ("GET", "/api/v1/recordings/{}/events.csv"),
        ("GET", "/api/v1/recordings/{}/timeline.png"),
        ("GET", "/api/v1/recordings/{}/audio?start_s=0&end_s=1"),
        ("GET", "/api/v1/uploads/{}"), ("DELETE", "/api/v1/uploads/{}"),
    ]  # fmt: skip
    for _ in range(170):
        method, template = rng.choice(templates)
        choice = rng.random()
        if choice < 0.4:
            raw = odd_unicode(rng)
        elif choice < 0.6:
            raw = batch_id[:10] + "\x00" + batch_id[11:]
        elif choice < 0.8:
            raw = rng.choice(["٣٣٣", "¹²³", "0" * 36, "x" * 300, "-1", "%00", "..", "null"])
        else:
            raw = "".join(rng.choice("0123456789abcdef-") for _ in range(36))
        case = Case("ids", method, template.format(quote(raw, safe="")))
        if method == "POST" and template.endswith("/items"):
            case.files = [("files", "x.wav", b"RIFF", None)]
        yield case


def gen_form_fields(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    wav = inputs.small_wav
    for _ in range(25):
        name = rng.choice(["a\x00b.wav", "\x00", "x" * 300 + ".wav", odd_unicode(rng) + ".wav",
                           "../../etc/passwd.wav", "C:\\x.wav", "é.wav", "a\r\nb.wav"])  # fmt: skip
        yield Case("form_fields", files=[("audio", name, wav, None)], over_http=False)
        yield Case(
            "form_fields",
            path="/api/v1/batches",
            files=[("files", name, wav, None), ("files", "fine.wav", wav, None)],
            form={"open": rng.choice(["true", "false", "\x00", "yes", ""])},
            over_http=False,
        )
    callbacks = ["http://10.0.0.1/x", "ftp://1.1.1.1/", "http://u:p@1.1.1.1/", "http://[::1]/",
                 "http://%00/", "http://" + "a" * 3000, "http://1.1.1.1/\x00", "javascript:1",
                 "http://1.1.1.1/hook", "http://1.1.1.1:99999/", "http://0x7f000001/"]  # fmt: skip
    for url in callbacks:
        yield Case(
            "form_fields",
            path="/api/v1/batches",
            files=[("files", "x.wav", wav, None)],
            form={"callback_url": url},
            over_http="\x00" not in url,
        )
    for _ in range(8):
        field_name = rng.choice(["f" * 10_000, "\x00", odd_unicode(rng), "files\x00"])
        yield Case("form_fields", files=[(field_name, "x.wav", wav, None)], over_http=False)
        yield Case("form_fields", path="/api/v1/batches", form={field_name: "v" * 1000})


def gen_zips(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    wav, mp3 = inputs.small_wav, inputs.formats["mp3"]

    def case(archive: bytes, expect: frozenset[int] = frozenset(), **form: str) -> Case:
        return Case(
            "zips",
            path="/api/v1/batches",
            files=[("archive", "a.zip", archive, None)],
            form=form,
            expect=expect,
        )

    nul_name = zip_of({"nulXname.wav": wav}).replace(b"nulXname", b"nul\x00name")
    encrypted = bytearray(zip_of({"e.wav": wav}))
    encrypted[6] |= 1  # "encrypted" flag of the local header
    encrypted[zip_of({"e.wav": wav}).rfind(b"PK\x01\x02") + 8] |= 1  # and of the directory
    odd_method = zip_of({"m.wav": wav}, zipfile.ZIP_STORED).replace(
        b"\x00\x00\x00\x00", b"\x00\x00\x63\x00", 1
    )
    fixed = [
        zip_of({"../x.wav": wav, "/abs.wav": wav, "a/../../b.wav": wav, "C:/c.wav": wav}),
        zip_of({"a\\b.wav": wav, "ok/ok.wav": wav}),
        nul_name,
        symlink_zip(b"../../../../etc/passwd"),
        zip_of({"inner.zip": zip_of({"x.wav": wav}), "disguised.wav": zip_of({"x.wav": wav})}),
        zip_of({"gz.wav": b"\x1f\x8b" + rng.randbytes(100), "deep.zip": b"PK\x03\x04"}),
        inputs.bomb("one-big-member"),
        inputs.bomb("many-1mib-members"),
        inputs.bomb("many-64kib-members"),
        inputs.bomb("many-tiny-members"),
        zip_of({f"n{i}.txt": b"x" for i in range(3000)}),
        bytes(encrypted),
        odd_method,
        zip_of({"dup.wav": wav, "dup.wav ": mp3, "DUP.WAV": wav}),
        zip_of({"a.wav": wav, "labels.csv": b"path,label\na.wav,si\x00ck\n"}),
        zip_of({"a.wav": wav, "labels.csv": b"path,label\na.wav," + b"x" * 200_000 + b"\n"}),
        zip_of({"a.wav": wav, "labels.csv": b'path,label\n"a.wav,\x00\n'}),
        zip_of({"a.wav": wav, "labels.csv": b"\xff\xfe\x00p\x00a"}),
        zip_of({"a.wav": wav, "labels.csv": b"label\nx\n"}),
        zip_of({"a.wav": wav, "labels.csv": b"path,label\na.wav," + "é".encode() * 300 + b"\n"}),
        zip_of({"a.wav": wav, "LABELS.CSV": b"path,label\na.wav,sick\n", "labels.csv": b"x"}),
        b"PK\x05\x06" + b"\x00" * 18,  # an empty central directory
        b"PK\x03\x04" + rng.randbytes(200),
    ]
    for archive in fixed:
        yield case(archive, open=rng.choice(["true", "false"]))
    good = zip_of({"a.wav": wav, "b/b.mp3": mp3, "labels.csv": b"path,label\na.wav,x\n"})
    for _ in range(28):
        mutated = rng.choice(
            [
                good[: rng.randrange(1, len(good))],
                flip_bits(rng, good, rng.randint(1, 32)),
                corrupt_header(rng, good),
                good[: len(good) // 2] + rng.randbytes(64) + good[len(good) // 2 :],
            ]
        )
        yield case(mutated, open=rng.choice(["true", "false", ""]))
    for _ in range(10):
        yield case(good, frozenset({202}), open=rng.choice(["true", "false"]))


def gen_batch_files(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    for _ in range(40):
        files: list[tuple[str, str, bytes, str | None]] = []
        for i in range(rng.randint(1, 6)):
            kind = rng.choice(sorted(inputs.formats))
            data = inputs.formats[kind]
            data = rng.choice(
                [data, data[: rng.randrange(1, len(data))], flip_bits(rng, data, 8), b""]
            )
            files.append(("files", f"f{i}.{SUFFIXES[kind]}", data, None))
        yield Case(
            "batch_files",
            path="/api/v1/batches",
            files=files,
            form={"open": rng.choice(["true", "false", "1", "no"])},
        )


def gen_recordings(rng: random.Random, inputs: Inputs) -> Iterator[Case]:
    """Long recordings (streamed multipart) and resumable uploads (tus headers)."""
    path, wav = "/api/v1/recordings", inputs.small_wav
    yield Case(
        "recordings", path=path, files=[("audio", "n.wav", wav, None)], expect=frozenset({202})
    )
    for blob in (b"", rng.randbytes(3000), wav[:44], inputs.formats["mp3"][:500]):
        yield Case("recordings", path=path, files=[("audio", "n.wav", blob, None)])
    yield Case("recordings", path=path, files=[("other", "n.wav", wav, None)])
    yield Case("recordings", path=path, files=[("audio", "a.wav", wav, None)] * 2)
    yield Case("recordings", path=path, body=wav, content_type="audio/wav")
    yield Case(
        "recordings",
        path=path,
        body=b"--x\r\n" + wav,
        content_type="multipart/form-data; boundary=x",
    )
    for _ in range(20):
        field_name = rng.choice(["recorded_at", "label"])
        value = rng.choice(
            [odd_unicode(rng), "2026-13-45T99:00:00Z", "9" * 5000, "2026-12-05T22:00:00",
             "2026-12-05T22:00:00+25:00", "\x00", "0001-01-01T00:00:00+14:00"]
        )  # fmt: skip
        yield Case(
            "recordings",
            path=path,
            files=[("audio", odd_unicode(rng) + ".wav", wav, None)],
            form={field_name: value},
            over_http=value.isascii() and "\x00" not in value,
        )
    tus = {"Tus-Resumable": "1.0.0"}
    lengths = ["", "-1", "0", "1e9", "٣", "9" * 40, str(1 << 62), " 5", "5"]
    metas = ["", "filename", "filename !!!", "label " + "A" * 9000, "recorded_at eHg=", "a b,c d"]
    for _ in range(20):
        headers = {
            **tus,
            "Upload-Length": rng.choice(lengths),
            "Upload-Metadata": rng.choice(metas),
        }
        if rng.random() < 0.2:
            headers["Tus-Resumable"] = rng.choice(["0.2.2", "", "1.0.0 "])
        yield Case("recordings", path="/api/v1/uploads", headers=headers,
                   over_http=all(v.isascii() for v in headers.values()))  # fmt: skip
    for _ in range(10):
        offset = rng.choice(["0", "-1", "x", "99999999999999999999", ""])
        ctype = rng.choice(["application/offset+octet-stream", "text/plain", None])
        yield Case(
            "recordings",
            "PATCH",
            "/api/v1/uploads/" + quote(odd_unicode(rng), safe=""),
            body=rng.randbytes(100),
            content_type=ctype,
            headers={**tus, "Upload-Offset": offset},
        )


GENERATORS: list[Callable[[random.Random, Inputs], Iterator[Case]]] = [
    gen_random_bytes, gen_damaged_files, gen_content_types, gen_zero_length, gen_long_audio,
    gen_sample_rates, gen_float_wavs, gen_channels, gen_odd_metadata, gen_headers,
    gen_long_urls, gen_form_fields, gen_zips, gen_batch_files, gen_recordings,
]  # fmt: skip


def all_cases(rng: random.Random, inputs: Inputs, batch_id: str) -> list[Case]:
    cases = [c for gen in GENERATORS for c in gen(rng, inputs)]
    cases += list(gen_query(rng, inputs, batch_id)) + list(gen_ids(rng, inputs, batch_id))
    return cases


# --- senders -----------------------------------------------------------------------------


def send_flask(client: FlaskClient, case: Case) -> tuple[int, str, bytes, dict[str, str]]:
    headers = {**AUTH, **case.headers}
    if case.files or case.form:
        data: dict[str, Any] = dict(case.form)
        for name, filename, blob, part_type in case.files:
            part = (
                (io.BytesIO(blob), filename, part_type)
                if part_type
                else (io.BytesIO(blob), filename)
            )
            data.setdefault(name, []).append(part)
        response = client.open(
            case.path, method=case.method, data=data, content_type="multipart/form-data",
            headers=headers,
        )  # fmt: skip
    else:
        response = client.open(
            case.path, method=case.method, data=case.body, content_type=case.content_type,
            headers=headers,
        )  # fmt: skip
    return (
        response.status_code,
        response.headers.get("Content-Type", ""),
        response.get_data(),
        dict(response.headers),
    )


def send_http(base: str, case: Case) -> tuple[int, str, bytes, dict[str, str]]:
    headers = {**AUTH, **case.headers}
    if case.files:
        files = [(n, (f, b, t) if t else (f, b)) for n, f, b, t in case.files]
        response = requests.request(
            case.method, base + case.path, files=files, data=case.form, headers=headers, timeout=60
        )
    else:
        if case.content_type:
            headers["Content-Type"] = case.content_type
        data = case.body if case.body is not None else case.form or None
        response = requests.request(
            case.method, base + case.path, data=data, headers=headers, timeout=60
        )
    return (
        response.status_code,
        response.headers.get("Content-Type", ""),
        response.content,
        dict(response.headers),
    )


def raw_http(port: int, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes that no HTTP library would, and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before it has read everything
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    answer = b"".join(chunks)
    if not answer:
        return 0, "", b""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers.get("Content-Type", ""), body


def raw_cases(rng: random.Random) -> Iterator[tuple[str, bytes, frozenset[int]]]:
    """(category, bytes, statuses required: empty for any but 5xx)."""
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    uri_too_long, too_large = frozenset({414}), frozenset({431})
    for size in (4000, 8100, 8200, 9000, 20_000, 100_000, 1 << 20):
        target = b"/api/v1/jobs?cursor=" + b"c" * size
        request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
        yield "request_line", request, uri_too_long if size > 8000 else frozenset({400})
    for size in (8000, 8191, 9000, 70_000):
        header = b"X-Big: " + b"h" * size + b"\r\n"
        request = b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth + header + b"\r\n"
        yield "header_size", request, too_large if size > 8100 else frozenset({200})
    for count in (90, 101, 150, 1000):
        many = b"".join(f"X-F{i}: v\r\n".encode() for i in range(count))
        request = b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth + many + b"\r\n"
        yield "header_count", request, too_large if count > 98 else frozenset({200})
    name = b"GET /api/v1/jobs HTTP/1.1\r\nX-" + b"n" * 9000 + b": v\r\n\r\n"
    yield "header_name", name, too_large
    for _ in range(12):
        yield "garbage", rng.randbytes(rng.randint(1, 3000)) + b"\r\n\r\n", frozenset()
    multipart = b"Content-Type: multipart/form-data; boundary=x\r\n"
    broken = [
        b"GET /api/v1/jobs/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs/a%00b HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /api/v1/jobs HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G\x00T /api/v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nabcde",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth + multipart
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth + multipart
        + b"Content-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-data; name=audio",
        b"POST /api/v1/batches HTTP/1.1\r\nHost: x\r\n" + auth + multipart
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\n--x\r\n\r\nq\r\n",
        b"GET " + "/api/v1/jobs/\u0663".encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
    ]  # fmt: skip
    for request in broken:
        yield "broken_http", request, frozenset()


# --- the test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(cough_file: Path) -> Inputs:
    return Inputs(cough_file)


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory when the machine has one: hundreds of SQLite commits, each
    synced to disk, would take most of the time otherwise."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="tussis-fuzz-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fuzz_settings(tmp: Path, **overrides: Any) -> Settings:
    settings = base_settings(
        tmp,
        api_keys={KEY: OWNER},
        rate_limit="1000000/second",
        upload_bytes_per_minute=1 << 50,
        **overrides,
    )
    migrate(settings.database_url)
    return settings


def stored_state(settings: Settings) -> dict[str, Any]:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            scalar = lambda sql: conn.execute(sa.text(sql)).scalar_one()  # noqa: E731
            return {
                "blobs": scalar("SELECT count(*) FROM audio_blobs"),
                # Clip jobs (a long recording's work rows are listed with it, not as jobs).
                "jobs": scalar("SELECT count(*) FROM jobs WHERE recording_id IS NULL"),
                "recordings": scalar("SELECT count(*) FROM recordings"),
                "recording_files": recording_files(settings),
                "orphans": scalar(
                    "SELECT count(*) FROM audio_blobs WHERE key NOT IN (SELECT audio_key FROM jobs)"
                ),
                "open": set(
                    conn.execute(sa.text("SELECT id FROM batches WHERE status = 'open'")).scalars()
                ),
            }
    finally:
        engine.dispose()


def recording_files(settings: Settings) -> int:
    """Files in the recording store (the embedded default: a directory)."""
    root = Path(settings.recording_storage_url.removeprefix("file://"))
    return sum(1 for p in root.glob("*") if p.is_file()) if root.is_dir() else 0


def count_upload_parts(settings: Settings) -> int:
    """Bytes of unfinished resumable uploads (kept for their resumption)."""
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT parts FROM uploads WHERE recording_id IS NULL"))
            return sum(len(json.loads(p) if isinstance(p, str) else p) for (p,) in rows)
    finally:
        engine.dispose()


def check_listing(get: Callable[[str], tuple[int, bytes]]) -> int:
    """Page through the owner's jobs; every page must be strict JSON."""
    url, seen = "/api/v1/jobs?limit=200", 0
    while url:
        status, body = get(url)
        assert status == 200, body[:300]
        page = strict_json(body)
        seen += len(page["jobs"])
        cursor = page["next_cursor"]
        url = f"/api/v1/jobs?limit=200&cursor={cursor}" if cursor else ""
    return seen


def run_cases(
    cases: list[Case],
    send: Callable[[Case], tuple[int, str, bytes, dict[str, str]]],
    prefix: str = "",
) -> tuple[Counter[str], Counter[int], list[str], set[str]]:
    per_category: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    kept_open: set[str] = set()
    for number, case in enumerate(cases):
        started = time.monotonic()
        status, content_type, body, _ = send(case)
        SECONDS_SPENT[prefix + case.category] += time.monotonic() - started
        per_category[prefix + case.category] += 1
        statuses[status] += 1
        for problem in problems(case, status, content_type, body):
            parts = [(n, f[:40], len(b)) for n, f, b, _ in case.files]
            described = f"{case.method} {case.path[:80]} files={parts}"
            failures.append(f"#{number} [{case.category}] {described}: {problem}")
        if status == 202 and case.keeps_open and "batches" in case.path:
            kept_open.add(strict_json(body)["id"])
    return per_category, statuses, failures, kept_open


def report(title: str, started: float, per_category: Counter[str], statuses: Counter[int]) -> None:
    print(f"\n{title}: seed {SEED}, {sum(per_category.values())} requests in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for category, n in sorted(per_category.items()):
        print(f"  {category:<20} {n:>5}  {SECONDS_SPENT[category]:6.2f} s")
    print("  statuses:", dict(sorted(statuses.items())))


def fuzz_in_process(
    settings: Settings, inputs: Inputs, title: str, categories: set[str] | None = None
) -> Counter[str]:
    """Run the cases (of ``categories``, or all) through the test client and check the
    answers and what is left stored; returns the count per category."""
    client = create_app(settings).test_client()
    SECONDS_SPENT.clear()
    started = time.monotonic()
    rng = random.Random(SEED)
    before = stored_state(settings)
    opened = client.post(
        "/api/v1/batches",
        data={"files": [(io.BytesIO(inputs.small_wav), "keep.wav")], "open": "true"},
        content_type="multipart/form-data",
        headers=AUTH,
    )
    assert opened.status_code == 202
    batch_id = opened.get_json()["id"]
    cases = [
        c
        for c in all_cases(rng, inputs, batch_id)
        if categories is None or c.category in categories
    ]
    per_category, statuses, failures, kept_open = run_cases(
        cases, lambda case: send_flask(client, case)
    )
    report(title, started, per_category, statuses)
    assert not failures, f"seed {SEED}: {len(failures)} bad answers:\n" + "\n".join(failures[:25])

    after = stored_state(settings)
    assert after["orphans"] == 0, "stored audio without a job row"
    assert after["blobs"] - before["blobs"] == after["jobs"] - before["jobs"]
    assert after["open"] <= kept_open | {batch_id}, "a batch nobody asked to keep open is open"
    # Each accepted recording keeps its one upload; refused ones leave no file.
    assert after["recording_files"] - before["recording_files"] == (
        after["recordings"] - before["recordings"]
    ) + count_upload_parts(settings)

    def get(url: str) -> tuple[int, bytes]:
        response = client.get(url, headers=AUTH)
        return response.status_code, response.get_data()

    assert check_listing(get) == after["jobs"]
    return per_category


def test_fuzz_through_the_test_client(inputs: Inputs, fast_tmp: Path) -> None:
    per_category = fuzz_in_process(fuzz_settings(fast_tmp), inputs, "test client")
    assert sum(per_category.values()) >= 1000


def test_fuzz_text_on_postgresql(
    inputs: Inputs, fresh_postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The cases that put odd text into ids, parameters, names and labels, on the
    database that refuses NUL bytes (SQLite stores them): how they once reached a 500."""
    settings = fuzz_settings(
        tmp_path, database_url=normalise_database_url(fresh_postgres_url), broker_url=redis_url
    )
    per_category = fuzz_in_process(settings, inputs, "postgresql", {"ids", "query", "form_fields"})
    assert sum(per_category.values()) >= 350


@pytest.mark.integration
def test_fuzz_through_gunicorn(inputs: Inputs, fast_tmp: Path, tmp_path: Path) -> None:
    """What only a real server sees: gunicorn's own limits and parser, answered in the
    API's error shape too, and a sample of the test client's cases over HTTP."""
    settings = fuzz_settings(fast_tmp)
    stack = Stack(settings, tmp_path, TUSSIS_API_KEYS=f"{OWNER}:{KEY}")
    stack.start_api()
    try:
        SECONDS_SPENT.clear()
        started = time.monotonic()
        rng = random.Random(SEED + 1)
        failures: list[str] = []
        per_category: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        for category, request, expect in raw_cases(rng):
            sent = time.monotonic()
            status, content_type, body = raw_http(stack.port, request)
            SECONDS_SPENT[category] += time.monotonic() - sent
            per_category[category] += 1
            statuses[status] += 1
            if status == 0 and (not expect or len(request) > 65536):
                # Closed before the answer could be read (a reset while a large request
                # was still being sent): nothing to check, and not a 5xx.
                continue
            case = Case(category, expect=expect)
            for problem in problems(case, status, content_type, body):
                failures.append(f"[{category}] {request[:60]!r}...: {problem}")
        setup = Case(
            "setup",
            path="/api/v1/batches",
            files=[("files", "k.wav", inputs.small_wav, None)],
            form={"open": "true"},
        )
        batch = send_http(stack.url, setup)
        batch_id = strict_json(batch[2])["id"]
        sample = [c for c in all_cases(rng, inputs, batch_id) if c.over_http]
        sample = rng.sample(sample, 110)
        http_categories, http_statuses, http_failures, kept_open = run_cases(
            sample, lambda case: send_http(stack.url, case), "http:"
        )
        per_category.update(http_categories)
        statuses.update(http_statuses)
        failures += http_failures
        report("gunicorn", started, per_category, statuses)
        assert not failures, f"seed {SEED}: {len(failures)} bad answers:\n" + "\n".join(
            failures[:25]
        )
        assert sum(per_category.values()) >= 150

        after = stored_state(settings)
        assert after["orphans"] == 0
        assert after["open"] <= kept_open | {batch_id}

        def get(url: str) -> tuple[int, bytes]:
            response = requests.get(stack.url + url, headers=AUTH, timeout=30)
            return response.status_code, response.content

        assert check_listing(get) == after["jobs"]
    finally:
        stack.stop()
