"""``tussis submit --labels``: the labels file is checked before anything is sent, and
each upload carries the labels of its own files only (tussis/labels.py)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from tests.stack import BIN, free_port
from tussis.errors import EXIT_USAGE, UsageProblem
from tussis.files import LocalFile
from tussis.labels import Label, read_labels
from tussis.multipart import MultipartBody


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_labels_file_is_read_as_the_batch_names_its_items(tmp_path: Path) -> None:
    # A spreadsheet's export: BOM, CRLF, spaces, a Windows path, ./, an extra column.
    source = write(
        tmp_path,
        "\ufeffPath , Label,group,notes\r\n"
        "site-a/p001.wav, sick ,site-a,x\r\n"
        ".\\site-a\\p002.wav,not sick,site-a,\r\n"
        "./site-b/p003.wav,not sick,,\r\n"
        ",,,\r\n",
    )
    labels = read_labels(source)
    assert labels.by_path == {
        "site-a/p001.wav": Label("sick", "site-a"),
        "site-a/p002.wav": Label("not sick", "site-a"),
        "site-b/p003.wav": Label("not sick", None),
    }
    assert labels.has_group
    labels.check_covers(["site-a/p001.wav", "site-a/p002.wav", "site-b/p003.wav", "x.wav"])

    # A part's CSV holds its own files' rows only, in the columns the server reads.
    part = labels.part_csv(["site-b/p003.wav", "x.wav", "site-a/p001.wav"])
    assert part is not None
    rows = list(csv.reader(io.StringIO(part.decode())))
    assert rows == [
        ["path", "label", "group"],
        ["site-b/p003.wav", "not sick", ""],
        ["site-a/p001.wav", "sick", "site-a"],
    ]
    assert labels.part_csv(["x.wav"]) is None  # nothing labelled: no labels part

    # Without a group column, none is sent.
    plain = read_labels(write(tmp_path, "path,label\na.wav,sick\n", "plain.csv"))
    assert not plain.has_group
    assert plain.part_csv(["a.wav"]) == b"path,label\na.wav,sick\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("file,diagnosis\na.wav,sick\n", "it lacks path, label"),
        ("path,label,path\na.wav,sick,b\n", "names a column twice"),
        ("path,label\n", "it labels no file"),
        ("path,label,group\na.wav,sick\n", "line 2 has 2 fields, the header 3"),
        ("path,label\na.wav,sick\nb.wav,sick,extra\n", "line 3 has 3 fields"),
        ("path,label\n,sick\n", "line 2 has no path"),
        ("path,label\na.wav,\n", "line 2 has no label"),
        ("path,label\na.wav,sick\n./a.wav,not sick\n", "line 3 labels a.wav a second time"),
        ("path,label\na.wav,si\x01ck\n", "line 2 contains a control character"),
        ('path,label\na.wav,"sick\n', "is not CSV"),
        ("path,label\na.wav," + "x" * 256 + "\n", "over 255 characters"),
    ],
)
def test_a_malformed_labels_file_says_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(UsageProblem) as info:
        read_labels(write(tmp_path, text))
    assert message in info.value.message
    assert str(tmp_path / "labels.csv") in info.value.message
    assert info.value.exit_code == EXIT_USAGE


def test_labels_that_name_no_submitted_file_are_refused(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path, "path,label\na.wav,sick\nb.wav,sick\nc.wav,sick\n"))
    with pytest.raises(UsageProblem) as info:
        labels.check_covers(["a.wav", "folder/b.wav"])
    assert "names 2 path(s) that are no submitted file: b.wav, c.wav" in info.value.message


def test_non_utf8_labels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes("path,label\né.wav,sick\n".encode("latin-1"))
    with pytest.raises(UsageProblem, match="not UTF-8"):
        read_labels(path)


def test_the_labels_part_goes_first_in_the_upload(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF....")
    f = LocalFile(audio, "a.wav", audio.stat().st_size, hashlib.sha256(b"RIFF....").hexdigest())
    body = MultipartBody(
        [("open", "true")],
        [f],
        attachments=[("labels", "labels.csv", "text/csv", b"path,label\na.wav,sick\n")],
    )
    data = b"".join(iter(lambda: body.read(1024), b""))
    assert len(data) == len(body)
    labels_at = data.index(b'name="labels"; filename="labels.csv"')
    assert labels_at < data.index(b'name="files"; filename="a.wav"')
    assert b"Content-Type: text/csv\r\n\r\npath,label\na.wav,sick\n\r\n" in data


@pytest.mark.parametrize(
    "text",
    ["path;label\na.wav;sick\n", "path,label\nnot-there.wav,sick\n"],
    ids=["malformed", "unknown-path"],
)
def test_submit_refuses_bad_labels_before_contacting_the_server(
    tmp_path: Path, cough_files: list[Path], text: str
) -> None:
    """Nothing listens on the server's port: a request would end with exit code 3."""
    root = tmp_path / "recordings"
    root.mkdir()
    (root / cough_files[0].name).symlink_to(cough_files[0])
    labels = write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSIS_")}
    run = subprocess.run(
        [str(BIN / "tussis"), "submit", str(root), "--labels", str(labels),
         "--server", f"http://127.0.0.1:{free_port()}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == EXIT_USAGE, run.stderr
    assert "labels file" in run.stderr and "cannot reach" not in run.stderr
    assert run.stdout == ""
    assert not list(tmp_path.glob(".tussis-submit-*.json"))  # no batch was begun
