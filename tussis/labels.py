"""The labels file of ``tussis submit --labels``: a CSV ``path,label[,group]`` naming
submitted files by their item paths, checked here before anything is uploaded and
sent, part by part, as the ``labels`` file of each upload (docs/batches.md)."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tussis.errors import UsageProblem

REQUIRED_COLUMNS = ("path", "label")
MAX_LABELS_BYTES = 10**8  # a sanity limit: each part sends only its own rows
MAX_VALUE_CHARS = 255  # the longest label or group the server keeps
SHOWN = 5  # unknown paths named in the error message


@dataclass(frozen=True)
class Label:
    label: str
    group: str | None = None


@dataclass(frozen=True)
class Labels:
    """A checked labels file: one label (and group) per item path."""

    source: Path
    by_path: dict[str, Label]
    has_group: bool
    sha256: str  # of the file's bytes: a resumed submit notices a changed file

    def check_covers(self, paths: Iterable[str]) -> None:
        """Every labelled path names a submitted file, or nothing is uploaded."""
        known = set(paths)
        unknown = sorted(p for p in self.by_path if p not in known)
        if unknown:
            shown = ", ".join(unknown[:SHOWN]) + (
                f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
            )
            raise UsageProblem(
                f"the labels file {self.source} names {len(unknown)} path(s) that are no "
                f"submitted file: {shown}. "
                "Paths are relative to the folder given, as the batch names its items "
                "(recordings/site-a/p001.wav is site-a/p001.wav)"
            )

    def part_csv(self, paths: Sequence[str]) -> bytes | None:
        """The labels of one upload's files, as the CSV the server reads; None when
        none of them is labelled."""
        rows = [(p, self.by_path[p]) for p in dict.fromkeys(paths) if p in self.by_path]
        if not rows:
            return None
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "label", "group"] if self.has_group else ["path", "label"])
        for path, lab in rows:
            writer.writerow(
                [path, lab.label, lab.group or ""] if self.has_group else [path, lab.label]
            )
        return out.getvalue().encode()


def _malformed(source: Path, detail: str) -> UsageProblem:
    return UsageProblem(f"the labels file {source} cannot be used: {detail}")


def _item_path(value: str) -> str:
    """The item path a row means: as ``tussis submit`` names items (slashes, no ``./``)."""
    path = value.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def read_labels(source: Path) -> Labels:
    """Read and check a labels file; a :class:`UsageProblem` (exit code 2) says what is
    wrong and on which line."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise _malformed(source, exc.strerror or str(exc)) from exc
    return parse_labels(data, source)


def labels_from_mapping(
    labels: Mapping[str, str], groups: Mapping[str, str] | None = None
) -> Labels:
    """``Client.submit_batch(labels={path: label}, groups={path: group})``: the same
    checks as a labels file, whose rows these mappings are."""
    source = Path("<labels mapping>")
    extra = sorted(set(groups or {}) - set(labels))
    if extra:
        raise _malformed(source, f"groups name {len(extra)} path(s) without a label: {extra[0]}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "group"] if groups is not None else ["path", "label"])
    for path, label in labels.items():
        row = [str(path), str(label)]
        writer.writerow([*row, str((groups or {}).get(path, ""))] if groups is not None else row)
    return parse_labels(out.getvalue().encode(), source)


def parse_labels(data: bytes, source: Path) -> Labels:
    """Check a labels CSV's bytes (``source`` names it in messages)."""
    if len(data) > MAX_LABELS_BYTES:
        raise _malformed(source, f"it is larger than {MAX_LABELS_BYTES // 10**6} MB")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's UTF-8 export starts with a BOM
    except UnicodeDecodeError as exc:
        raise _malformed(source, "it is not UTF-8 text") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise _malformed(
            source, "it is empty (the first line must be path,label[,group])"
        ) from None
    except csv.Error as exc:
        raise _malformed(source, f"line 1 is not CSV ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise _malformed(
            source,
            f"its first line must name the columns path,label (and optionally group); "
            f"it lacks {', '.join(missing)}",
        )
    if len(set(header)) != len(header):
        raise _malformed(source, "its first line names a column twice")
    column = {name: header.index(name) for name in ("path", "label", "group") if name in header}
    by_path: dict[str, Label] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(header):
                raise _malformed(
                    source, f"line {line} has {len(row)} fields, the header {len(header)}"
                )
            path = _item_path(row[column["path"]])
            label = row[column["label"]].strip()
            group = row[column["group"]].strip() if "group" in column else ""
            if not path:
                raise _malformed(source, f"line {line} has no path")
            if not label:
                raise _malformed(source, f"line {line} has no label (leave an unlabelled file out)")
            if any(_has_control(v) for v in (path, label, group)):
                raise _malformed(source, f"line {line} contains a control character")
            if max(len(label), len(group)) > MAX_VALUE_CHARS:
                raise _malformed(
                    source, f"line {line}: a label or group is over {MAX_VALUE_CHARS} characters"
                )
            if path in by_path:
                raise _malformed(source, f"line {line} labels {path} a second time")
            by_path[path] = Label(label, group or None)
    except csv.Error as exc:
        raise _malformed(source, f"line {reader.line_num} is not CSV ({exc})") from exc
    if not by_path:
        raise _malformed(source, "it labels no file")
    return Labels(
        source=source,
        by_path=by_path,
        has_group="group" in column,
        sha256=hashlib.sha256(data).hexdigest(),
    )
