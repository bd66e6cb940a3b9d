"""Counts over time from a long recording's events (``ml.events``): the result a
recording answers with, and the bins its timeline draws.

Binning lives here once: per clock hour when the recording's start time is known
(the first bin is the hour the recording started in, partly covered), else per
hour from the start; and per 10 minutes the same way. Each bin says how much of it
the recording covers, so a rate is never read off a partly recorded hour as if whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ml.events import Event

HOUR_S = 3600.0
TEN_MINUTES_S = 600.0


def bins(
    events: Sequence[Event],
    duration_s: float,
    width_s: float,
    recorded_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Events counted by their start in bins of ``width_s``: ``start_s`` (seconds from
    the recording's start, negative for a clock bin that began before it), ``count``,
    ``covered_s`` (recorded seconds in the bin) and, with ``recorded_at``, ``start``
    (the bin's wall-clock start, ISO 8601)."""
    if duration_s <= 0:
        return []
    shift = 0.0
    if recorded_at is not None:
        # Clock-aligned: the bin boundaries fall on whole hours (or 10 minutes) of the day.
        epoch = recorded_at.timestamp()
        shift = epoch - math.floor(epoch / width_s) * width_s
    n = max(1, math.ceil((duration_s + shift) / width_s - 1e-9))
    counts = [0] * n
    for event in events:
        index = min(n - 1, max(0, int((event.start_s + shift) // width_s)))
        counts[index] += 1
    out = []
    for i, count in enumerate(counts):
        start = i * width_s - shift
        covered = max(0.0, min(start + width_s, duration_s) - max(start, 0.0))
        row: dict[str, Any] = {
            "start_s": round(start, 3),
            "count": count,
            "covered_s": round(covered, 3),
        }
        if recorded_at is not None:
            row["start"] = (recorded_at + timedelta(seconds=start)).isoformat()
        out.append(row)
    return out


def summary(
    events: Sequence[Event],
    episodes: Sequence[Event],
    duration_s: float,
    recorded_at: datetime | None,
    detector: dict[str, Any],
) -> dict[str, Any]:
    """The result of a counted recording (docs/long-recordings.md, Result)."""
    hours = duration_s / HOUR_S
    return {
        "cough_count": len(events),
        "episodes": len(episodes),
        "coughs_per_hour": round(len(events) / hours, 3) if hours > 0 else None,
        "episodes_per_hour": round(len(episodes) / hours, 3) if hours > 0 else None,
        "duration_s": round(duration_s, 3),
        "hourly": bins(events, duration_s, HOUR_S, recorded_at),
        "ten_minutes": bins(events, duration_s, TEN_MINUTES_S, recorded_at),
        "detector": detector,
    }
