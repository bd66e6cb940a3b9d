"""A streamed ``multipart/form-data`` body with a known length."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from tussis.errors import FileChanged
from tussis.files import LocalFile

# --- multipart body ------------------------------------------------------------------


def header_param(name: str, value: str) -> str:
    """``name="value"`` as browsers write it (HTML5): UTF-8, with quotes and line breaks
    percent-encoded; the server keeps slashes, so a relative path survives."""
    return f'{name}="{value.translate({10: "%0A", 13: "%0D", 34: "%22"})}"'


class MultipartBody:
    """A streamed ``multipart/form-data`` body with a known length, read file by file
    (never a whole part in memory); ``on_bytes`` counts the file bytes sent.
    ``attachments`` are small in-memory files ``(field, filename, content type, bytes)``,
    such as a part's labels CSV; they go before the recordings."""

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[LocalFile],
        file_field: str = "files",
        on_bytes: Callable[[int], object] | None = None,
        attachments: Sequence[tuple[str, str, str, bytes]] = (),
    ) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.on_bytes = on_bytes
        segments: list[bytes | LocalFile] = []
        for name, value in fields:
            segments.append(
                self._head(f"{header_param('name', name)}", None) + value.encode() + b"\r\n"
            )
        for name, filename, content_type, content in attachments:
            disposition = f"{header_param('name', name)}; {header_param('filename', filename)}"
            segments.append(self._head(disposition, content_type) + content + b"\r\n")
        for f in files:
            disposition = f"{header_param('name', file_field)}; {header_param('filename', f.rel)}"
            segments.append(self._head(disposition, "application/octet-stream"))
            segments.append(f)
            segments.append(b"\r\n")
        segments.append(f"--{self.boundary}--\r\n".encode())
        self._segments = segments
        self._length = sum(s.size if isinstance(s, LocalFile) else len(s) for s in segments)
        self._index = 0
        self._buffer = b""
        self._fh: BinaryIO | None = None
        self._left = 0
        self._digest: Any = None

    def _head(self, disposition: str, content_type: str | None) -> bytes:
        lines = [f"--{self.boundary}", f"Content-Disposition: form-data; {disposition}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def __len__(self) -> int:
        return self._length

    def _file_chunk(self, size: int) -> bytes:
        current = self._segments[self._index]
        assert isinstance(current, LocalFile)
        if self._fh is None:
            self._fh = open(current.path, "rb")  # noqa: SIM115 - closed at its end
            self._left = current.size
            self._digest = hashlib.sha256()
        chunk = self._fh.read(min(size, self._left)) if self._left else b""
        self._left -= len(chunk)
        self._digest.update(chunk)
        if (not chunk and self._left) or (self._left == 0 and self._fh.read(1)):
            self.close()
            raise FileChanged(f"{current.path} changed while it was being uploaded; run again")
        if self._left == 0:
            self.close()
            if self._digest.hexdigest() != current.sha256:
                raise FileChanged(f"{current.path} changed while it was being uploaded; run again")
            self._index += 1
        if self.on_bytes and chunk:
            self.on_bytes(len(chunk))
        return chunk

    def read(self, size: int = -1) -> bytes:
        size = 64 * 1024 if size is None or size < 0 else size
        while self._index < len(self._segments):
            current = self._segments[self._index]
            if isinstance(current, LocalFile):
                if current.size == 0:
                    self._index += 1
                    continue
                return self._file_chunk(size)
            self._index += 1
            return current
        return b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
