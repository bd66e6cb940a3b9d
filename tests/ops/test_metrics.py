"""``GET /metrics`` on the API (in-process here; through gunicorn and a worker in
tests/ops/test_stack.py): what it counts, its labels, and its optional token."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared.config import Settings
from tests.api.conftest import assert_error
from tests.conftest import base_settings, configure, migrate


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text answer, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: FlaskClient, **kwargs: object) -> dict:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def embedded(tmp_path: Path, **overrides: object) -> Settings:
    settings = base_settings(tmp_path, **overrides)
    migrate(settings.database_url)
    return settings


def test_requests_uploads_and_submitted_jobs_are_counted_by_route_never_by_path(
    tmp_path: Path, cough_file: Path
) -> None:
    client = create_app(embedded(tmp_path)).test_client()
    before = scrape(client)
    data = cough_file.read_bytes()
    submitted = client.post(
        "/api/v1/jobs",
        data={"audio": (cough_file.open("rb"), cough_file.name)},
        content_type="multipart/form-data",
    )
    assert submitted.status_code == 202, submitted.get_data(as_text=True)
    job_id = submitted.get_json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert_error(client.get("/api/v1/jobs/not-a-job-at-all"), 404, "job_not_found")
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests_total = "tussis_http_requests_total"
    assert delta(requests_total, route="/api/v1/jobs", method="POST", status="202") == 1
    assert delta(requests_total, route="/api/v1/jobs/<job_id>", method="GET", status="200") == 1
    assert delta(requests_total, route="/api/v1/jobs/<job_id>", method="GET", status="404") == 1
    assert delta(requests_total, route="unmatched", method="GET", status="404") == 1
    assert delta("tussis_jobs_submitted_total", kind="single") == 1
    assert delta("tussis_uploads_total", kind="single", status="202") == 1
    assert delta("tussis_upload_bytes_total", kind="single") >= len(data)
    latency = "tussis_http_request_duration_seconds_count"
    assert delta(latency, route="/api/v1/jobs", method="POST") == 1
    # No label anywhere holds a raw path, a job id or an owner.
    text = client.get("/metrics").get_data(as_text=True)
    assert job_id not in text and "not-a-job-at-all" not in text and "/no/such" not in text
    # Scrapes do not count themselves.
    assert not any(labels and ("route", "/metrics") in labels for _, labels in after)


def test_a_batch_counts_its_accepted_items(tmp_path: Path, cough_files: list[Path]) -> None:
    client = create_app(embedded(tmp_path)).test_client()
    before = scrape(client)
    files = [(f.open("rb"), f"site/{f.name}") for f in cough_files[:3]]
    response = client.post(
        "/api/v1/batches", data={"files": files}, content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    after = scrape(client)
    name = "tussis_jobs_submitted_total"
    assert value(after, name, kind="batch_item") - value(before, name, kind="batch_item") == 3
    uploads = "tussis_uploads_total"
    assert (
        value(after, uploads, kind="batch", status="202")
        - value(before, uploads, kind="batch", status="202")
        == 1
    )


def test_metrics_need_no_api_key_and_no_rate_limit_but_can_require_a_token(
    tmp_path: Path,
) -> None:
    keyed = embedded(tmp_path, api_keys={"s3cret": "alice"}, rate_limit="1/minute")
    client = create_app(keyed).test_client()
    for _ in range(3):  # past the rate limit of /api/v1
        assert client.get("/metrics").status_code == 200
    assert_error(client.get("/api/v1/jobs"), 401, "unauthorized")

    guarded = create_app(configure(keyed, metrics_token="scrape-token")).test_client()
    assert_error(guarded.get("/metrics"), 401, "unauthorized")
    wrong = guarded.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert_error(wrong, 401, "unauthorized")
    scrape(guarded, headers={"Authorization": "Bearer scrape-token"})
