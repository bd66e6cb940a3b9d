"""The API process never imports TensorFlow (nor librosa): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def heavy_modules_after(probe: str, data_dir: Path) -> str:
    """Run the probe in a fresh interpreter; the heavy modules it ended up importing."""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        env={"TUSSIS_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_api_process_does_not_import_tensorflow(tmp_path: Path) -> None:
    heavy = heavy_modules_after(PROBE, tmp_path)
    assert heavy == "", f"the API imported: {heavy}"


def test_the_probe_would_see_tensorflow(tmp_path: Path) -> None:
    """Guard against a probe that cannot fail: an explicit TensorFlow import is seen."""
    probe = PROBE.replace(
        "from api import create_app", "from api import create_app; import tensorflow"
    )
    assert "tensorflow" in heavy_modules_after(probe, tmp_path)
