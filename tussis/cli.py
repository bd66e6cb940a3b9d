"""``tussis``: train and evaluate model bundles."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from shared.config import load_settings


def _settings():
    return load_settings()


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Tussis: cough-recording analysis (research tool, not a diagnostic device)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _common_model_options(func):
    func = click.option(
        "--yamnet-model",
        type=click.Path(path_type=Path),
        default=None,
        help="YAMNet .tflite file (default: TUSSIS_YAMNET_MODEL).",
    )(func)
    func = click.option(
        "--inception-weights",
        default=None,
        help="'imagenet' (Keras download) or a local .h5 (default: TUSSIS_INCEPTION_WEIGHTS).",
    )(func)
    func = click.option(
        "--cache",
        "cache_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Feature cache folder (default: TUSSIS_DATA_DIR/feature-cache).",
    )(func)
    return func


@main.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Folders per label (sick/, not sick/) or a folder with metadata.json.",
)
@click.option(
    "--backbone", type=click.Choice(["yamnet", "inception_v3"]), default="yamnet", show_default=True
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Bundle folder to write, e.g. models/NAME.",
)
@click.option("--name", default=None, help="Model name (default: the --out folder's name).")
@click.option("--version", "version", default=None, help="Model version (default: today's date).")
@click.option(
    "--logdir", type=click.Path(path_type=Path), default=None, help="Write TensorBoard logs here."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True)
@click.option("--validation-fraction", default=0.2, show_default=True)
@click.option("--max-epochs", default=300, show_default=True)
@click.option("--patience", default=30, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_common_model_options
def train(
    data_dir: Path,
    backbone: str,
    out: Path,
    name: str | None,
    version: str | None,
    logdir: Path | None,
    seed: int,
    test_fraction: float,
    validation_fraction: float,
    max_epochs: int,
    patience: int,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Train a model bundle and evaluate it on a held-out split."""
    from tussis.evaluation import format_report
    from tussis.training import TrainOptions, train_bundle

    settings = _settings()
    options = TrainOptions(
        backbone=backbone,
        seed=seed,
        test_fraction=test_fraction,
        validation_fraction=validation_fraction,
        max_epochs=max_epochs,
        patience=patience,
        inception_weights=inception_weights or settings.inception_weights,
        yamnet_model=yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        cache_dir=cache_dir or settings.data_dir / "feature-cache",
        logdir=logdir,
        progress=not no_progress,
    )
    report = train_bundle(
        data_dir,
        out,
        name=name or out.name,
        version=version or datetime.now(UTC).strftime("%Y.%m.%d"),
        options=options,
    )
    click.echo(f"bundle written to {out}")
    click.echo(f"held-out evaluation ({report['evaluated_on']}):")
    click.echo(format_report(report))


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write report.json, roc.png, confusion.png "
    "(default: TUSSIS_DATA_DIR/evaluations/NAME-VERSION).",
)
@click.option(
    "--include-training-files",
    is_flag=True,
    help="Also score files the bundle was trained or tuned on (optimistic!).",
)
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True)
@_common_model_options
def evaluate(
    model_dir: Path,
    data_dir: Path,
    out: Path | None,
    include_training_files: bool,
    seed: int,
    as_json: bool,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Evaluate a bundle on recordings it has not been trained on."""
    from tussis.evaluating import evaluate_bundle
    from tussis.evaluation import format_report

    settings = _settings()
    report = evaluate_bundle(
        model_dir,
        data_dir,
        out=out,
        include_training_files=include_training_files,
        seed=seed,
        yamnet_model=yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        inception_weights=inception_weights or settings.inception_weights,
        cache_dir=cache_dir or settings.data_dir / "feature-cache",
        default_out_root=settings.data_dir / "evaluations",
        progress=not no_progress,
    )
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        click.echo()
        return
    click.echo(f"{report['evaluated_on']}; outputs in {report['outputs']}")
    click.echo(format_report(report))


@main.command("make-negatives")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--per-kind", default=60, show_default=True, help="Clips of each kind.")
@click.option("--seed", default=0, show_default=True)
def make_negatives(out: Path, per_kind: int, seed: int) -> None:
    """Write non-cough clips (speech, music, noise, hum, tones, room tone) as WAV files."""
    from tussis.negatives import write_negatives

    paths = write_negatives(out, seed, per_kind)
    click.echo(f"wrote {len(paths)} clips to {out}")


@main.command("train-cough-gate")
@click.option(
    "--coughs",
    "coughs_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Recordings that all contain coughs (folders or metadata.json).",
)
@click.option(
    "--negatives",
    "negatives_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="WAV files without coughs (see make-negatives).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--version", "version", default=None)
@click.option("--seed", default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
@_common_model_options
def train_cough_gate_command(
    coughs_dir: Path,
    negatives_dir: Path,
    out: Path,
    version: str | None,
    seed: int,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Train the cough gate (YAMNet features) and calibrate its threshold."""
    from tussis.cough_gate import train_cough_gate
    from tussis.training import TrainOptions

    settings = _settings()
    options = TrainOptions(
        seed=seed,
        yamnet_model=yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        cache_dir=cache_dir or settings.data_dir / "feature-cache",
        progress=not no_progress,
    )
    report = train_cough_gate(coughs_dir, negatives_dir, out, options, version=version)
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
