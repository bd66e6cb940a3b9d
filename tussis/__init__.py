"""Tussis's client package: the ``tussis`` command and an HTTP client for the
Tussis API (``from tussis import Client``). A bare ``pip install tussis`` has
this package only; the service's code (``api``, ``worker``, ``ml``, ``shared``)
runs from a checkout or the Docker image.

Names are imported on first use (PEP 562), so ``import tussis`` stays cheap for
the command line.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tussis.client import Client
    from tussis.errors import (
        RequestRefused,
        ServerUnreachable,
        TussisError,
        UsageProblem,
        WaitTimeout,
    )
    from tussis.recordings import CoughEvent, Recording, RecordingResult
    from tussis.resources import (
        Batch,
        Comparison,
        Evaluation,
        Health,
        Job,
        JobError,
        Metrics,
        Model,
        Result,
    )

_HOMES = {
    "Client": "tussis.client",
    **dict.fromkeys(("CoughEvent", "Recording", "RecordingResult"), "tussis.recordings"),
    **dict.fromkeys(
        (
            "Batch",
            "Comparison",
            "Evaluation",
            "Health",
            "Job",
            "JobError",
            "Metrics",
            "Model",
            "Result",
        ),
        "tussis.resources",
    ),
    **dict.fromkeys(
        ("RequestRefused", "ServerUnreachable", "TussisError", "UsageProblem", "WaitTimeout"),
        "tussis.errors",
    ),
}
__all__ = [
    "Batch",
    "Client",
    "Comparison",
    "CoughEvent",
    "Evaluation",
    "Health",
    "Job",
    "JobError",
    "Metrics",
    "Model",
    "Recording",
    "RecordingResult",
    "RequestRefused",
    "Result",
    "ServerUnreachable",
    "TussisError",
    "UsageProblem",
    "WaitTimeout",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'tussis' has no attribute {name!r}")
