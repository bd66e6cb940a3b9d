"""The container files agree with the code: docker-compose.yml, boot.sh and
scripts/run-local.sh start the same processes, and compose sets only variables
that shared/config.py reads. Fast: nothing here needs Docker."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
BOOT = ROOT / "boot.sh"
RUN_LOCAL = ROOT / "scripts" / "run-local.sh"
CONFIG = ROOT / "shared" / "config.py"

APP_SERVICES = ("api", "worker", "beat", "migrate")
API_TARGET = "api:create_app()"
WORKER_COMMAND = "celery -A worker.celery_app worker"
# The variables the service itself reads, as opposed to postgres's POSTGRES_*.
OURS = re.compile(r"^(TUSSIS_[A-Z0-9_]+|DATABASE_URL|REDIS_URL)$")
INTERPOLATION = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_names(environment: dict[str, Any] | list[str] | None) -> set[str]:
    if environment is None:
        return set()
    if isinstance(environment, dict):
        return set(environment)
    return {item.split("=", 1)[0] for item in environment}


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def case_arms(script: str) -> dict[str, str]:
    """The arms of a shell ``case``: ``{"api": "exec gunicorn ...", ...}``."""
    arms = re.findall(r"^\s*([\w*|]+)\)\s*$(.*?)^\s*;;", script, flags=re.M | re.S)
    return {label: body for label, body in arms}


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    expected = {"api", "worker", "beat", "migrate", "redis", "postgres"}
    assert expected <= set(compose["services"])


def test_app_services_share_the_x_app_anchor(compose: dict[str, Any]) -> None:
    anchor = compose["x-app"]
    assert anchor["build"] == "."
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["build"] == anchor["build"], name
        assert service["environment"] == anchor["environment"], name
        # `<<: *app` yields the anchor's very object; a pasted copy would not.
        assert service["environment"] is anchor["environment"], name


def test_compose_sets_only_variables_that_config_reads(compose: dict[str, Any]) -> None:
    names: set[str] = set()
    for service in compose["services"].values():
        names |= env_names(service.get("environment"))
    for text in strings_in(compose):
        names |= set(INTERPOLATION.findall(text))
    ours = {name for name in names if OURS.match(name)}
    assert {"DATABASE_URL", "REDIS_URL", "TUSSIS_DATA_DIR", "TUSSIS_MODEL_BUNDLE"} <= ours

    config_source = CONFIG.read_text()
    unread = sorted(name for name in ours if f'"{name}"' not in config_source)
    assert not unread, f"set in docker-compose.yml but not read by shared/config.py: {unread}"


def test_compose_commands_are_boot_sh_roles(compose: dict[str, Any]) -> None:
    arms = case_arms(BOOT.read_text())
    for name in APP_SERVICES:
        command = compose["services"][name]["command"]
        assert command == ["./boot.sh", name]
        assert name in arms, f"boot.sh has no {name!r} role"


def test_boot_sh_starts_the_api_and_worker() -> None:
    arms = case_arms(BOOT.read_text())
    assert "exec gunicorn" in arms["api"]
    assert API_TARGET in arms["api"]
    assert "exec celery" in arms["worker"]
    assert WORKER_COMMAND in arms["worker"]


def test_boot_sh_is_executable_and_rejects_unknown_roles() -> None:
    assert BOOT.stat().st_mode & 0o111, "boot.sh must be executable"
    result = subprocess.run(
        ["bash", str(BOOT), "frobnicate"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_run_local_starts_the_same_processes() -> None:
    script = RUN_LOCAL.read_text()
    assert API_TARGET in script
    assert WORKER_COMMAND in script


# --- monitoring ---------------------------------------------------------------------

DEPLOY = ROOT / "deploy"
METRIC_SOURCES = (ROOT / "api" / "metrics.py", ROOT / "worker" / "metrics.py")
METRIC_NAME = re.compile(r'(?:Counter|Gauge|Histogram)\(\s*"(tussis_[a-z_]+)"')
PROMQL_NAME = re.compile(r"\b(tussis_[a-z_]+)")
# What prometheus_client adds to a declared name in its samples.
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def declared_metrics() -> set[str]:
    names: set[str] = set()
    for path in METRIC_SOURCES:
        names |= set(METRIC_NAME.findall(path.read_text()))
    return names


def test_the_worker_has_a_health_check_that_pings_it(compose: dict[str, Any]) -> None:
    test = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "celery -A worker.celery_app inspect ping" in test
    assert "celery@$$HOSTNAME" in test  # compose's escape for the container's own $HOSTNAME


def test_prometheus_runs_in_the_monitoring_profile_with_the_deploy_config(
    compose: dict[str, Any],
) -> None:
    service = compose["services"]["prometheus"]
    assert service["profiles"] == ["monitoring"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert (ROOT / "deploy" / "prometheus.yml").is_file()
    # The stack itself runs without the profile.
    for name in ("api", "worker", "beat", "migrate", "postgres", "redis"):
        assert "profiles" not in compose["services"][name], name


def test_prometheus_scrapes_the_api_and_each_worker_on_the_configured_port(
    compose: dict[str, Any],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["tussis-api"]
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:5000"]
    assert "ports" not in compose["services"]["api"]  # only the proxy is published
    worker = jobs["tussis-worker"]["dns_sd_configs"][0]
    assert worker["names"] == ["worker"]
    assert str(worker["port"]) == compose["x-app"]["environment"]["TUSSIS_WORKER_METRICS_PORT"]


def test_the_dashboard_queries_only_metrics_the_code_declares() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    declared = declared_metrics()
    assert {"tussis_http_requests_total", "tussis_jobs_processed_total"} <= declared
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(PROMQL_NAME.findall(target["expr"]))
    assert used, "the dashboard queries nothing"

    def base(name: str) -> str:
        if name in declared:
            return name
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in declared:
                return name.removesuffix(suffix)
        return name

    unknown = sorted(name for name in used if base(name) not in declared)
    assert not unknown, f"the dashboard queries metrics no code declares: {unknown}"
    # Every declared metric has a panel.
    unshown = sorted(declared - {base(name) for name in used})
    assert not unshown, f"metrics without a panel: {unshown}"


# --- the proxy in front of the API ------------------------------------------------------

NGINX_CONF = DEPLOY / "nginx.conf"


def nginx_directives(block: str) -> dict[str, list[str]]:
    """``name -> [values]`` of the simple directives in one ``location`` block of
    deploy/nginx.conf (``server`` for the server block's own)."""
    text = re.sub(r"#.*", "", NGINX_CONF.read_text())
    if block == "server":
        body = text.split("server {", 1)[1]
        body = re.sub(r"location[^{]*\{[^}]*\}", "", body)
    else:
        body = re.search(r"location\s+" + re.escape(block) + r"\s*\{([^}]*)\}", text).group(1)  # type: ignore[union-attr]
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", body, re.M):
        found.setdefault(name, []).append(value.strip())
    return found


def test_only_the_proxy_is_published_and_it_runs_the_deploy_config(
    compose: dict[str, Any],
) -> None:
    proxy = compose["services"]["proxy"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in proxy["volumes"]}
    assert mounts["./deploy/nginx.conf"] == "/etc/nginx/tussis.conf"
    dockerfile = (DEPLOY / proxy["build"]["dockerfile"]).read_text()
    assert "nginx-light" in dockerfile and "/etc/nginx/tussis.conf" in dockerfile
    assert proxy["ports"] == ["5000:8080"]
    published = [name for name, s in compose["services"].items() if s.get("ports")]
    assert sorted(published) == ["prometheus", "proxy"]
    assert "server api:5000;" in NGINX_CONF.read_text()
    assert "listen 8080;" in NGINX_CONF.read_text()


def test_the_proxy_outwaits_long_polls_and_batch_intake_and_streams_large_uploads() -> None:
    def seconds(value: str) -> int:
        return int(value.removesuffix("s"))

    server = nginx_directives("server")
    # Prefer: wait=N holds a poll up to 60 s (docs/api.md).
    assert seconds(server["proxy_read_timeout"][0]) > 60
    for location in ("/api/v1/batches", "/api/v1/recordings"):
        upload = nginx_directives(location)
        assert upload["proxy_request_buffering"] == ["off"], location
        assert upload["client_max_body_size"] == ["2g"], location
        # The API answers a batch once every file is checked: gunicorn's --timeout.
        assert seconds(upload["proxy_read_timeout"][0]) > 300, location
    assert server["proxy_http_version"] == ["1.1"]  # chunked bodies stream, not spool
