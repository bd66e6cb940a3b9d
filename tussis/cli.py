"""``tussis``: submit recordings to a Tussis server; train and evaluate model bundles.

The client commands need only this package. The model commands call ``ml`` and
read ``shared.config``, which a bare ``pip install tussis`` does not have: they
are imported inside each command, so ``tussis --help`` and the client commands
work on the light install, and a model command there says what is missing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

if TYPE_CHECKING:
    from shared.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Settings:
    """The server's settings; the model commands need the server install."""
    try:
        import ml  # noqa: F401
        from shared.config import load_settings
    except ImportError as exc:
        raise click.ClickException(
            f"this command needs the Tussis server code and its model libraries ({exc}). "
            "Run it from a checkout after `make install`; the plain `pip install tussis` "
            "has the client commands only (submit, status, results)."
        ) from exc
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


def _model_errors(func: F) -> F:
    """A model command's expected failures (bad data, a bad bundle, a missing file)
    end with their message and exit code 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("ml."):  # BundleError, ModelUnavailable, ...
                raise click.ClickException(str(exc)) from exc
            raise

    return cast(F, wrapper)


def _common_model_options(func: F) -> F:
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
@click.option("--seed", default=0, show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True)
@click.option(
    "--features",
    default="embedding_mean",
    show_default=True,
    help="yamnet only: pooled features, '+'-joined from embedding_mean, embedding_max, "
    "embedding_std, scores_mean, scores_max, acoustic.",
)
@click.option(
    "--telephone-band",
    is_flag=True,
    help="Resample every recording to 8 kHz and back before the backbone.",
)
@click.option(
    "--level",
    type=click.Choice(["none", "rms"]),
    default="none",
    show_default=True,
    help="rms: scale every recording to one RMS level before the backbone.",
)
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds.")
@click.option("--repeats", default=2, show_default=True, help="Cross-validation repeats.")
@click.option(
    "--calibration",
    type=click.Choice(["platt", "none"]),
    default="platt",
    show_default=True,
    help="platt: calibrate the score on out-of-fold predictions (folded into the head).",
)
@click.option(
    "--inception-layer",
    type=click.Choice(["mixed10", "mixed8"]),
    default="mixed10",
    show_default=True,
    help="inception_v3 only: mixed10 is the whole network (2,048 features); mixed8 cuts it "
    "there (1,280 features; --inception-weights may name a cut network's .weights.h5, "
    "e.g. shared/models/inception_v3_imagenet_to_mixed8.weights.h5).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8-dynamic"]),
    default="fp32",
    show_default=True,
    help="inception_v3 only: fp32 (Keras) or int8-dynamic (TFLite, int8 weights, XNNPACK); "
    "the bundle ships the converted backbone and the head is fitted on its features.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_common_model_options
@_model_errors
def train(
    data_dir: Path,
    backbone: str,
    out: Path,
    name: str | None,
    version: str | None,
    seed: int,
    test_fraction: float,
    features: str,
    telephone_band: bool,
    level: str,
    folds: int,
    repeats: int,
    calibration: str,
    inception_layer: str,
    precision: str,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Train a model bundle and evaluate it on a held-out split (server install).

    The head's regularisation is chosen by repeated grouped cross-validation on the
    mean within-source AUC; the test split is only measured on (docs/models-and-training.md)."""
    settings = _settings()
    from ml.evaluation import format_report
    from ml.preprocess import Preprocessing
    from ml.training import TrainOptions, train_bundle

    options = TrainOptions(
        backbone=backbone,
        seed=seed,
        test_fraction=test_fraction,
        features=features,
        preprocessing=Preprocessing(telephone_band=telephone_band, level=level),
        folds=folds,
        repeats=repeats,
        calibration=calibration,
        inception_weights=inception_weights or settings.inception_weights,
        inception_layer=None if inception_layer == "mixed10" else inception_layer,
        precision=precision,
        yamnet_model=yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        cache_dir=cache_dir or settings.data_dir / "feature-cache",
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
    from ml.bundle import read_manifest

    cv = read_manifest(out).card["selection"]
    per_source = ", ".join(
        f"{source} {m['mean']:.3f} ± {m['sd']:.3f}" for source, m in cv["by_source"].items()
    )
    click.echo(
        f"cross-validated ({cv['folds']} folds, C={cv['C']:g}): mean within-source AUC "
        f"{cv['mean_within_source_auc']:.3f} ± {cv['sd_within_source_auc']:.3f} ({per_source})"
    )
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
@_model_errors
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
    """Evaluate a bundle on recordings it has not been trained on (server install)."""
    settings = _settings()
    from ml.evaluation import evaluate_bundle, format_report

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
@_model_errors
def make_negatives(out: Path, per_kind: int, seed: int) -> None:
    """Write synthetic non-cough clips as WAV files (server install)."""
    _settings()  # says so clearly on a client-only install
    from ml.negatives import write_negatives

    paths = write_negatives(out, seed, per_kind)
    click.echo(f"wrote {len(paths)} clips to {out}")


@main.command("gate-data")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option(
    "--mirror",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of OWNER+NAME/repo git directories to read instead of fetching.",
)
@_model_errors
def gate_data(out: Path, mirror: Path | None) -> None:
    """Gather the cough gate's real recordings from public git repositories (server install).

    Each source is pinned to a commit and listed with its licence in
    ml/gate_data.py; sources whose licence does not allow training are written
    under eval-* folders and only ever measured on."""
    _settings()
    from ml.gate_data import SOURCES, gather

    counts = gather(out, mirror)
    for source in SOURCES:
        click.echo(f"{source.repo}@{source.commit[:12] or 'HEAD'}: {source.licence}")
    for name, by_category in sorted(counts.items()):
        total = sum(by_category.values())
        click.echo(f"  {name}: {total} recordings in {len(by_category)} categories")


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
    help="Synthetic WAV files without coughs (see make-negatives).",
)
@click.option(
    "--labelled",
    "labelled_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Real recordings as SOURCE/CATEGORY/FILE ('cough' is positive); repeatable.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--version", "version", default=None)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--counting-validation",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Long recordings of the validation split (make-long-recordings): the counting "
    "threshold is chosen on them, all sets together; repeatable.",
)
@click.option(
    "--counting-test",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Long recordings of the test split, measured at the chosen counting threshold; "
    "repeatable.",
)
@click.option(
    "--previous",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A gate bundle this one replaces: measured beside it on the same test data.",
)
@click.option("--no-progress", is_flag=True)
@_common_model_options
@_model_errors
def train_cough_gate_command(
    coughs_dir: Path,
    negatives_dir: Path,
    labelled_dirs: tuple[Path, ...],
    out: Path,
    version: str | None,
    seed: int,
    counting_validation: tuple[Path, ...],
    counting_test: tuple[Path, ...],
    previous: Path | None,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Train the cough detector, choose its design, the gate's threshold and the
    counting threshold on validation data, and report on test data (server install)."""
    settings = _settings()
    from ml.cough_gate import train_cough_gate
    from ml.training import TrainOptions

    options = TrainOptions(
        seed=seed,
        yamnet_model=yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        cache_dir=cache_dir or settings.data_dir / "feature-cache",
        progress=not no_progress,
    )
    from ml.cough_gate import format_designs, format_rates

    report = train_cough_gate(
        coughs_dir,
        negatives_dir,
        out,
        options,
        version=version,
        labelled_dirs=labelled_dirs,
        counting_validation=counting_validation,
        counting_test=counting_test,
        previous=previous,
    )
    click.echo(format_designs(report["designs"], report["design"]))
    click.echo(f"bundle written to {out}: {report['design']}; threshold {report['threshold']:.4f}")
    click.echo(format_rates(report["test"]))
    if "counting" in report:
        from ml.counting import format_report

        counting = report["counting"]
        click.echo(f"counting threshold {counting['threshold']:g} ({counting['rule']})")
        for name, measured in counting["sets"].items():
            click.echo(f"{measured['part']} long recordings {name}:")
            click.echo(format_report(measured["at_threshold"]))


@main.command("make-long-recordings")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option(
    "--split",
    type=click.Choice(["validation", "test"]),
    required=True,
    help="Whose recordings to place: validation (to choose on) or test (to report).",
)
@click.option("--seed", default=0, show_default=True, help="Placement seed.")
@click.option("--count", default=8, show_default=True, help="Long recordings to make.")
@click.option("--minutes", default=30.0, show_default=True, help="Length of each.")
@click.option(
    "--coughs",
    "coughs_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The cough data set (e.g. ../shared/data/covid19-cough).",
)
@click.option(
    "--labelled",
    "labelled_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="What `tussis gate-data` gathered (Coswara's coughs, other sounds, backgrounds).",
)
@click.option(
    "--with-evaluation-only",
    is_flag=True,
    help="Also place the evaluation-only sources' sounds (test split only).",
)
@click.option(
    "--channel",
    type=click.Choice(["mixed", "phone", "wideband"]),
    default="mixed",
    show_default=True,
    help="mixed: coughs as recorded (phone-line coughs among wideband sounds); phone: the "
    "whole recording through an 8 kHz phone line; wideband: wideband coughs only.",
)
@_model_errors
def make_long_recordings_command(
    out: Path,
    split: str,
    seed: int,
    count: int,
    minutes: float,
    coughs_dir: Path,
    labelled_dir: Path,
    with_evaluation_only: bool,
    channel: str,
) -> None:
    """Build long recordings with coughs at known times and their annotations (server
    install): NAME.wav with NAME.csv (start_s,end_s of each cough)."""
    _settings()
    from ml.long_recordings import make_long_recordings

    record = make_long_recordings(
        out,
        coughs_dir,
        labelled_dir,
        split,
        seed=seed,
        count=count,
        minutes=minutes,
        with_evaluation_only=with_evaluation_only,
        channel=channel,
    )
    events = sum(r["cough_events"] for r in record["recordings"])
    others = sum(r["other_sounds"] for r in record["recordings"])
    click.echo(
        f"wrote {len(record['recordings'])} long recordings to {out}: {events} cough events, "
        f"{others} other sounds"
    )


@main.command("evaluate-counting")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Long recordings, each with an annotation NAME.csv (start_s,end_s) beside it.",
)
@click.option(
    "--gate",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The detector bundle (default: TUSSIS_COUGH_GATE_BUNDLE).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Window-score threshold (default: the bundle's counting threshold).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write report.json and count-agreement.png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True)
@_common_model_options
@_model_errors
def evaluate_counting_command(
    data_dir: Path,
    gate: Path | None,
    threshold: float | None,
    out: Path | None,
    as_json: bool,
    no_progress: bool,
    yamnet_model: Path | None,
    inception_weights: str | None,
    cache_dir: Path | None,
) -> None:
    """Count the coughs of annotated long recordings and measure the counts (server
    install): episode sensitivity, false positives per hour, precision, hourly rates."""
    settings = _settings()
    from ml.counting import evaluate_counting, format_report

    gate = gate or settings.cough_gate_bundle
    if gate is None:
        raise click.ClickException("no detector: pass --gate or set TUSSIS_COUGH_GATE_BUNDLE")
    report = evaluate_counting(
        data_dir,
        gate,
        yamnet_model or settings.yamnet_model,
        yamnet_url=settings.yamnet_url,
        threshold=threshold,
        out=out,
        cache_dir=cache_dir,
        progress=not no_progress,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"detector {report['detector']['name']} {report['detector']['version']}")
    click.echo(format_report(report))
    if out is not None:
        click.echo(f"written {out / 'report.json'} and {out / 'count-agreement.png'}")


# --- client commands: a running Tussis server's batch API over HTTP (tussis/client.py) ---

_DEFAULT_SERVER = "http://127.0.0.1:5000"

_SUBMIT_EPILOG = """\b
Exit codes:
  0    all files accepted (and, when waiting, the batch completed
       with every item succeeded)
  1    done, but some files were rejected or some items failed
  2    usage error, or a --labels file that is malformed or names
       a file not submitted (nothing is sent)
  3    cannot reach the server
  4    the server refused a request (its error code and message are shown)
  130  interrupted (Ctrl-C); the state file is kept, so running
       the same command again resumes without re-uploading anything"""

_STATUS_EPILOG = """\b
Exit codes:
  0    done
  2    usage error
  3    cannot reach the server
  4    the server refused the request (e.g. batch_not_found; its code and
       message are shown)
  130  interrupted (Ctrl-C)"""

_RESULTS_EPILOG = """\b
Exit codes:
  0    done
  2    usage error
  3    cannot reach the server
  4    the server refused the request (e.g. batch_not_found, or for --evaluation
       batch_not_finished; its code and message are shown)
  130  interrupted (Ctrl-C)"""


def _server_options(func: F) -> F:
    func = click.option(
        "--api-key",
        envvar="TUSSIS_API_KEY",
        default=None,
        help="API key, sent as a Bearer token (default: $TUSSIS_API_KEY).",
    )(func)
    func = click.option(
        "--server",
        envvar=["TUSSIS_URL", "TUSSIS_SERVER"],
        default=_DEFAULT_SERVER,
        show_default=True,
        help="The Tussis server's URL (or $TUSSIS_URL; $TUSSIS_SERVER, its older name).",
    )(func)
    return func


def _fail(exc: Exception) -> None:
    """Print a client error and exit with its code."""
    from tussis.errors import UsageProblem

    if isinstance(exc, UsageProblem):
        raise click.UsageError(exc.message)
    click.echo(f"tussis: {exc}", err=True)
    raise SystemExit(getattr(exc, "exit_code", 1))


@main.command(epilog=_SUBMIT_EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_server_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results CSV here (implies --wait).",
)
@click.option("--wait", is_flag=True, help="Wait until every item has been analysed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option(
    "--part-size",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Files per upload request.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Resume file (default: .tussis-submit-<hash of the paths and server>.json here).",
)
@click.option("--callback-url", default=None, help="URL the server POSTs to when done.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr (default: only when stderr is a terminal).",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV path,label[,group] labelling the files by their item paths; checked before "
    "anything is sent (then `tussis results BATCH --evaluation`).",
)
@click.option(
    "--model",
    default=None,
    help="Score every item with this model: NAME (its newest version) or NAME@VERSION, as "
    "`tussis models` lists them (default: the server's default model).",
)
def submit(
    paths: tuple[Path, ...],
    server: str,
    api_key: str | None,
    out: Path | None,
    wait: bool,
    as_json: bool,
    part_size: int,
    state_path: Path | None,
    callback_url: str | None,
    progress: bool | None,
    labels_path: Path | None,
    model: str | None,
) -> None:
    """Upload recordings as one batch: files, and folders (searched for audio files,
    keeping their paths relative to the folder).

    Files go up in parts of --part-size; an interrupted run leaves a state file, and
    running the same command again uploads only what the server does not have yet.
    Progress and messages go to stderr; the summary (or --json) to stdout.
    """
    from tussis.client import Client
    from tussis.errors import TussisError
    from tussis.submit import SubmitOptions, Submitter

    options = SubmitOptions(
        paths=list(paths),
        part_size=part_size,
        state_path=state_path,
        wait=wait or out is not None,
        out=out,
        callback_url=callback_url,
        progress=progress,
        labels=labels_path,
        model=model,
    )
    submitter = None
    try:
        submitter = Submitter(Client(server, api_key), options)
        report = submitter.run()
    except TussisError as exc:
        if submitter is not None and submitter.state is not None:
            click.echo(f"tussis: the state file {submitter.state.path} is kept", err=True)
        _fail(exc)
        return
    except KeyboardInterrupt:
        state = submitter.state if submitter is not None else None
        if state is not None and state.path.exists():
            click.echo(
                f"\ntussis: interrupted; batch {state.batch_id} is recorded in {state.path}: "
                "run the same command again to resume",
                err=True,
            )
        else:
            click.echo("\ntussis: interrupted before any batch was created", err=True)
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.summary())
    raise SystemExit(report.exit_code)


_COUNT_EPILOG = """\b
Exit codes:
  0    every recording uploaded (and, when waiting, counted)
  1    some recording failed (its code and message are shown)
  2    usage error
  3    cannot reach the server
  4    the server refused a request (its error code and message are shown)
  130  interrupted (Ctrl-C); running the same command again resumes
       each upload where it stopped"""


@main.command(epilog=_COUNT_EPILOG)
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@_server_options
@click.option("--wait", is_flag=True, help="Wait until every recording has been counted.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write <name>.events.csv and <name>.timeline.png here for each (implies --wait).",
)
@click.option("--label", default=None, help="A label for the recordings.")
@click.option(
    "--recorded-at",
    default=None,
    help="When the recording started (ISO 8601 with offset): hourly counts by clock hour.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bars (default: on a terminal)."
)
@click.option(
    "--chunk-mib",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="MiB per upload request: the most a dropped connection sends again.",
)
def count(
    paths: tuple[Path, ...],
    server: str,
    api_key: str | None,
    wait: bool,
    out: Path | None,
    label: str | None,
    recorded_at: str | None,
    progress: bool | None,
    chunk_mib: int,
) -> None:
    """Count the coughs in long recordings (hours): each file is uploaded resumably (a
    dropped connection or Ctrl-C, then the same command again, resumes where it
    stopped), cut into segments the workers share, and counted. Prints one line per
    recording; with --out, its events CSV and its timeline figure."""
    from tussis.client import Client
    from tussis.errors import TussisError
    from tussis.recordings import summary

    failed = False
    try:
        client = Client(server, api_key)
        submitted = [
            client.submit_recording(
                p,
                label=label,
                recorded_at=recorded_at,
                progress=progress,
                chunk_bytes=chunk_mib * 1024 * 1024,
            )
            for p in paths
        ]
        for path, recording in zip(paths, submitted, strict=True):
            if wait or out is not None:
                recording.wait()
            click.echo(summary(recording))
            failed = failed or recording.status == "failed"
            if out is not None and recording.status == "succeeded":
                out.mkdir(parents=True, exist_ok=True)
                recording.write_events_csv(out / f"{path.stem}.events.csv")
                (out / f"{path.stem}.timeline.png").write_bytes(recording.timeline_png())
    except TussisError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo("\ntussis: interrupted; run the same command again to resume", err=True)
        raise SystemExit(130) from None
    raise SystemExit(1 if failed else 0)


@main.command(epilog=_STATUS_EPILOG)
@click.argument("batch_id")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the batch as JSON on stdout.")
def status(batch_id: str, server: str, api_key: str | None, as_json: bool) -> None:
    """Show a batch's status, counts, progress and estimated time left."""
    from tussis.client import Client
    from tussis.describe import describe_batch
    from tussis.errors import TussisError

    try:
        batch, _ = Client(server, api_key).get_batch(batch_id)
    except TussisError as exc:
        _fail(exc)
        return
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(batch, indent=2, ensure_ascii=False))
    else:
        click.echo(describe_batch(batch))


