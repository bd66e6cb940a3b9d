"""The shipped cough detector on recordings it was not trained on: the held-out
coughs of ../shared under every recording condition, fresh synthetic non-coughs,
and one cough between long silences. (Its rates on the real recordings that
`tussis gate-data` gathers and on the long recordings `tussis make-long-recordings`
builds, which CI does not have, are in its card and pinned below:
docs/model-card.md.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ml import conditions
from ml.negatives import KINDS, generate
from shared.audio import AudioError, check_usable, decode
from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, require

GATE = PROJECT_ROOT / "models" / "cough-gate"
MAX_REFUSED = 0.05


@pytest.fixture(scope="module")
def gate():
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.model import load_model

    return load_model(GATE, yamnet_model=YAMNET_MODEL)


@pytest.fixture(scope="module")
def held_out(cough_files: list[Path], cough_metadata: list[dict]) -> list[tuple[str, np.ndarray]]:
    """(source, samples) of every usable recording in the gate's test split."""
    test = set(json.loads((GATE / "split.json").read_text())["test"])
    source = {m["filename"]: m["source"] for m in cough_metadata}
    out = []
    for path in cough_files:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() not in test:
            continue
        try:
            audio = decode(data, 16000)
            check_usable(audio, 0.3, 120.0, -60.0)
        except AudioError:
            continue  # refused at the door, never reaches the gate
        out.append((source[path.name], audio.samples))
    return out


# Where the shipped detector, run here through ml.model on the held-out covid19-cough
# recordings (conditions drawn with other seeds than the card's), refuses more than
# 5 %: the card's own misses in these two conditions (docs/model-card.md#cough-gate).
KNOWN_HELD_OUT_MISSES = {("call-center", "noise_10db"), ("telegram", "single_event")}


@pytest.mark.parametrize("condition", list(conditions.CONDITIONS))
def test_the_gate_keeps_held_out_coughs_in_every_condition(
    gate, held_out: list[tuple[str, np.ndarray]], condition: str
) -> None:
    refused: dict[str, list[bool]] = defaultdict(list)
    for i, (source, samples) in enumerate(held_out):
        verdict = gate.predict([conditions.apply(condition, samples, seed=i)])[0]
        refused[source].append(verdict.diagnosis != "cough")
    assert {s: len(v) for s, v in refused.items()} == {
        s: len(v) for s, v in refused.items() if len(v) >= 90
    }, "each source has a real held-out sample"
    rates = {s: round(float(np.mean(v)), 4) for s, v in refused.items()}
    for source, rate in rates.items():
        if (source, condition) in KNOWN_HELD_OUT_MISSES:
            assert MAX_REFUSED < rate <= 0.10, f"{source} {condition}: {rate}: update the card"
        else:
            assert rate <= MAX_REFUSED, rates


# Fresh synthetic kinds the gate passes more than 1 time in 20 (none today).
KNOWN_SYNTHETIC_MISSES: set[str] = set()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_gate_refuses_sounds_that_are_not_coughs(gate, kind: str) -> None:
    if kind.startswith("speech"):
        require(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")
    # A seed the gate's training negatives (seed 1) never used; at most 5 % pass.
    accepted = []
    for name, samples in generate(seed=20261123, per_kind=20, kinds=[kind]):
        verdict = gate.predict([samples])[0]
        if verdict.diagnosis == "cough":
            accepted.append(f"{name}: {verdict.score:.3f}")
        else:
            assert verdict.segments == ()
    if kind in KNOWN_SYNTHETIC_MISSES:  # measured, and on the card page's limits
        assert len(accepted) > 1, f"{kind} is no longer a miss: update the card page"
    else:
        assert len(accepted) <= 1, accepted


def test_one_cough_between_long_silences_is_found_where_it_is(
    gate, held_out: list[tuple[str, np.ndarray]]
) -> None:
    cough = next(s for _, s in held_out if gate.predict([s])[0].score > 0.95)
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(6 * 16000) * conditions.ROOM_NOISE_RMS).astype(np.float32)
    verdict = gate.predict([np.concatenate([silence, cough, silence])])[0]
    assert verdict.diagnosis == "cough"
    end = 6.0 + len(cough) / 16000
    assert verdict.segments
    for start, stop in verdict.segments:
        assert start > 5.0 and stop < end + 1.0, verdict.segments


