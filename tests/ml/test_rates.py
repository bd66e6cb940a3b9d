"""Binning of a recording's events per hour and per 10 minutes (ml/rates.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from ml import rates
from ml.events import Event


def _at(*starts: float) -> list[Event]:
    return [Event(s, s + 0.3, 0.9) for s in starts]


def test_hours_from_the_start_without_a_start_time() -> None:
    rows = rates.bins(_at(10, 3599, 3600, 7300), 2.5 * 3600, 3600)
    assert [(r["start_s"], r["count"], r["covered_s"]) for r in rows] == [
        (0, 2, 3600),
        (3600, 1, 3600),
        (7200, 1, 1800),
    ]
    assert "start" not in rows[0]


def test_clock_hours_when_the_start_time_is_known() -> None:
    start = datetime(2026, 12, 5, 22, 40, tzinfo=UTC)  # 20 min before 23:00
    rows = rates.bins(_at(0, 1199, 1200, 4000), 3600, 3600, start)
    assert [r["start"] for r in rows] == [
        "2026-12-05T22:00:00+00:00",
        "2026-12-05T23:00:00+00:00",
    ]
    assert [r["count"] for r in rows] == [2, 2]
    assert [r["covered_s"] for r in rows] == [1200, 2400]


def test_summary_counts_events_and_episodes() -> None:
    events = _at(0, 1, 10)
    result = rates.summary(events, _at(0, 10), 1800, None, {"name": "d", "version": "1"})
    assert result["cough_count"] == 3 and result["episodes"] == 2
    assert result["coughs_per_hour"] == 6.0
    assert len(result["ten_minutes"]) == 3 and sum(r["count"] for r in result["hourly"]) == 3