@main.command(epilog=_STATUS_EPILOG)
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print GET /api/v1/models as JSON.")
def models(server: str, api_key: str | None, as_json: bool) -> None:
    """List the models the server's workers serve, as NAME@VERSION (how `tussis submit`
    and `tussis rescore` name a model), whether each is active (a live worker serves it)
    and which is the default."""
    from tussis.client import Client
    from tussis.errors import TussisError

    try:
        served = Client(server, api_key).models()
    except TussisError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps([m.__dict__ for m in served], indent=2, default=str))
        return
    for m in served:
        if m.role != "diagnosis":
            continue
        flags = ", ".join(
            f
            for f, on in (("default", m.default), ("active", m.active), ("retired", not m.active))
            if on
        )
        click.echo(f"{m.id}@{m.version}  {m.backbone or '?'}  ({flags})")


_RESCORE_EPILOG = """\b
Exit codes:
  0    done
  2    usage error
  3    cannot reach the server
  4    the server refused the request (model_not_served, batch_not_finished,
       audio_purged when retention removed the recordings; its code and message
       are shown)
  130  interrupted (Ctrl-C)"""


@main.command(epilog=_RESCORE_EPILOG)
@click.argument("batch_id")
@_server_options
@click.option(
    "--model",
    default=None,
    help="The model to score with: NAME or NAME@VERSION (default: the server's default).",
)
@click.option("--wait", is_flag=True, help="Wait until the new batch is completed.")
@click.option("--json", "as_json", is_flag=True, help="Print the new batch as JSON on stdout.")
def rescore(
    batch_id: str,
    server: str,
    api_key: str | None,
    model: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Score a finished batch's stored recordings again with another model, without
    uploading them: a new batch (printed), linked to BATCH_ID. Compare the two with
    `tussis results NEW_BATCH --evaluation`."""
    from tussis.client import Client
    from tussis.describe import describe_batch
    from tussis.errors import TussisError

    try:
        client = Client(server, api_key)
        batch = client.rescore(batch_id, model)
        if wait:
            batch = batch.wait(progress=None)
    except TussisError as exc:
        _fail(exc)
        return
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(batch.raw, indent=2, ensure_ascii=False))
    else:
        click.echo(f"batch {batch.id}: {batch_id} rescored with {batch.model or 'the default'}")
        click.echo(describe_batch(batch.raw))


@main.command(epilog=_RESULTS_EPILOG)
@click.argument("batch_id")
@_server_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the CSV here (default: stdout).",
)
@click.option(
    "--evaluation",
    is_flag=True,
    help="Instead of the CSV, print how the model did on the batch's labelled items "
    "(a finished batch submitted with labels).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="With --evaluation: print the evaluation JSON."
)
@click.option(
    "--figures",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --evaluation: also write roc.png and calibration.png into this folder "
    "(with --compare: roc.png with both models' curves).",
)
@click.option(
    "--compare",
    "compare",
    metavar="OTHER_BATCH",
    default=None,
    help="With --evaluation: compare this batch's model with OTHER_BATCH's on the "
    "recordings both hold with the same label (paired AUC difference, 95 % intervals).",
)
def results(
    batch_id: str,
    server: str,
    api_key: str | None,
    out: Path | None,
    evaluation: bool,
    as_json: bool,
    figures: Path | None,
    compare: str | None,
) -> None:
    """Download a batch's results CSV (one row per item), or with --evaluation show the
    model's evaluation on its labelled items."""
    from tussis.client import Client
    from tussis.errors import TussisError

    if not evaluation and (as_json or figures is not None or compare is not None):
        raise click.UsageError("--json, --figures and --compare go with --evaluation")
    if evaluation and out is not None:
        raise click.UsageError("--out writes the CSV; with --evaluation use --json or --figures")
    if evaluation:
        _print_evaluation(server, api_key, batch_id, as_json, figures, compare)
        return
    try:
        client = Client(server, api_key)
        batch, _ = client.get_batch(batch_id)
        if batch.get("status") != "completed":
            click.echo(
                f"tussis: batch {batch_id} is {batch.get('status')}; "
                "the CSV shows each item's current status",
                err=True,
            )
        if out is None:
            stdout = sys.stdout.buffer
            client.download_results(batch_id, stdout)
            stdout.flush()
        else:
            client.write_results(batch_id, out)
            click.echo(f"results written to {out}", err=True)
    except TussisError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _print_evaluation(
    server: str,
    api_key: str | None,
    batch_id: str,
    as_json: bool,
    figures: Path | None,
    compare: str | None = None,
) -> None:
    """``tussis results --evaluation [--compare OTHER]``: the batch's evaluation (or the
    comparison of the two batches' models) as a table or JSON."""
    from tussis.client import Client
    from tussis.connection import EVALUATION_FIGURES
    from tussis.describe import describe_comparison, describe_evaluation
    from tussis.errors import RequestRefused, TussisError

    try:
        client = Client(server, api_key)
        evaluation = client.get_evaluation(batch_id, compare=compare)
        written = []
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            names = EVALUATION_FIGURES if compare is None else ("roc.png",)
            for name in names:
                try:
                    image = client.get_evaluation_figure(batch_id, name, compare=compare)
                except RequestRefused as exc:
                    if exc.status != 409:
                        raise
                    # e.g. auc_undefined: one label only has no ROC curve; the rest stands.
                    written.append(f"{name} not written: {exc.api_message} ({exc.code})")
                    continue
                (figures / name).write_bytes(image)
                written.append(f"written {figures / name}")
    except TussisError as exc:
        _fail(exc)
        return
    except OSError as exc:
        _fail(TussisError(f"cannot write the figures into {figures}: {exc.strerror or exc}"))
        return
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(evaluation, indent=2, ensure_ascii=False))
    elif compare is not None:
        click.echo(describe_comparison(evaluation, batch_id, compare))
    else:
        click.echo(describe_evaluation(evaluation, batch_id))
    for line in written:
        click.echo(f"tussis: {line}", err=True)