# Where the shipped detector misses the ≤ 5 % targets on its card (held-out, never
# trained on); docs/model-card.md#cough-gate shows the same in bold. A miss that
# appears, or one that is fixed, fails the test until this list and the card agree.
KNOWN_COUGH_MISSES = {
    ("coswara", "single_event"),
    ("covid19-cough:call-center", "noise_10db"),
    ("covid19-cough:telegram", "single_event"),
    ("eval-dcase2016", "noise_10db"),
}
KNOWN_NON_COUGH_MISSES = {
    "breathing (coswara)",
    "breathing (eval-esc50-nc)",
    "brushing teeth (eval-esc50-nc)",
    "car horn (eval-esc50-nc)",
    "cat (eval-esc50-nc)",
    "cow (eval-esc50-nc)",
    "crow (eval-esc50-nc)",
    "dog (esc10)",
    "door knocks (eval-dcase2016)",
    "door knocks (eval-esc50-nc)",
    "door slams (eval-dcase2016)",
    "door wood creaks (eval-esc50-nc)",
    "drinking sipping (eval-esc50-nc)",
    "fireworks (eval-esc50-nc)",
    "footsteps (eval-esc50-nc)",
    "frog (eval-esc50-nc)",
    "glass breaking (eval-esc50-nc)",
    "hen (eval-esc50-nc)",
    "household sounds (eval-dcase2016)",
    "insects (eval-esc50-nc)",
    "laughter (antum-sounds)",
    "laughter (eval-dcase2016)",
    "laughter (eval-esc50-nc)",
    "laughter (soundmonster)",
    "pig (eval-esc50-nc)",
    "room noise (sneeze-detector)",
    "room noise (speechcommands-noise)",
    "screaming (soundmonster)",
    "sheep (eval-esc50-nc)",
    "siren (eval-esc50-nc)",
    "sneezing (esc10)",
    "speech (coswara)",
    "speech (soundmonster)",
    "speech (speechcommands)",
    "synthetic knocks-1 (synthetic)",
    "synthetic speech_in_noise-1 (synthetic)",
    "throat clearing (eval-dcase2016)",
    "thunderstorm (eval-esc50-nc)",
    "train (eval-esc50-nc)",
    "vowels (coswara)",
    "water drops (eval-esc50-nc)",
}


def test_the_card_reports_every_condition_and_its_misses() -> None:
    card = json.loads((GATE / "manifest.json").read_text())["card"]
    measured = card["metrics"]["test"]
    for by_condition in measured["coughs_refused"].values():
        assert set(by_condition) == set(conditions.CONDITIONS)
    # Real recordings from elsewhere that nothing was trained or chosen on.
    assert {"eval-dcase2016", "eval-esc50-nc"} <= set(measured["coughs_refused"])
    assert card["data"]["evaluation_only"] == ["eval-dcase2016", "eval-esc50-nc"]
    categories = {k.split(" (")[0] for k in measured["non_coughs_accepted"]}
    assert {"speech", "breathing", "door knocks", "laughter", "clapping", "snoring"} <= categories
    cough_misses = {
        (source, condition)
        for source, by in measured["coughs_refused"].items()
        for condition, cell in by.items()
        if cell["rate"] > MAX_REFUSED
    }
    assert cough_misses == KNOWN_COUGH_MISSES
    non_cough_misses = {
        k for k, cell in measured["non_coughs_accepted"].items() if cell["rate"] > MAX_REFUSED
    }
    assert non_cough_misses == KNOWN_NON_COUGH_MISSES


