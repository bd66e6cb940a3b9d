"""The API process never imports TensorFlow (nor librosa): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from shared.config import PROJECT_ROOT

PROBE = """
import sys
from api import create_app
app = create_app()
client = app.test_client()
client.get("/healthz")
client.post("/api/v1/jobs", data={})
HEAVY = {"tensorflow", "keras", "librosa", "numba"}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(",".join(heavy))
"""


def test_api_process_does_not_import_tensorflow(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=PROJECT_ROOT,
        env={"TUSSIS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "", f"the API imported: {out.stdout.strip()}"


def test_the_probe_would_see_tensorflow(tmp_path) -> None:
    """Guard against a probe that cannot fail: importing the worker's model code is seen."""
    probe = PROBE.replace(
        "from api import create_app", "from api import create_app; import tensorflow"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        env={"TUSSIS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "tensorflow" in out.stdout