# --- API keys (server install: they live in the server's database) ------------------


def _database_url() -> str:
    try:
        from shared.config import load_settings
    except ImportError as exc:
        raise click.ClickException(
            f"`tussis keys` manages the keys in the server's database and needs the server "
            f"install ({exc}). Run it where the API runs: in a checkout after `make install`, or "
            "in the container (`docker compose run --rm api tussis keys ...`)."
        ) from exc
    return load_settings().database_url


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (server install; uses DATABASE_URL)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--owner",
    default=None,
    help="The tenant whose jobs and batches the key reaches (default: NAME). Keys with the "
    "same owner share their data.",
)
def keys_create(name: str, owner: str | None) -> None:
    """Create a key and print it once: only its hash is stored."""
    database_url = _database_url()
    from shared import api_keys
    from shared.db import session_scope

    try:
        with session_scope(database_url) as session:
            new = api_keys.create(session, name, owner or name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"created key {new.id} '{new.name}' for owner '{new.owner}'", err=True)
    click.echo("store it now: it is not kept and cannot be shown again", err=True)
    click.echo(new.key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def keys_list(as_json: bool) -> None:
    """List keys (never the keys themselves: id, name, owner, prefix, dates, revoked)."""
    database_url = _database_url()
    from shared import api_keys
    from shared.db import session_scope

    def when(value: datetime | None) -> str | None:
        return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else None

    with session_scope(database_url) as session:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "owner": k.owner,
                "prefix": k.prefix + "...",
                "created_at": when(k.created_at),
                "last_used_at": when(k.last_used_at),
                "revoked": k.revoked,
            }
            for k in api_keys.list_keys(session)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no API keys (the API runs open, on loopback only)", err=True)
        return
    header = ("ID", "NAME", "OWNER", "PREFIX", "CREATED", "LAST USED", "REVOKED")
    lines = [header] + [
        tuple(
            str(r[k] if r[k] is not None else "-")
            for k in ("id", "name", "owner", "prefix", "created_at", "last_used_at", "revoked")
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id: requests with it are refused from now on."""
    database_url = _database_url()
    from shared import api_keys
    from shared.db import session_scope

    with session_scope(database_url) as session:
        revoked = api_keys.revoke(session, key_id)
    if not revoked:
        raise click.ClickException(f"no active key with id {key_id} (see `tussis keys list`)")
    click.echo(f"revoked key {key_id}")


if __name__ == "__main__":
    main()
