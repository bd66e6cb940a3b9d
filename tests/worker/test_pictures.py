"""Pictures stay off the analysis path: a YAMNet child loads the spectrogram renderer
(librosa, scipy, numba's code: seconds, and about 200 MiB) only when a picture is asked
for, in a thread beside its jobs, and a picture task asked for before then comes back a
second later instead of holding the child (the first picture once held the pool 12 s)."""

from __future__ import annotations

import json
from pathlib import Path

from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, require
from tests.worker.test_startup import python

CODE = """
import json, sys, time
from shared.config import load_settings
from worker.runtime import Runtime

rt = Runtime(load_settings())
rt.load_models()
before = "librosa" in sys.modules
first = rt.renderer_ready()
deadline = time.monotonic() + 120
while not rt.renderer_ready():
    assert time.monotonic() < deadline, "the renderer never loaded"
    time.sleep(0.05)
print(json.dumps({"before": before, "first": first, "after": "librosa" in sys.modules}))
"""


def test_a_yamnet_child_loads_the_renderer_only_when_asked_and_beside_its_work(
    tmp_path: Path,
) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    # The YAMNet default alone: an Inception bundle beside it (models/inception) loads the
    # renderer with it, as it must (its model sees the spectrogram).
    done = python(
        CODE,
        tmp_path,
        TUSSIS_YAMNET_MODEL=str(YAMNET_MODEL),
        TUSSIS_MODEL_BUNDLES=str(PROJECT_ROOT / "models" / "default"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Models loaded, no renderer; the first ask answers at once (loading has begun in
    # a thread), and the renderer is there once it says so.
    assert seen == {"before": False, "first": False, "after": True}
