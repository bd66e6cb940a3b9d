"""Cells of the CSV files Tussis writes for people to open: never a spreadsheet formula.

A spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``), and some strip a leading tab or
carriage return before they look. File names, labels and groups come from whoever
uploaded them, so every text cell of such a file goes through :func:`safe_cell`,
OWASP's CSV-injection rule: a cell that begins with one of those characters is
written with a leading apostrophe, which spreadsheets show as text. A number (``-0.25``,
``+1e-3``) is left as it is: a spreadsheet reads it as a number, not a formula.

The one implementation, in the client package (which every install has and which
imports nothing of the server): the API's ``results.csv`` (api/batches.py) and the
``tussis`` command and client library, which apply it again to the CSV they write
(tussis/connection.py), use it. The labels file the client sends is data for the
server, not a sheet, and is sent as written.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value``, or for text that a spreadsheet would run as a formula, the text
    behind an apostrophe. Anything but text (numbers, ``None``) is returned as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(value) for value in row]


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text lines (ends kept) of a byte stream that arrives in ``chunks``; bytes
    that are not UTF-8 are carried through (``surrogateescape``) rather than lost."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line + "\n"
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def safe_csv(lines: Iterable[str]) -> Iterator[str]:
    """CSV text (``lines`` as a file yields them, line ends kept) written again with
    every cell made safe, a row at a time; the dialect is the one the API writes."""
    out = io.StringIO()
    writer = csv.writer(out)
    for row in csv.reader(lines):
        writer.writerow(safe_row(row))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
