"""The API keeps the contract its OpenAPI document states, checked by Schemathesis
against a live gunicorn and worker on the embedded defaults (SQLite, SQLite broker).

Every operation of /api/v1/openapi.json gets generated requests (valid and invalid),
sent with a key; each answer must not be a 5xx, must have a documented status and
content type, and must match its documented body. Seeded (``derandomize``), so a
run is reproducible, and bounded to a few minutes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, base_settings, migrate, require
from tests.stack import Stack, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "fuzz-contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# A tus PATCH's body is raw bytes: sent as an octet stream is.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")

# Per operation and mode (valid, then invalid requests): about 3 minutes in all.
EXAMPLES = 50


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    tmp: Path = tmp_path_factory.mktemp("contract")
    s = base_settings(tmp, model_bundle=PROJECT_ROOT / "models" / "default")
    migrate(s.database_url)
    stack = Stack(
        s,
        tmp,
        TUSSIS_API_KEYS=f"fuzz:{TOKEN}",
        # Generous: the fuzzer sends hundreds of requests; limits have their own tests.
        TUSSIS_RATE_LIMIT="10000/second",
        TUSSIS_UPLOAD_BYTES_PER_MINUTE=str(10 * 1024**3),
    )
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)


def fuzz(
    operation: APIOperation,
    mode: GenerationMode,
    base_url: str,
    tally: Tally,
    examples: int = EXAMPLES,
    ids: dict[str, str] | None = None,
) -> None:
    """Up to ``examples`` requests of one operation (with ``ids`` as its path
    parameters, if given); the first broken check is a finding (Hypothesis shrinks it
    to a small request first)."""
    path_ids = {p.name: ids[p.name] for p in operation.path_parameters} if ids else None

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_ids))
    @settings(
        max_examples=examples,
        derandomize=True,  # the same requests on every run
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=60)
        tally.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # No invalid request exists for an operation without parameters or body.
        assert mode is GenerationMode.NEGATIVE, operation.label
    except (Exception, BaseExceptionGroup) as exc:  # a finding; the report says which check
        tally.findings.append(f"{operation.label} ({mode.value}): {exc}")


def real_resources(stack: Stack, cough_file: Path) -> dict[str, str]:
    """A finished job and a batch with a finished item, so that answers with real
    results (not only 404s) are checked against the document too."""
    audio = cough_file.read_bytes()
    job = requests.post(
        f"{stack.url}/api/v1/jobs", files={"audio": ("c.mp3", audio)}, headers=AUTH, timeout=60
    ).json()
    batch = requests.post(
        f"{stack.url}/api/v1/batches",
        files={"files": ("site/c.mp3", audio)},
        data={"open": "true"},
        headers=AUTH,
        timeout=60,
    ).json()
    # A long recording (real audio, counted by the worker) and an unfinished upload.
    recording = requests.post(
        f"{stack.url}/api/v1/recordings",
        files={"audio": ("night.mp3", audio)},
        data={"recorded_at": "2026-12-05T22:00:00Z"},
        headers=AUTH,
        timeout=60,
    ).json()
    upload = requests.post(
        f"{stack.url}/api/v1/uploads",
        headers={**AUTH, "Tus-Resumable": "1.0.0", "Upload-Length": "1000"},
        timeout=10,
    )
    wait_until(
        lambda: (
            requests.get(
                f"{stack.url}{recording['links']['self']}", headers=AUTH, timeout=10
            ).json()["status"]
            in ("succeeded", "failed")
        ),
        120,
        "the recording to be counted",
    )
    item = requests.get(f"{stack.url}{batch['links']['items']}", headers=AUTH, timeout=10)
    for job_id in (job["id"], item.json()["items"][0]["id"]):
        wait_until(
            lambda job_id=job_id: (
                requests.get(f"{stack.url}/api/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()[
                    "status"
                ]
                in ("succeeded", "failed")
            ),
            120,
            f"job {job_id} to finish",
        )
    return {
        "job_id": job["id"],
        "batch_id": batch["id"],
        "recording_id": recording["id"],
        "upload_id": upload.headers["Location"].rsplit("/", 1)[-1],
    }


def test_every_operation_keeps_its_contract(stack: Stack, cough_file: Path) -> None:
    # Schemathesis's own pytest loader (from_fixture) does not run on this pytest,
    # so the operations are walked here, each with Hypothesis.
    schema = schemathesis.openapi.from_url(f"{stack.url}/api/v1/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 26
    tally = Tally()
    started = time.monotonic()
    ids = real_resources(stack, cough_file)
    # First on the real job and batch (deleting them last), then on anything.
    with_ids = sorted(
        (op for op in operations if op.path_parameters), key=lambda op: op.method == "delete"
    )
    for operation in with_ids:
        fuzz(operation, GenerationMode.POSITIVE, stack.url, tally, examples=10, ids=ids)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, stack.url, tally)
    print(
        f"schemathesis: {len(operations)} operations, {tally.statuses.total()} requests "
        f"(by status: {dict(sorted(tally.statuses.items()))}), {len(tally.findings)} findings, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert not tally.findings, "\n\n".join(tally.findings)