def test_the_design_was_chosen_on_validation_among_every_design_tried() -> None:
    manifest = json.loads((GATE / "manifest.json").read_text())
    metrics = manifest["card"]["metrics"]
    designs = metrics["designs"]
    assert manifest["backbone"]["detector"] == metrics["design"] == DESIGN
    assert {"native", "class-logit head, 16 embedding components"} <= set(designs)
    assert any("anchored" in d for d in designs) and any("veto" in d for d in designs)
    assert any("laughter where wideband" in d for d in designs)
    ranked = sorted(
        designs,
        key=lambda d: (
            designs[d]["validation"]["non_coughs_accepted_per_category"],
            designs[d]["validation"]["non_coughs_accepted"],
        ),
    )
    assert designs[ranked[0]]["validation"] == designs[DESIGN]["validation"]
    assert manifest["threshold"] == designs[DESIGN]["threshold"]
    # The chosen design reads each window's channel: its backbone adds the column.
    assert manifest["backbone"]["features"] == "window_embedding+logit_scores+high_band_share"


def test_the_manifest_is_brief_and_the_full_report_is_beside_it() -> None:
    """The manifest is stored with every served model and read by the API: each
    design's full figures, the validation rates and the sweeps live in report.json."""
    text = (GATE / "manifest.json").read_text()
    assert len(json.dumps(json.loads(text))) < 48_000, "the manifest grew: move it to the report"
    manifest = json.loads(text)
    report = json.loads((GATE / manifest["card"]["metrics"]["report"]).read_text())
    assert set(report["designs"]) == set(manifest["card"]["metrics"]["designs"])
    for name, full in report["designs"].items():
        assert full["threshold"] == manifest["card"]["metrics"]["designs"][name]["threshold"]
        assert {"sources", "evaluation_only"} <= set(full["test"])
    assert report["test"] == manifest["card"]["metrics"]["test"]
    assert report["previous"]["version"] == "2026.12.03.2"
    assert set(report["counting"]["sweeps"]) == set(manifest["card"]["counting"]["sets"])


DESIGN = (
    "window head (C=0.003) + veto on non-voice confusers (q=1) "
    "+ on voice confusers where wideband (q=0.999)"
)
# The counting figures on the card (docs/model-card.md#counting), at the counting
# threshold chosen on the validation long recordings (the three validation sets
# together): (episode sensitivity, false positives per hour) per set. They miss the
# targets (>= 0.90 at <= 2 per hour).
COUNTING_THRESHOLD = 0.97
COUNTING = {
    "validation": (0.622, 1.5),
    "validation-phone": (0.4316, 1.75),
    "validation-wideband": (0.6115, 0.5),
    "test": (0.5528, 3.5),
    "test-with-evaluation-only": (0.7308, 2.25),
    "test-phone": (0.6379, 3.25),
    "test-wideband": (0.6639, 4.25),
}
CHANNELS = {"validation-phone": "phone", "validation-wideband": "wideband",
            "test-phone": "phone", "test-wideband": "wideband"}  # fmt: skip


def test_the_counting_threshold_is_chosen_on_validation_and_reported_on_test() -> None:
    manifest = json.loads((GATE / "manifest.json").read_text())
    counting = manifest["card"]["counting"]
    assert manifest["counting_threshold"] == counting["threshold"] == COUNTING_THRESHOLD
    assert manifest["counting_threshold"] != manifest["threshold"]  # chosen apart
    sets = counting["sets"]
    chosen_on = {name for name, s in sets.items() if s["part"] == "validation"}
    assert set(counting["chosen_on"]) == chosen_on == {
        "validation", "validation-phone", "validation-wideband"
    }  # fmt: skip
    for name, s in sets.items():
        assert s["set"]["split"] == s["part"], name  # validation sets from validation only
        assert s["set"]["channel"] == CHANNELS.get(name, "mixed"), name
    # The rule: the most sensitive threshold within the bound over the validation
    # sets together (the sweep in the report).
    report = json.loads((GATE / "report.json").read_text())
    within = [s for s in report["counting"]["sweep_on_validation"]
              if s["false_positives_per_hour"] <= 1.5]  # fmt: skip
    best = max(within, key=lambda s: (s["episode_sensitivity"], s["threshold"]))
    assert best["threshold"] == COUNTING_THRESHOLD
    assert {
        name: (s["at_threshold"]["episodes"]["sensitivity"],
               s["at_threshold"]["episodes"]["false_positives_per_hour"])
        for name, s in sets.items()
    } == COUNTING  # fmt: skip
    assert sets["test-with-evaluation-only"]["set"]["with_evaluation_only"]
