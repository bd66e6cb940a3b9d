"""The web page (``GET /``, ``api/web.py``, ``api/static/``) as a person uses it: a real
headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) against a real
gunicorn + celery worker stack on PostgreSQL and Redis, with real recordings.

Playwright's own browser downloads are never used (``playwright install`` needs the
internet); the page must work with no internet at all, which ``test_page_*`` check.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from api.web import CONTENT_SECURITY_POLICY
from shared.audio import AudioError, check_usable, decode
from shared.config import PROJECT_ROOT, normalise_database_url
from tests.audio_samples import wav
from tests.conftest import base_settings, migrate, require
from tests.stack import Stack, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAKE_MICROPHONE_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
STATIC = PROJECT_ROOT / "api" / "static"
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot.png"
EVALUATION_SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot-evaluation.png"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RESULT_TIMEOUT_MS = 120_000
API_KEY = "web-test-key"


# --- the page's files: no external URL, strict CSP (no browser needed) ------------------


class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "poster", "data") and value:
                self.refs.append(value)


def _is_local(ref: str) -> bool:
    """Relative (or same-origin absolute path); never another host or protocol-relative."""
    parts = urlsplit(ref.strip())
    return not parts.scheme and not parts.netloc and not ref.strip().startswith("//")


@pytest.fixture(scope="module")
def web_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from api import create_app

    settings = base_settings(tmp_path_factory.mktemp("web-client"))
    migrate(settings.database_url)
    return create_app(settings).test_client()


def test_page_references_nothing_outside_this_server(web_client: Any) -> None:
    index = web_client.get("/")
    assert index.status_code == 200
    assert index.mimetype == "text/html"
    page = index.get_data(as_text=True)

    parser = _Refs()
    parser.feed(page)
    refs = list(parser.refs)
    css = (STATIC / "app.css").read_text()
    refs += re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    refs += re.findall(r"@import\s+['\"]([^'\"]+)", css)
    js = (STATIC / "app.js").read_text()
    # Every string literal in the script that looks like a URL or a path.
    literals = re.findall(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'", js)
    url_like = re.compile(r"^(/|[A-Za-z][\w+.-]*:\S|\.\.?/)")
    refs += [s for pair in literals for s in pair if url_like.match(s)]
    assert any(r.endswith("app.js") for r in parser.refs)
    assert any(r.endswith("app.css") for r in parser.refs)
    external = [r for r in refs if not _is_local(r)]
    assert not external, f"external URLs in the page: {external}"
    # Nothing that fetches from elsewhere hides in the code either.
    for name, text in (("app.js", js), ("app.css", css), ("index.html", page)):
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name

    # Every local reference the HTML makes is served by the app, under the same CSP.
    for ref in parser.refs:
        if ref.startswith("#"):
            continue
        asset = web_client.get("/" + ref.lstrip("/"))
        assert asset.status_code == 200, ref
        assert asset.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_page_has_a_strict_content_security_policy(web_client: Any) -> None:
    response = web_client.get("/")
    csp = {
        d.split()[0]: d.split()[1:]
        for d in response.headers["Content-Security-Policy"].split(";")
        if d.strip()
    }
    assert csp["default-src"] == ["'self'"]
    assert csp["media-src"] == ["'self'", "blob:"]
    assert csp["img-src"] == ["'self'", "blob:", "data:"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # The API itself is unchanged: JSON, and no page policy on it.
    models = web_client.get("/api/v1/models")
    assert models.mimetype == "application/json"


def test_page_tells_people_it_is_not_a_diagnosis(web_client: Any) -> None:
    page = web_client.get("/").get_data(as_text=True)
    assert "Research tool — not a diagnosis." in page
    assert 'aria-live="polite"' in page
    # Every form control has a label.
    for control in re.findall(r"<input[^>]*\bid=\"([^\"]+)\"", page):
        assert f'for="{control}"' in page, control


# --- a real stack and a real browser ------------------------------------------------------


@contextmanager
def running_stack(
    tmp: Path, postgres_url: str, redis_url: str, **overrides: Any
) -> Iterator[Stack]:
    """An API and a worker on PostgreSQL + Redis with these settings, stopped after."""
    settings = base_settings(
        tmp,
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        **overrides,
    )
    stack = Stack(settings, tmp)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def web_stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str, tiny_bundle: Path
) -> Iterator[Stack]:
    """One API and one worker for this module, as tests/test_integration.py's stacks."""
    with running_stack(
        tmp_path_factory.mktemp("web-stack"), postgres_url, redis_url, model_bundle=tiny_bundle
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    require(CHROMIUM.is_file(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        yield p


@dataclass
class Session:
    page: Any
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def assert_only_loopback(self) -> None:
        assert self.requests, "the page made no request at all"
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("blob", "data"):
                continue
            assert parts.scheme in ("http", "https") and parts.hostname in LOOPBACK, url

    def assert_clean(self) -> None:
        assert not self.problems, self.problems


@contextmanager
def browser(playwright: Any, url: str, *extra_args: str) -> Iterator[Session]:
    """Chromium on the page at ``url``, with every request and script problem recorded."""
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + list(extra_args)
    )
    try:
        context = chromium.new_context(viewport={"width": 1100, "height": 900}, locale="en-GB")
        if extra_args:
            context.grant_permissions(["microphone"], origin=url)
        page = context.new_page()
        session = Session(page)
        page.on("request", lambda r: session.requests.append(r.url))
        page.on("pageerror", lambda e: session.problems.append(f"script error: {e}"))

        def console(message: Any) -> None:
            text = message.text
            if "Content Security Policy" in text or "Refused to" in text:
                session.problems.append(f"CSP: {text}")

        page.on("console", console)
        page.set_default_timeout(30_000)
        page.goto(f"{url}/")
        page.wait_for_selector("#input-view")
        yield session
        context.close()
    finally:
        chromium.close()


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _submitted_job(page: Any, action: Any) -> dict[str, Any]:
    """Do ``action`` and return the 202 body of the POST /api/v1/jobs it causes."""
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/api/v1/jobs" and r.request.method == "POST",
        timeout=60_000,
    ) as info:
        action()
    response = info.value
    assert response.status == 202, response.text()
    return response.json()


def _check_result_on_screen(session: Session, stack: Stack, job_id: str) -> dict[str, Any]:
    page, expect = session.page, _expect()
    expect(page.locator("#result-view")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    result = job["result"]
    expect(page.locator("#status")).to_contain_text("Succeeded")
    expect(page.locator("#result-diagnosis")).to_have_text(result["diagnosis"])
    expect(page.locator("#result-score")).to_have_text(f"{result['score'] * 100:.1f} %")
    expect(page.locator("#result-score-text")).to_contain_text(
        "probability of “sick” according to the model"
    )
    expect(page.locator("#result-model")).to_have_text(
        f"{result['model_id']} · version {result['model_version']}"
    )
    cough = "yes" if result["cough_detected"] else "no"
    expect(page.locator("#result-cough")).to_contain_text(cough)
    expect(page.locator("#result-cough")).to_contain_text(f"{result['cough_score'] * 100:.1f} %")
    # Where the gate found the cough, as the API reports it.
    start, end = result["cough_segments"][0]
    expect(page.locator("#result-cough")).to_contain_text(f"at {start:.1f}–{end:.1f} s")
    expect(page.locator(".notice")).to_contain_text("Research tool — not a diagnosis.")
    # The tiny bundle's manifest has no caveat: no empty note beside the score.
    if not result.get("caveat") and result.get("within_source_auc") is None:
        expect(page.locator("#result-model-note")).to_be_hidden()

    # The page's request has a worker draw the spectrogram (202, then the PNG); a job
    # whose recording could not be used has none, and the page hides it.
    drawable = (
        job["status"] == "succeeded" or (job.get("error") or {}).get("code") == "no_cough_detected"
    )
    if drawable:
        expect(page.locator("#spectrogram")).to_be_visible(timeout=30_000)
        width = page.locator("#spectrogram-img").evaluate("img => img.naturalWidth")
        assert width > 0
        # It says whether the model looked at it: this Inception V3 bundle did (a
        # YAMNet bundle listens to the audio itself).
        if job["status"] == "succeeded":
            expect(page.locator("#spectrogram-seen")).to_contain_text(
                "the picture the model (tiny-test) looked at"
            )
    else:
        page.wait_for_timeout(2_000)
        expect(page.locator("#spectrogram")).to_be_hidden()
    return job


@pytest.mark.integration
def test_one_uploaded_recording_shows_its_result(
    playwright: Any, web_stack: Stack, cough_file: Path, tmp_path: Path
) -> None:
    with browser(playwright, web_stack.url) as session:
        page = session.page
        polls: list[dict[str, str]] = []
        page.on(
            "request",
            lambda r: (
                polls.append(r.headers)
                if re.fullmatch(r"/api/v1/jobs/[0-9a-f-]+", urlsplit(r.url).path)
                else None
            ),
        )
        _expect()(page.get_by_text("Research tool — not a diagnosis.")).to_be_visible()
        accepted = _submitted_job(page, lambda: page.set_input_files("#file-input", cough_file))
        assert accepted["audio"]["filename"] == cough_file.name
        _check_result_on_screen(session, web_stack, accepted["id"])
        assert page.locator("#upload-progress").evaluate("p => p.value") == 100
        _expect()(page.locator("#again-button")).to_be_visible()
        # It long-polled (answered when the worker wrote the result), not on a timer.
        assert polls and all(h.get("prefer") == "wait=60" for h in polls), polls
        # The address opens this job again: a reload shows the same result.
        assert urlsplit(page.url).fragment == f"job={accepted['id']}"
        page.reload()
        _check_result_on_screen(session, web_stack, accepted["id"])

        page.wait_for_load_state("networkidle")
        shot = tmp_path / "result.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("TUSSIS_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, SCREENSHOT)

        session.assert_only_loopback()
        session.assert_clean()
        paths = {urlsplit(u).path for u in session.requests}
        assert {"/", "/assets/app.js", "/assets/app.css", "/api/v1/jobs"} <= paths


@pytest.fixture(scope="module")
def cough_wav(tmp_path_factory: pytest.TempPathFactory, cough_file: Path) -> Path:
    """A real cough as 48 kHz WAV, what Chromium's fake microphone plays (looped)."""
    audio = decode(cough_file.read_bytes(), 48000)
    path = tmp_path_factory.mktemp("fake-mic") / "cough.wav"
    path.write_bytes(wav(audio.samples, 48000))
    return path


@pytest.mark.integration
def test_a_recording_made_in_the_browser_is_analysed(
    playwright: Any, web_stack: Stack, cough_wav: Path
) -> None:
    args = [*FAKE_MICROPHONE_ARGS, f"--use-file-for-fake-audio-capture={cough_wav}"]
    with browser(playwright, web_stack.url, *args) as session:
        page, expect = session.page, _expect()
        button = page.locator("#record-button")
        expect(button).to_be_enabled()
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#record-label")).to_have_text("Stop recording")
        page.wait_for_timeout(2_500)
        seconds = float(page.locator("#record-time").inner_text().removesuffix(" s"))
        assert seconds >= 1.5
        accepted = _submitted_job(page, button.click)
        expect(button).to_have_attribute("aria-pressed", "false")
        assert accepted["audio"]["filename"] == "recording.webm"
        assert accepted["audio"]["content_type"].startswith("audio/webm")
        assert accepted["audio"]["duration_s"] >= 1.5

        # The fake microphone's sound may or may not pass the cough gate: either way the
        # page shows where the job ended and why.
        expect(page.locator("#status")).to_have_text(
            re.compile(r"^(Succeeded|Failed)"), timeout=RESULT_TIMEOUT_MS
        )
        job = web_stack.job(accepted["id"])
        if job["status"] == "succeeded":
            _check_result_on_screen(session, web_stack, job["id"])
        else:
            expect(page.locator("#error-message")).to_contain_text(job["error"]["message"])
            expect(page.locator("#error-code")).to_have_text(job["error"]["code"])
        expect(page.locator("#playback")).to_be_visible()
        session.assert_only_loopback()
        session.assert_clean()


@pytest.mark.integration
def test_a_rejected_upload_shows_the_apis_message(
    playwright: Any, web_stack: Stack, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("These are my notes, not a recording.\n" * 20)
    expected = web_stack.submit(fake.read_bytes(), fake.name)
    assert expected.status_code == 422
    error = expected.json()["error"]

    with browser(playwright, web_stack.url) as session:
        page, expect = session.page, _expect()
        with page.expect_response(lambda r: urlsplit(r.url).path == "/api/v1/jobs") as info:
            page.set_input_files("#file-input", fake)
        assert info.value.status == 422
        expect(page.locator("#error-box")).to_be_visible()
        expect(page.locator("#error-message")).to_have_text(error["message"])
        expect(page.locator("#error-code")).to_have_text(error["code"])
        expect(page.locator("#status")).to_have_text("The recording was not accepted.")
        expect(page.locator("#result-view")).to_be_hidden()
        # The page is usable again at once.
        expect(page.locator("#file-input")).to_be_enabled()
        expect(page.locator("#record-button")).to_be_enabled()
        session.assert_clean()


@pytest.mark.integration
def test_a_recording_without_a_cough_says_why_and_where_the_gate_looked(
    playwright: Any, web_stack: Stack, tmp_path: Path
) -> None:
    from ml.negatives import generate

    _, music = next(generate(seed=7, per_kind=1, kinds=["music"]))
    song = tmp_path / "song.wav"
    song.write_bytes(wav(music))
    with browser(playwright, web_stack.url) as session:
        page, expect = session.page, _expect()
        accepted = _submitted_job(page, lambda: page.set_input_files("#file-input", song))
        expect(page.locator("#error-box")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        job = web_stack.job(accepted["id"])
        assert job["error"]["code"] == "no_cough_detected", job
        message = page.locator("#error-message").inner_text()
        assert message.startswith(job["error"]["message"])
        assert "%; it looked hardest at" in message and " ; " not in message, message
        session.assert_clean()


@pytest.mark.integration
def test_several_files_go_as_one_batch(
    playwright: Any, web_stack: Stack, cough_files: list[Path], tmp_path: Path
) -> None:
    probe = requests.post(f"{web_stack.url}/api/v1/batches", timeout=30)
    if probe.status_code == 404:
        pytest.skip("the API has no POST /api/v1/batches yet (docs/batches-api.md)")
    chosen = cough_files[:3]
    junk = tmp_path / "readme.txt"
    junk.write_text("not audio\n" * 10)

    with browser(playwright, web_stack.url) as session:
        page, expect = session.page, _expect()
        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/v1/batches" and r.request.method == "POST",
            timeout=60_000,
        ) as info:
            page.set_input_files("#file-input", [*chosen, junk])
        assert info.value.status == 202, info.value.text()
        batch = info.value.json()
        assert batch["accepted"] == 3

        expect(page.locator("#batch-view")).to_be_visible()
        # The file that is not audio is listed with the API's reason; the others go on.
        rejected = batch["rejected"]
        assert [r["path"] for r in rejected] == ["readme.txt"]
        expect(page.locator("#rejections")).to_contain_text("readme.txt")
        expect(page.locator("#rejections")).to_contain_text(rejected[0]["error"]["message"])

        expect(page.locator("#batch-percent")).to_have_text("100 %", timeout=RESULT_TIMEOUT_MS)
        assert page.locator("#batch-progress").evaluate("p => p.value") == 100
        expect(page.locator("#batch-status")).to_contain_text("Completed")
        rows = page.locator("#batch-rows tr")
        expect(rows).to_have_count(3)
        # No labels were sent: the page asks (409 no_labels) and shows no evaluation.
        page.wait_for_timeout(1_500)
        expect(page.locator("#evaluation")).to_be_hidden()
        expect(page.locator("#batch-rows")).to_contain_text(chosen[0].name)
        for i in range(3):
            expect(rows.nth(i).locator(".badge")).to_have_text(re.compile("succeeded|failed"))

        link = page.locator("#csv-link")
        expect(link).to_be_visible()
        href = link.get_attribute("href")
        assert href == batch["links"]["results"]
        csv = requests.get(f"{web_stack.url}{href}", timeout=30)
        assert csv.status_code == 200
        assert len(csv.text.strip().splitlines()) == 1 + 3
        session.assert_only_loopback()
        session.assert_clean()


@pytest.mark.integration
def test_a_server_with_api_keys_asks_for_one(
    playwright: Any, web_stack: Stack, cough_file: Path, tmp_path: Path
) -> None:
    """A second API process with TUSSIS_API_KEYS on the same database and queue, so the
    module's worker analyses what it accepts."""
    keyed = Stack(web_stack.settings, tmp_path, TUSSIS_API_KEYS=f"clinic:{API_KEY}")
    try:
        keyed.start_api()
        with browser(playwright, keyed.url) as session:
            page, expect = session.page, _expect()
            with page.expect_response(lambda r: urlsplit(r.url).path == "/api/v1/jobs") as info:
                page.set_input_files("#file-input", cough_file)
            assert info.value.status == 401
            expect(page.locator("#key-panel")).to_be_visible()
            expect(page.locator("#key-message")).to_contain_text("API key")
            page.get_by_label("API key", exact=True).fill(API_KEY)
            accepted = _submitted_job(
                page, lambda: page.get_by_role("button", name="Use this key").click()
            )
            expect(page.locator("#key-panel")).to_be_hidden()
            expect(page.locator("#result-view")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
            job = requests.get(
                f"{keyed.url}/api/v1/jobs/{accepted['id']}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=10,
            ).json()
            expect(page.locator("#result-diagnosis")).to_have_text(job["result"]["diagnosis"])
            if job["links"].get("spectrogram"):  # fetched with the key, shown as a blob: URL
                expect(page.locator("#spectrogram")).to_be_visible(timeout=30_000)
                src = page.locator("#spectrogram-img").get_attribute("src")
                assert src and src.startswith("blob:")
            session.assert_only_loopback()
            session.assert_clean()
    finally:
        keyed.stop()


# --- a labelled batch's evaluation, and the model's caveat beside a score ----------------

CAVEAT = "No better than chance within a recording source: it tells the channels apart."
WITHIN_SOURCE_AUC = 0.4921


@pytest.fixture(scope="module")
def caveat_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """The tiny bundle under another name, its manifest carrying a card's caveat and
    within-source AUC."""
    bundle = tmp_path_factory.mktemp("caveat") / "tiny-caveat"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    # Its own name: the served-model registry (shared by this module's stacks, one
    # database) knows each (name, version) by one manifest.
    manifest.update(name="tiny-caveat", caveat=CAVEAT, within_source_auc=WITHIN_SOURCE_AUC)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


@pytest.fixture(scope="module")
def evaluation_stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
    caveat_bundle: Path,
) -> Iterator[Stack]:
    """The caveat bundle behind one API and one worker, the cough gate off (fast, and
    every recording is scored)."""
    with running_stack(
        tmp_path_factory.mktemp("evaluation-stack"),
        postgres_url,
        redis_url,
        model_bundle=caveat_bundle,
        cough_gate_bundle=None,
    ) as stack:
        yield stack


def _usable(path: Path) -> bool:
    """Accepted by the API (decodable, long and loud enough), as tests/client pick them."""
    try:
        check_usable(decode(path.read_bytes()), 0.3, 120.0, -60.0)
    except AudioError:
        return False
    return True


def _num(value: float | None) -> str:
    """As the page writes an AUC or a Brier score."""
    return "–" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _evaluation_cells(metrics: dict[str, Any]) -> list[str]:
    ci = metrics.get("auc_ci") or [None, None]
    auc = _num(metrics["auc"]) + (f" ({_num(ci[0])}–{_num(ci[1])})" if ci[0] is not None else "")
    c = metrics["confusion"]
    return [
        str(metrics["n"]),
        str(metrics["positives"]),
        auc,
        _pct(metrics["sensitivity"]),
        _pct(metrics["specificity"]),
        _num(metrics["brier"]),
        " · ".join(str(c[k]) for k in ("tp", "fn", "tn", "fp")),
    ]


@pytest.mark.integration
def test_a_labelled_batch_shows_its_evaluation(
    playwright: Any,
    evaluation_stack: Stack,
    cough_files: list[Path],
    cough_metadata: list[dict],
    tmp_path: Path,
) -> None:
    sick = {m["filename"]: bool(m["covid19"]) for m in cough_metadata}
    by_label: dict[bool, list[Path]] = {True: [], False: []}
    for f in cough_files:  # the metadata lists the not sick first
        if len(by_label[sick[f.name]]) < 4 and _usable(f):
            by_label[sick[f.name]].append(f)
    chosen = by_label[True] + by_label[False]
    assert len(chosen) == 8
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label,group\n"
        + "".join(
            f"{f.name},{'sick' if sick[f.name] else 'not sick'},site-{'ab'[i % 2]}\n"
            for i, f in enumerate(chosen)
        )
    )

    with browser(playwright, evaluation_stack.url) as session:
        page, expect = session.page, _expect()
        with page.expect_response(
            lambda r: urlsplit(r.url).path == "/api/v1/batches" and r.request.method == "POST",
            timeout=60_000,
        ) as info:
            page.set_input_files("#file-input", [*chosen, labels])
        assert info.value.status == 202, info.value.text()
        batch = info.value.json()
        assert batch["rejected"] == []  # the CSV went as the labels, not as a recording
        expect(page.locator("#subject")).to_contain_text("labels from labels.csv")

        expect(page.locator("#evaluation")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        base = f"{evaluation_stack.url}/api/v1/batches/{batch['id']}"
        items = requests.get(f"{base}/items", timeout=10).json()["items"]
        assert {i["path"]: i["group"] for i in items} == {
            f.name: f"site-{'ab'[i % 2]}" for i, f in enumerate(chosen)
        }
        evaluation = requests.get(f"{base}/evaluation", timeout=30).json()
        # The tiny bundle was trained on some of these very recordings: they are left
        # out of the figures (its split.json), and the page says so before them.
        left_out = evaluation["training_items"]["left_out"]
        assert evaluation["overall"]["n"] == len(chosen) - left_out
        assert set(evaluation["groups"]) == {"site-a", "site-b"}
        if left_out:
            expect(page.locator("#evaluation-training")).to_contain_text(
                f"{left_out} of the {len(chosen)} scored items are left out"
            )
            expect(page.locator("#evaluation-flattering")).to_contain_text("flatters the model")
        # The trivial baselines beside the model's AUC, overall and per group.
        baseline_rows = page.locator("#evaluation-baselines-rows tr")
        expect(baseline_rows).to_have_count(3)
        overall_baselines = evaluation["baselines"]["overall"]
        expect(baseline_rows.nth(0).locator("td")).to_have_text(
            [
                _num(overall_baselines["model_auc"]),
                _num(overall_baselines["duration"]["auc"]),
                _num(overall_baselines["active_share"]["auc"]),
                _num(overall_baselines["loudness"]["auc"]),
                "No: not better than "
                + ", ".join(x.replace("_", " ") for x in overall_baselines["not_beaten_by"])
                if overall_baselines["not_beaten_by"]
                else "Yes",
            ]
        )

        # The numbers on screen are the API's: overall, then each group.
        rows = page.locator("#evaluation-rows tr")
        expect(rows).to_have_count(3)
        for i, (name, metrics) in enumerate(
            [
                ("All labelled", evaluation["overall"]),
                ("Group site-a", evaluation["groups"]["site-a"]),
                ("Group site-b", evaluation["groups"]["site-b"]),
            ]
        ):
            expect(rows.nth(i).locator("th")).to_have_text(name)
            expect(rows.nth(i).locator("td")).to_have_text(_evaluation_cells(metrics))
        model = evaluation["model"]
        expect(page.locator("#evaluation-summary")).to_contain_text(
            f"{len(chosen) - left_out} labelled recordings scored by {model['id']} · version "
            f"{model['version']}"
        )
        group_only = page.locator("#evaluation-group-only")
        expect(group_only).to_contain_text(f"Group-only AUC: {_num(evaluation['group_only_auc'])}")
        expect(group_only).to_contain_text("the group alone predicts the label")
        expect(page.locator("#evaluation-left-out")).to_contain_text(
            "0 rejected by the cough gate, 0 with a label the model does not have, 0 failed"
        )

        # The ROC curve and the calibration diagram, as images through blob: URLs.
        for figure in ("evaluation-roc", "evaluation-calibration"):
            expect(page.locator(f"#{figure}")).to_be_visible(timeout=30_000)
            img = page.locator(f"#{figure}-img")
            assert img.evaluate("img => img.naturalWidth") > 100
            assert (img.get_attribute("src") or "").startswith("blob:")
        # Every score above the table carries the model's caveat.
        expect(page.locator("#batch-caveat")).to_contain_text(CAVEAT)
        if os.environ.get("TUSSIS_UPDATE_SCREENSHOT") == "1":
            page.locator("#batch-view").screenshot(path=str(EVALUATION_SCREENSHOT))

        # The comparison view: the same recordings again as a second batch (the same
        # model here: the plumbing, not the statistics, which tests/api/test_evaluation.py
        # checks against an independent computation), compared on the page.
        files = [("files", (f.name, f.read_bytes())) for f in chosen]
        files.append(("labels", ("labels.csv", labels.read_bytes())))
        second = requests.post(f"{evaluation_stack.url}/api/v1/batches", files=files, timeout=60)
        assert second.status_code == 202, second.text
        second_url = f"{evaluation_stack.url}/api/v1/batches/{second.json()['id']}"
        wait_until(
            lambda: requests.get(second_url, timeout=10).json()["status"] == "completed",
            RESULT_TIMEOUT_MS / 1000,
            "the second batch",
            0.5,
        )
        page.fill("#compare-batch", second.json()["id"])
        page.click("#compare-button")
        rows = page.locator("#comparison-rows tr")
        expect(rows).to_have_count(3, timeout=60_000)
        compared = requests.get(
            f"{base}/evaluation?compare={second.json()['id']}", timeout=30
        ).json()
        assert compared["items"]["compared"] == len(chosen) - left_out
        o = compared["overall"]
        expect(rows.nth(0).locator("th")).to_have_text("All compared")
        expect(rows.nth(0).locator("td").nth(1)).to_have_text(_num(o["auc_first"]))
        expect(rows.nth(0).locator("td").nth(2)).to_have_text(_num(o["auc_second"]))
        expect(page.locator("#comparison-summary")).to_contain_text(compared["items"]["message"])
        expect(page.locator("#comparison-roc")).to_be_visible(timeout=30_000)
        # An id that is no batch of this caller: the API's refusal, on the page.
        page.fill("#compare-batch", "not-a-batch")
        page.click("#compare-button")
        expect(page.locator("#comparison-problem")).to_contain_text("compare_batch_not_found")
        page.fill("#compare-batch", "")

        # The page's address now opens this batch: a reload shows it again.
        assert urlsplit(page.url).fragment == f"batch={batch['id']}"
        page.reload()
        expect(page.locator("#evaluation-rows tr")).to_have_count(3, timeout=30_000)
        expect(page.locator("#batch-status")).to_contain_text("Completed")
        expect(page.locator("#evaluation-roc")).to_be_visible(timeout=30_000)
        session.assert_only_loopback()
        session.assert_clean()


@pytest.mark.integration
def test_a_score_is_shown_with_the_models_caveat(
    playwright: Any, evaluation_stack: Stack, cough_file: Path
) -> None:
    with browser(playwright, evaluation_stack.url) as session:
        page, expect = session.page, _expect()
        accepted = _submitted_job(page, lambda: page.set_input_files("#file-input", cough_file))
        expect(page.locator("#result-view")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        result = evaluation_stack.job(accepted["id"])["result"]
        assert (result["caveat"], result["within_source_auc"]) == (CAVEAT, WITHIN_SOURCE_AUC)
        expect(page.locator("#result-score")).to_have_text(f"{result['score'] * 100:.1f} %")
        # Beside the score, in the same entry.
        score = page.locator(".facts dd").filter(has=page.locator("#result-score"))
        expect(score.locator("#result-model-note")).to_be_visible()
        expect(page.locator("#result-caveat")).to_have_text(f"Model caveat: {CAVEAT}")
        expect(page.locator("#result-within-source")).to_contain_text(
            "Within-source AUC of this model: 0.492"
        )
        session.assert_clean()
