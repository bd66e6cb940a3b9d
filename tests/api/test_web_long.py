"""The web page's long-recording view in headless Chromium against a real stack
(gunicorn + a celery worker with two children): a resumable upload with progress, the
counted result, the timeline, and the event list, where a click plays that event."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.config import PROJECT_ROOT, Settings
from tests.api.test_web import _expect, browser, playwright  # noqa: F401
from tests.conftest import base_settings, migrate
from tests.long_fixtures import DEFAULT_MODEL, LongCase, long_env
from tests.stack import Stack

pytestmark = pytest.mark.integration
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot-long-recording.png"


@pytest.fixture(scope="module")
def long_web_stack(
    tmp_path_factory: pytest.TempPathFactory, long_case: LongCase
) -> Iterator[Stack]:
    settings: Settings = base_settings(
        tmp_path_factory.mktemp("long-web"), model_bundle=DEFAULT_MODEL
    )
    migrate(settings.database_url)
    stack = Stack(settings, settings.data_dir, **long_env(settings, long_case))
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        yield stack
    finally:
        stack.stop()


def test_a_long_recording_is_uploaded_counted_and_its_events_play(
    playwright: Any,  # noqa: F811
    long_web_stack: Stack,
    long_case: LongCase,
    tmp_path: Path,
) -> None:
    night = tmp_path / "night.wav"
    night.write_bytes(long_case.wav)
    expect = _expect()
    with browser(playwright, long_web_stack.url) as session:
        page = session.page
        page.set_input_files("#long-file", night)
        expect(page.locator("#long-result")).to_be_visible(timeout=300_000)
        assert page.locator("#long-bar").evaluate("p => p.value") == 100
        expect(page.locator("#long-count")).to_have_text(str(len(long_case.expected)))
        rows = page.locator("#long-rows tr")
        expect(rows).to_have_count(len(long_case.expected))
        first = long_case.expected[0]
        expect(rows.nth(0)).to_contain_text(f"{first[1] - first[0]:.2f} s")
        page.wait_for_function(
            "() => document.getElementById('long-timeline').naturalWidth > 0", timeout=30_000
        )
        # A click plays that event: its span (with half a second around it) as a WAV.
        with page.expect_response(
            lambda r: urlsplit(r.url).path.endswith("/audio"), timeout=30_000
        ) as answer:
            rows.nth(1).click()
        response = answer.value
        assert response.status == 200 and response.headers["content-type"] == "audio/wav"
        asked = parse_qs(urlsplit(response.url).query)
        second = long_case.expected[1]
        assert float(asked["start_s"][0]) == pytest.approx(max(0, second[0] - 0.5), abs=0.01)
        assert float(asked["end_s"][0]) == pytest.approx(second[1] + 0.5, abs=0.01)
        page.wait_for_function(
            "() => document.getElementById('long-audio').readyState >= 1", timeout=30_000
        )
        duration = page.locator("#long-audio").evaluate("a => a.duration")
        assert duration == pytest.approx(second[1] - second[0] + 1.0, abs=0.05)
        page.wait_for_load_state("networkidle")
        shot = tmp_path / "long.png"
        page.locator("#long-view").screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("TUSSIS_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, SCREENSHOT)
        session.assert_only_loopback()
        session.assert_clean()
        paths = {urlsplit(u).path for u in session.requests}
        assert {"/assets/long.js", "/api/v1/uploads"} <= paths
