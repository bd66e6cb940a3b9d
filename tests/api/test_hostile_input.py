"""Hostile and odd input, one regression test per class a hostile user found: valid
files with odd tags are accepted, impossible sample values and control characters
are refused in the error shape (never 500), no answer carries NaN, and a refused
or failed request leaves no stored audio and no open batch behind.

They run on SQLite and on PostgreSQL (the ``settings`` fixture): PostgreSQL is the
one that refuses NUL bytes in text, which is how they once reached a 500."""

from __future__ import annotations

import csv
import io
import json
import math
import time
import zipfile
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from api import create_app
from shared import jobs
from shared.audio import AudioError, decode
from shared.config import Settings
from tests.api.conftest import assert_error, blobs, count
from tests.audio_samples import (
    float_wav,
    id3_chunk,
    info_chunk,
    noise,
    pcm16_wav,
    riff_wav,
)
from tests.conftest import configure

SECONDS = 1.5


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, like browsers and most other parsers."""
    return json.loads(text, parse_constant=_refuse_constant)


@pytest.fixture
def owner(request: pytest.FixtureRequest) -> str:
    return f"hostile-{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture
def client(settings: Settings, owner: str) -> FlaskClient:
    app = create_app(configure(settings, api_keys={"k-" + owner: owner}))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer k-{owner}"
    return c


def upload(client: FlaskClient, data: bytes, name: str = "cough.wav") -> Any:
    return client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def post_zip(client: FlaskClient, archive: bytes, url: str = "/api/v1/batches") -> Any:
    return client.post(
        url,
        data={"archive": (io.BytesIO(archive), "batch.zip")},
        content_type="multipart/form-data",
    )


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def pcm(seconds: float = SECONDS) -> bytes:
    return (noise(seconds) * 32767).astype("<i2").tobytes()


# --- valid files with odd metadata are accepted ----------------------------------------


@pytest.mark.parametrize(
    "chunk",
    [
        info_chunk(INAM=b"Caf\xe9 ronflement", IART=b"G\xfcnther", ICMT=b"\xa9 2019"),
        id3_chunk(b"Caf\xe9"),
        info_chunk(ICMT=b"\xe9" * (1 << 20)),
    ],
    ids=["latin1-info", "id3-chunk", "1mib-latin1-tag"],
)
def test_wav_with_tags_that_are_not_utf8_is_accepted(client: FlaskClient, chunk: bytes) -> None:
    """The WAV files of a public snoring data set carry Latin-1 INFO tags, on which
    PyAV raises UnicodeDecodeError unless told to ignore tag encoding errors."""
    data = riff_wav(pcm(), 16000, 1, extra_chunks=(chunk,))
    assert abs(decode(data).duration_s - SECONDS) < 1e-6
    assert abs(decode(data, 16000).duration_s - SECONDS) < 1e-3
    response = upload(client, data, "snore.wav")
    assert response.status_code == 202, response.get_data(as_text=True)
    assert abs(response.get_json()["audio"]["duration_s"] - SECONDS) < 1e-3


def test_eight_channel_wav_is_accepted(client: FlaskClient) -> None:
    response = upload(client, pcm16_wav(noise(SECONDS), channels=8))
    assert response.status_code == 202, response.get_data(as_text=True)


# --- impossible sample values are refused at decode ------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        float_wav(np.full(16000, np.nan)),
        float_wav(np.where(np.arange(16000) % 100 == 0, np.inf, 0.1)),
        float_wav(noise(SECONDS) * 1e38),  # finite, but its squares overflow: NaN scores
        float_wav(
            noise(SECONDS).astype(np.float64) * 1e300, bits=64
        ),  # overflows to inf as float32
    ],
    ids=["nan", "inf", "1e38", "float64-1e300"],
)
def test_non_finite_or_absurd_samples_are_undecodable(client: FlaskClient, data: bytes) -> None:
    with pytest.raises(AudioError) as info:
        decode(data, 16000)
    assert info.value.code == "undecodable_audio"
    assert_error(upload(client, data), 422, "undecodable_audio")


def test_a_loud_but_sane_float_wav_is_accepted(client: FlaskClient) -> None:
    # Float files may peak above full scale; +3.5 dBFS is a hot recording, not an attack.
    assert upload(client, float_wav(noise(SECONDS) * 1.5)).status_code == 202


def test_no_answer_carries_nan_even_if_a_score_is_stored(
    client: FlaskClient, settings: Settings, owner: str
) -> None:
    assert client.application.json.dumps({"a": [math.nan, math.inf, 1.5]}) == (
        '{"a": [null, null, 1.5]}'
    )
    job_id = upload(client, pcm16_wav(noise(SECONDS))).get_json()["id"]
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as conn:  # what an older worker stored (SQLite keeps it as NULL)
        conn.execute(
            sa.text(
                "UPDATE jobs SET status = 'succeeded', diagnosis = 'sick', score = :nan, "
                "threshold = 0.5, model_id = 'm', model_version = '1', finished_at = created_at, "
                "cough_detected = true, cough_score = :nan WHERE id = :id"
            ),
            {"nan": math.nan, "id": job_id},
        )
    engine.dispose()
    for url in ("/api/v1/jobs", f"/api/v1/jobs/{job_id}"):
        response = client.get(url)
        assert response.status_code == 200
        strict_json(response.get_data(as_text=True))


# --- control characters in ids, parameters and fields ----------------------------------


@pytest.mark.parametrize(
    ("method", "url", "code"),
    [
        ("get", "/api/v1/jobs/abc%00def", "job_not_found"),
        ("delete", "/api/v1/jobs/%00", "job_not_found"),
        ("get", "/api/v1/jobs/a%01b/spectrogram.png", "job_not_found"),
        ("get", "/api/v1/batches/%00x", "batch_not_found"),
        ("post", "/api/v1/batches/%00x/close", "batch_not_found"),
        ("get", "/api/v1/batches/x%7F/items", "batch_not_found"),
        ("delete", "/api/v1/batches/%C2%85", "batch_not_found"),
    ],
)
def test_ids_with_control_characters_cannot_exist(
    client: FlaskClient, method: str, url: str, code: str
) -> None:
    assert_error(getattr(client, method)(url), 404, code)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=ab%00cd", "invalid_cursor"),
        ("limit=5%00", "invalid_limit"),
        ("x=%00", "invalid_parameter"),
        ("%00=1", "invalid_parameter"),
    ],
)
def test_query_parameters_with_control_characters_are_refused(
    client: FlaskClient, query: str, code: str
) -> None:
    for listing in ("/api/v1/jobs", "/api/v1/batches"):
        assert_error(client.get(f"{listing}?{query}"), 400, code)


@pytest.mark.parametrize("name", ["a\x00b.wav", "tab\there.wav", "x" * 252 + ".wav"])
def test_filenames_with_control_characters_or_too_long_are_refused(
    client: FlaskClient, settings: Settings, name: str
) -> None:
    before = blobs(settings)
    assert_error(upload(client, pcm16_wav(noise(SECONDS)), name), 400, "invalid_filename")
    assert blobs(settings) == before


def test_batch_names_with_control_characters_are_unsafe_paths(
    client: FlaskClient, settings: Settings
) -> None:
    good = pcm16_wav(noise(SECONDS))
    response = client.post(
        "/api/v1/batches",
        data={
            "files": [
                (io.BytesIO(good), "ok.wav"),
                (io.BytesIO(good), "nul\x00.wav"),
                (io.BytesIO(good), "long/" + "y" * 300 + ".wav"),
            ]
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    body = strict_json(response.get_data(as_text=True))
    assert body["accepted"] == 1
    assert [r["error"]["code"] for r in body["rejected"]] == ["unsafe_path", "unsafe_path"]


@pytest.mark.parametrize(
    "labels",
    [
        b"path,label\na.wav,si\x00ck\n",
        b"path,label\na\x00.wav,sick\n",
        b"path,label\na.wav," + b"x" * 200_000 + b"\n",  # over the csv module's field limit
        b'path,label\na.wav,"si\nck"\n',
    ],
    ids=["nul-label", "nul-path", "huge-field", "newline-in-label"],
)
def test_malformed_labels_csv_is_refused_whole(
    client: FlaskClient, settings: Settings, owner: str, labels: bytes
) -> None:
    before = blobs(settings)
    archive = make_zip({"a.wav": pcm16_wav(noise(SECONDS)), "labels.csv": labels})
    assert_error(post_zip(client, archive), 422, "invalid_labels")
    assert blobs(settings) == before
    assert count(settings, "SELECT count(*) FROM batches WHERE owner = :o", o=owner) == 0


def test_odd_labels_csv_shapes_are_not_errors(client: FlaskClient) -> None:
    labels = b"label,path,extra\nsick,a.wav,1,2,3\nnot sick\n,,\n\xff\xfe,b.wav\n"
    archive = make_zip({"a.wav": pcm16_wav(noise(SECONDS)), "labels.csv": labels})
    response = post_zip(client, archive)
    assert response.status_code == 202, response.get_data(as_text=True)
    items = client.get(f"/api/v1/batches/{response.get_json()['id']}/items").get_json()
    assert [i["label"] for i in items["items"]] == ["sick"]


# --- what comes back: the results CSV -------------------------------------------------------

FORMULAS = ["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)"]


def test_results_csv_cells_never_start_a_spreadsheet_formula(client: FlaskClient) -> None:
    """The review: file names such as =HYPERLINK(...), +cmd.mp3, -2+3.mp3, @SUM(1+1).mp3
    and a label or group =1+1 came back verbatim in results.csv, where a spreadsheet
    runs them. OWASP's rule: such a cell is written behind an apostrophe."""
    names = ['=HYPERLINK("evil.example","open").wav', "+cmd.wav", "-2+3.wav", "@SUM(1+1).wav"]
    members = {name: pcm16_wav(noise(SECONDS, seed=i)) for i, name in enumerate(names)}
    members["labels.csv"] = (
        "path,label,group\n"
        + "".join(
            f'"{n.replace(chr(34), 2 * chr(34))}",{f},{f}\n'
            for n, f in zip(names, FORMULAS, strict=True)
        )
    ).encode()
    response = post_zip(client, make_zip(members))
    assert response.status_code == 202, response.get_data(as_text=True)
    text = client.get(response.get_json()["links"]["results"]).get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
    assert sorted(r["path"] for r in rows) == sorted("'" + n for n in names)
    assert sorted(r["label"] for r in rows) == sorted("'" + f for f in FORMULAS)
    assert sorted(r["group"] for r in rows) == sorted("'" + f for f in FORMULAS)


