"""The worker package imports without side effects: only ``worker.celery_app``
reads the settings and builds the Celery app, so ``tussis train`` (which imports
``ml``) and the tests can import the rest under any environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.config import PROJECT_ROOT
from shared.queue import (
    TASK_ANALYSE,
    TASK_ANALYSE_CHUNK,
    TASK_BATCH_CALLBACK,
    TASK_EVALUATE,
    TASK_RETENTION,
    TASK_SPECTROGRAM,
    TASK_SWEEP,
)

# A worker-only rule is broken: the task limit exceeds the broker's visibility timeout.
BROKEN_FOR_WORKERS = {"TUSSIS_TASK_TIME_LIMIT": "99999"}


def python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("TUSSIS_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    clean.update(TUSSIS_DATA_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_the_worker_and_ml_reads_no_settings_and_builds_no_app(tmp_path: Path) -> None:
    run = python(
        "import sys, celery._state as state\n"
        "import worker, worker.tasks, worker.pipeline, worker.runtime, worker.lifecycle\n"
        "import worker.callbacks, ml.model, ml.training, ml.evaluation, ml.cough_gate\n"
        "assert 'worker.celery_app' not in sys.modules\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow loads only with a model'\n"
        "print('apps', len(list(state._get_active_apps())))\n",
        tmp_path,
        **BROKEN_FOR_WORKERS,
    )
    assert run.returncode == 0, run.stderr
    assert "apps 0" in run.stdout


def test_the_entry_module_is_where_the_settings_are_checked(tmp_path: Path) -> None:
    # The control for the test above: the same environment does stop a worker.
    run = python("import worker.celery_app", tmp_path, **BROKEN_FOR_WORKERS)
    assert run.returncode != 0
    assert "TUSSIS_TASK_TIME_LIMIT must be lower than TUSSIS_VISIBILITY_TIMEOUT" in run.stderr


def test_the_entry_module_registers_every_task(tmp_path: Path) -> None:
    run = python(
        "from worker.celery_app import celery\n"
        "celery.finalize()\n"
        "print(sorted(name for name in celery.tasks if name.startswith('tussis.')))\n",
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    names = [
        TASK_ANALYSE,
        TASK_ANALYSE_CHUNK,
        TASK_BATCH_CALLBACK,
        TASK_EVALUATE,
        TASK_RETENTION,
        TASK_SPECTROGRAM,
        TASK_SWEEP,
    ]
    assert run.stdout.strip() == str(sorted(names))


def test_a_model_command_runs_under_a_worker_only_misconfiguration(tmp_path: Path) -> None:
    tussis = Path(sys.executable).with_name("tussis")
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("TUSSIS_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    env.update(TUSSIS_DATA_DIR=str(tmp_path), **BROKEN_FOR_WORKERS)
    empty = tmp_path / "no-recordings"
    empty.mkdir()
    run = subprocess.run(
        [str(tussis), "train", "--data", str(empty), "--out", str(tmp_path / "bundle")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # It gets as far as reading the (empty) data: the worker's rule is not its business.
    assert "TUSSIS_TASK_TIME_LIMIT" not in run.stderr, run.stderr
    assert "recording" in (run.stderr + run.stdout).lower(), run.stderr
