"""The errors of the client library, each with the exit code a ``tussis`` command ends
with: one base class, :class:`TussisError`; :class:`RequestRefused` carries the server's
``status``, ``code`` and message."""

from __future__ import annotations

import requests

# Exit codes a script can rely on.
EXIT_OK = 0
EXIT_INCOMPLETE = 1  # some files rejected, or some items failed
EXIT_USAGE = 2  # click's own usage errors
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4  # the server answered with an HTTP error
EXIT_INTERRUPTED = 130
# --- errors --------------------------------------------------------------------------


class TussisError(Exception):
    """Anything that ends a command with a message and an exit code."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageProblem(TussisError):
    exit_code = EXIT_USAGE


class ServerUnreachable(TussisError):
    exit_code = EXIT_UNREACHABLE


class RequestRefused(TussisError):
    """An HTTP error answer, in the API's shape ``{"error": {"code", "message", "status"}}``."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the server refused the request (HTTP {status} {code}): {message}")
        self.status = status
        self.code = code
        self.api_message = message

    @classmethod
    def from_response(cls, response: requests.Response) -> RequestRefused:
        try:
            error = response.json()["error"]
            return cls(response.status_code, str(error["code"]), str(error["message"]))
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:200] or response.reason or ""
            return cls(response.status_code, "http_error", text)


class WaitTimeout(TussisError):
    """``job.wait(timeout=...)`` or ``batch.wait(timeout=...)`` ran out of time; the job
    or batch goes on on the server (``resource_id``), wait again or reload it later."""

    def __init__(self, message: str, resource_id: str) -> None:
        super().__init__(message)
        self.resource_id = resource_id


class FileChanged(TussisError):
    """A file changed between hashing and uploading."""


def root_cause(exc: BaseException) -> str:
    """The innermost useful reason of a requests connection error, e.g. 'Connection refused'."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror
        nxt = getattr(current, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = nxt or current.__cause__ or current.__context__
    return reason