# --- sizes: URLs and headers --------------------------------------------------------------


def test_long_urls_and_large_headers_are_refused_in_the_error_shape(client: FlaskClient) -> None:
    assert_error(client.get("/api/v1/jobs/" + "a" * 9000), 414, "uri_too_long")
    assert_error(client.get("/api/v1/jobs?cursor=" + "b" * 9000), 414, "uri_too_long")
    assert_error(
        client.get("/api/v1/jobs", headers={"X-Big": "c" * 9000}), 431, "headers_too_large"
    )
    many = {f"X-H{i}": "v" for i in range(150)}
    assert_error(client.get("/api/v1/jobs", headers=many), 431, "headers_too_large")


# --- archives: whole-archive ratio and expansion ---------------------------------------------


def test_many_small_highly_compressed_members_are_refused_at_once(
    client: FlaskClient, settings: Settings
) -> None:
    """The measured bomb: a 439 KiB zip of 400 members of 1 MiB of zeros, each just
    under the per-member ratio check's size, held a gunicorn worker 11.6 s."""
    members = {f"m{i:03d}.wav": b"\0" * (1024 * 1024 - 1) for i in range(400)}
    archive = make_zip(members)
    before = blobs(settings)
    started = time.monotonic()
    assert_error(post_zip(client, archive), 422, "compression_ratio_too_high")
    assert time.monotonic() - started < 2.0
    assert blobs(settings) == before


def test_expansion_is_bounded_per_request_even_at_a_modest_ratio(settings: Settings) -> None:
    # A sixth random, the rest zeros: about 6:1, far below the ratio limit, but 5 MiB
    # of expansion against 1 MiB plus the archive's own 1 MiB.
    tight = configure(settings, archive_max_expansion_bytes=1024 * 1024)
    client = create_app(tight).test_client()
    rng = np.random.default_rng(7)
    members = {f"m{i}.wav": rng.bytes(100_000) + b"\0" * 500_000 for i in range(10)}
    assert_error(post_zip(client, make_zip(members)), 422, "compression_ratio_too_high")


# --- no orphans ------------------------------------------------------------------------------


def test_audio_is_deleted_when_the_job_row_cannot_be_stored(
    client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the database refused the row")

    monkeypatch.setattr(jobs, "create", broken)
    before = blobs(settings)
    assert_error(upload(client, pcm16_wav(noise(SECONDS))), 500, "internal_error")
    assert blobs(settings) == before
