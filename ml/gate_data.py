"""``tussis gate-data``: the real recordings the cough gate learns from and is
measured on, gathered from public git repositories into ``SOURCE/CATEGORY/FILE``
(``make models`` reads ``var/gate-data``). Nothing here is ever committed.

Each source is pinned to a commit and carries its licence. A source whose
licence does not allow the shipped weights to be derived from it (ESC-50's
non-commercial part) is *evaluation only*: its directory name starts with
``eval-``, and ``ml.cough_gate`` puts every such recording in the test split,
so it is never trained on, and no threshold or setting is chosen on it.

Where the repositories are already on disk (``--mirror DIR`` holding
``OWNER+NAME/repo`` git directories), nothing is downloaded; otherwise each is
fetched at its commit with ``git`` (about 200 MB in all).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EVAL_ONLY_PREFIX = "eval-"
RECORD = "SOURCES.json"  # what was gathered, from where, under which licence

# ESC-10, the part of ESC-50 released under CC BY 3.0; the rest is CC BY-NC 3.0.
ESC10 = {
    "dog", "rooster", "rain", "sea_waves", "crackling_fire",
    "crying_baby", "sneezing", "clock_tick", "helicopter", "chainsaw",
}  # fmt: skip
# ESC-50 categories -> the gate's categories (those not listed keep their name).
ESC_CATEGORY = {
    "coughing": "cough",
    "clapping": "clapping",
    "door_wood_knock": "door knocks",
    "laughing": "laughter",
    "snoring": "snoring",
    "sneezing": "sneezing",
    "breathing": "breathing",
}


Reader = Callable[[str], bytes]
# (path in the repository, source, category, file name to write)
Picks = Iterator[tuple[str, str, str, str]]


@dataclass(frozen=True)
class Source:
    repo: str  # owner/name on GitHub
    commit: str
    licence: str
    select: Callable[[list[str], Reader], Picks]  # the files present -> what to take


def _esc50(paths: list[str], read: Reader) -> Picks:
    present = set(paths)
    rows = csv.DictReader(io.StringIO(read("meta/esc50.csv").decode()))
    for row in rows:
        path = f"audio/{row['filename']}"
        if path not in present:
            continue  # this copy holds about 400 of the 2,000 clips
        category = ESC_CATEGORY.get(row["category"], row["category"].replace("_", " "))
        source = "esc10" if row["category"] in ESC10 else EVAL_ONLY_PREFIX + "esc50-nc"
        yield path, source, category, Path(path).name


def _librosa_data(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        # The low-quality copies only: the .hq.ogg files are the same recordings.
        if path.startswith("audio/") and path.endswith(".ogg") and not path.endswith(".hq.ogg"):
            yield path, "librosa-data", "music", Path(path).name


IBM_CATEGORY = {
    "applause": "clapping",
    "snoring": "snoring",
    "typing": "household sounds",
    "arcade_music": "music",
    "guitar": "music",
    "jazz_guitar": "music",
    "piano": "music",
    "cinematic": "music",
}


def _ibm_samples(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        if path.startswith("samples/") and path.endswith(".wav"):
            stem = Path(path).stem
            yield (
                path,
                "ibm-max-samples",
                IBM_CATEGORY.get(stem, "street and nature"),
                Path(path).name,
            )


def _speech_commands(paths: list[str], read: Reader) -> Picks:
    """Speech Commands v0.02 (one-second words, many speakers): the first
    ``SPEECH_PER_WORD`` files of each word, and as many of its room-noise cuts."""
    taken: dict[str, int] = {}
    for path in sorted(paths):
        parts = path.split("/")
        if len(parts) != 4 or parts[:2] != ["MLTK_keyworkSpotting", "dataset"]:
            continue
        if not path.endswith(".wav"):
            continue
        word = parts[2]
        if taken.get(word, 0) >= SPEECH_PER_WORD:
            continue
        taken[word] = taken.get(word, 0) + 1
        category = "room noise" if word == "_silence_" else "speech"
        yield path, "speechcommands", category, f"{word}-{parts[3]}"


def _speech_commands_noise(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        if path.startswith("data/_background_noise_/") and path.endswith(".wav"):
            yield path, "speechcommands-noise", "room noise", Path(path).name


SNEEZE_DETECTOR = {
    "sneeze_template": "sneezing",
    "sneeze_template_full_2": "sneezing",
    "sneezing_real_1": "sneezing",
    "knocks": "door knocks",
    "breath_noise": "breathing",
}


def _sneeze_detector(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder != "train_sounds/16000" or not name.endswith(".wav") or name == ".wav":
            continue
        stem = name[: -len(".wav")]
        if stem in SNEEZE_DETECTOR:
            yield path, "sneeze-detector", SNEEZE_DETECTOR[stem], name
        elif stem.startswith("noise"):
            yield path, "sneeze-detector", "room noise", name
        elif stem.endswith("_all") and stem != "silence_all":
            yield path, "sneeze-detector", "vowels", name


DCASE_CATEGORY = {
    "clearthroat": "throat clearing",
    "cough": "cough",
    "doorslam": "door slams",
    "drawer": "household sounds",
    "keyboard": "household sounds",
    "keysDrop": "household sounds",
    "knock": "door knocks",
    "laughter": "laughter",
    "pageturn": "household sounds",
    "phone": "alarms and phones",
    "speech": "speech",
}


def _dcase2016(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder == "data/train/sound" and name.endswith(".wav"):
            kind = name[: -len(".wav")].rstrip("0123456789")
            if kind in DCASE_CATEGORY:
                yield path, EVAL_ONLY_PREFIX + "dcase2016", DCASE_CATEGORY[kind], name


COSWARA_CATEGORY = {
    "cough-heavy": "cough",
    "cough-shallow": "cough",
    "breathing-deep": "breathing",
    "breathing-shallow": "breathing",
    "counting-fast": "speech",
    "counting-normal": "speech",
    "vowel-a": "vowels",
    "vowel-e": "vowels",
    "vowel-o": "vowels",
}


def _coswara(paths: list[str], read: Reader) -> Picks:
    """Coswara participants' own phones: ``<participant>/<kind>.wav``, written as
    ``<participant>_<kind>.wav`` so that one person's recordings share a split."""
    for path in paths:
        parts = path.split("/")
        kind = parts[-1].removesuffix(".wav")
        if parts[0] == "Extracted_data" and kind in COSWARA_CATEGORY and len(parts) >= 4:
            yield path, "coswara", COSWARA_CATEGORY[kind], f"{parts[-2]}_{kind}.wav"


# AntumDeluge's "sounds" game mod (freesound and OpenGameArt recordings): only the
# files whose own licence (mods/sounds/sources.md) is CC0 or CC BY.
GAME_SOUNDS = {
    "sounds_door_knock_01.ogg": "door knocks",  # CC BY 3.0, LPHypeR, freesound 500994
    "sounds_door_knock_02.ogg": "door knocks",  # CC0, Patrick Hunt, freesound 256513
    "sounds_door_close_01.ogg": "door slams",  # CC0, freesound 402465
    "sounds_door_close_02.ogg": "door slams",  # CC BY 3.0, InspectorJ
    "sounds_door_close_03.ogg": "door slams",  # CC BY 3.0, bennstir
    "sounds_laugh_evil_01.ogg": "laughter",  # CC0, AntumDeluge, OpenGameArt 81237
    "sounds_laugh_evil_02.ogg": "laughter",  # CC0, AntumDeluge, OpenGameArt 129475
}


def _game_sounds(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder == "mods/sounds/sounds" and name in GAME_SOUNDS:
            yield path, "antum-sounds", GAME_SOUNDS[name], name


# jonjonsson/SoundMonster, a soundboard's pack of freesound recordings: each file's
# licence is in the pack's README.md table (checked file by file). Only CC0 and CC BY
# files are taken; the three marked just "Public domain" (two radio clicks and a
# Wikimedia bugle call) are left out. Stem -> (category, licence).
SOUND_MONSTER = {
    "knock door": ("door knocks", "CC0"),
    "knock heavy": ("door knocks", "CC0"),
    "laughter cute": ("laughter", "CC0"),
    "laughter sitcom audience crowd": ("laughter", "CC0"),
    "evil laughter": ("laughter", "CC0"),
    "golf clap": ("clapping", "CC0"),
    "applause": ("clapping", "CC0"),
    "celebrate group applause clapping yey 1": ("clapping", "CC BY 4.0"),
    "celebrate group applause clapping yey 2": ("clapping", "CC BY 3.0"),
    "snore loop": ("snoring", "CC0"),
    "cough": ("cough", "CC0"),
    "shock gasp": ("vocal sounds", "CC0"),
    "aww": ("vocal sounds", "CC0"),
    "aww group": ("vocal sounds", "CC0"),
    "aww pity moan audience": ("vocal sounds", "CC0"),
    "moan eeeyye guy": ("vocal sounds", "CC0"),
    "quiet shush shh": ("vocal sounds", "CC0"),
    "cute aww that was so cute": ("vocal sounds", "CC0"),
    "sexy whistle wow": ("vocal sounds", "CC BY 4.0"),
    "scream girl afraid frightened": ("screaming", "CC BY 3.0"),
    "scream pain man 1": ("screaming", "CC BY 3.0"),
    "scream pain man 2": ("screaming", "CC0"),
    "scream pain man 3": ("screaming", "CC0"),
    "fart long": ("farts", "CC0"),
    "fart powerful": ("farts", "CC0"),
    "fart short": ("farts", "CC0"),
    "fart wet": ("farts", "CC0"),
    "crying baby": ("crying baby", "CC0"),
    "angry cat": ("cat", "CC BY 4.0"),
    "angry dog growl": ("dog", "CC0"),
    "quack duck": ("duck", "CC0"),
    "crickets bad joke": ("insects", "CC0"),
    "toilet flush": ("toilet flush", "CC0"),
    "typewriter carriage return": ("household sounds", "CC0"),
    "money cash register purchase": ("household sounds", "CC0"),
    "whip crack": ("household sounds", "CC0"),
    "clock tick tock waiting": ("clock tick", "CC0"),
    "ocean water waves loop": ("sea waves", "CC0"),
    "radio static loop": ("room noise", "CC0"),
    "doorbell": ("alarms and phones", "CC0"),
    "telephone rotary ring loop": ("alarms and phones", "CC0"),
    "siren police short": ("alarms and phones", "CC0"),
    "danger siren loop": ("alarms and phones", "CC0"),
    "buzzer": ("alarms and phones", "CC0"),
    "ding bell": ("alarms and phones", "CC0"),
    "censor bleep loop": ("alarms and phones", "CC0"),
    "horn bicycle": ("alarms and phones", "CC0"),
    "horn car": ("alarms and phones", "CC0"),
    "hype air horn": ("alarms and phones", "CC0"),
    "horn air horn train": ("alarms and phones", "CC0"),
    "train whistle": ("alarms and phones", "CC0"),
    "bruh": ("speech", "CC0"),
    "bye bye": ("speech", "CC0"),
    "confused ehhh": ("speech", "CC0"),
    "correct that's correct radio": ("speech", "CC0"),
    "haters gonna hate": ("speech", "CC0"),
    "kill now is the time to kill": ("speech", "CC0"),
    "nice mmm": ("speech", "CC0"),
    "nope": ("speech", "CC0"),
    "radio police chatter": ("speech", "CC0"),
    "thank you crowd": ("speech", "CC0"),
    "what short": ("speech", "CC0"),
    "what surprised": ("speech", "CC0"),
    "why": ("speech", "CC0"),
    "wow": ("speech", "CC0"),
    "yeah ohh yeah": ("speech", "CC0"),
    "yeet": ("speech", "CC0"),
    "access denied": ("speech", "CC0"),
    "access granted": ("speech", "CC0"),
    "beautiful": ("speech", "CC0"),
    "cool": ("speech", "CC BY 3.0"),
    "hello": ("speech", "CC BY 4.0"),
    "hello what's up boys": ("speech", "CC BY 4.0"),
    "let's go dude": ("speech", "CC BY 4.0"),
    "love I love you": ("speech", "CC BY 4.0"),
    "please puh-leaze oh please": ("speech", "CC BY 3.0"),
    "thank you so much radio dj": ("speech", "CC BY 3.0"),
    "who the hell are you": ("speech", "CC BY 3.0"),
    "whoops": ("speech", "CC BY 4.0"),
    "yes audience": ("speech", "CC BY 4.0"),
    "yes yeeeess": ("speech", "CC BY 3.0"),
    "yey": ("speech", "CC BY 4.0"),
    "eyes open keep your eyes open": ("speech", "CC BY 3.0"),
    "kill one shot one kill": ("speech", "CC BY 4.0"),
    "message please leave your message after the tone": ("speech", "CC BY 3.0"),
    "announcement gong": ("music", "CC BY 4.0"),
    "dramatic dun dun dunnn": ("music", "CC BY 4.0"),
    "drum loop funky groovy 84 bpm": ("music", "CC BY 3.0"),
    "game over arcade": ("music", "CC BY 3.0"),
    "game win jingle": ("music", "CC BY 3.0"),
    "joke drum ba-da-dum": ("music", "CC BY 4.0"),
    "sad violin": ("music", "CC BY 4.0"),
    "record scratch": ("music", "CC BY 3.0"),
    "announcement timpani roll": ("music", "CC0"),
    "army reveille bugle military attack cavalry charge": ("music", "CC0"),
    "bg ambient scary sinister dramatic atmospheric loop": ("music", "CC0"),
    "bg music electronic loop": ("music", "CC0"),
    "bg music house dance groovy loop": ("music", "CC0"),
    "bg music scary dramatic atmospheric ambient loop": ("music", "CC0"),
    "boing cartoon": ("music", "CC0"),
    "drama inception braam orchestral hit 1": ("music", "CC0"),
    "drama inception braam orchestral hit 2": ("music", "CC0"),
    "drama inception braam orchestral hit 3": ("music", "CC0"),
    "drum roll": ("music", "CC0"),
    "drum roll end": ("music", "CC0"),
    "drum roll loop": ("music", "CC0"),
    "fail game over wah wah sad trombone": ("music", "CC0"),
    "flute slide cartoon falling": ("music", "CC0"),
    "hallelujah": ("music", "CC0"),
    "hip hop record scratch 1": ("music", "CC0"),
    "hip hop record scratch 2": ("music", "CC0"),
    "horn dukes of hazard general lee dixie": ("music", "CC0"),
    "winning jingle": ("music", "CC0"),
    "yeah song": ("music", "CC0"),
    "danger": ("speech", "CC0"),
}


def _sound_monster(paths: list[str], read: Reader) -> Picks:
    for path in paths:
        folder, _, name = path.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        if folder in ("Public domain", "Attribution license") and stem in SOUND_MONSTER:
            yield path, "soundmonster", SOUND_MONSTER[stem][0], name


SPEECH_PER_WORD = 25

SOURCES = (
    Source(
        "caitlinnguyen0/ESC-50",  # a partial copy of karolpiczak/ESC-50
        "7085beb71d02eb515b8bad56ad2a29e8fa0dcd08",
        "ESC-10 part CC BY 3.0 (trained on); the rest CC BY-NC 3.0 (evaluation only)",
        _esc50,
    ),
    Source(
        "librosa/librosa-data",
        "ec42e6072eb39d06e05f49ced6fcd19dd99e3e39",
        "Creative Commons per recording (the audio folder's attribution files)",
        _librosa_data,
    ),
    Source(
        "IBM/MAX-Audio-Classifier",
        "3c308abcb04e1523e668ebaf76ca55898cd97d28",
        "freesound CC BY / CC0 per recording (samples/README.md)",
        _ibm_samples,
    ),
    Source(
        "thegtagamer/PICO-tinyML-benchmark",  # the Speech Commands v0.02 test set
        "c66f6b0d78fe9218f6de9d07189691cfae077bee",
        "CC BY 4.0 (MLTK_keyworkSpotting/dataset/LICENSE)",
        _speech_commands,
    ),
    Source(
        "chaeyoung-lee/wids_tutorial",  # Speech Commands' background-noise recordings
        "7d028e7211c846244903eb59664087f1fb3e4c07",
        "CC BY 4.0 (Speech Commands)",
        _speech_commands_noise,
    ),
    Source(
        "vadimostanin2/sneeze-detector",
        "2bac0d08cb4960b7dc16492b8c69ff1459dd9334",
        "MIT (LICENSE)",
        _sneeze_detector,
    ),
    Source(
        "therealmanraj/coswara",  # extracted Coswara recordings (iiscleap/Coswara-Data)
        "c06e422ae89d2c382c220c281ed04238c6bf0870",
        "CC BY 4.0 (iiscleap/Coswara-Data LICENSE.md)",
        _coswara,
    ),
    Source(
        "RedundantC/wis_part1",  # carries AntumDeluge's "sounds" mod
        "9c9adecf2f77b899e7929a3f4a82700d416cb4e4",
        "CC0 or CC BY 3.0 per recording (mods/sounds/sources.md)",
        _game_sounds,
    ),
    Source(
        "jonjonsson/SoundMonster",
        "7e07f0580aa5e40e7205b6be378787854a61f4e7",
        "CC0 or CC BY 3.0/4.0 per recording (README.md; the 'Public domain'-only ones unused)",
        _sound_monster,
    ),
    Source(
        "Stevens05/SASED",  # DCASE2016 task 2's isolated office sounds (IRCCYN)
        "66b1f3d1e2457689367a843b5f2566ecfb58ada8",
        "no licence stated: evaluation only",
        _dcase2016,
    ),
)


def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True
    ).stdout


def _git_dir(root: Path) -> Path:
    return root / ".git" if (root / ".git").is_dir() else root


def _checkout(source: Source, mirror: Path | None, scratch: Path) -> tuple[Path, str]:
    """A git directory holding the source's commit (a local mirror or a fresh fetch)."""
    if mirror is not None:
        local = mirror / source.repo.replace("/", "+") / "repo"
        if local.is_dir():
            return _git_dir(local), source.commit or "HEAD"
    target = scratch / source.repo.replace("/", "+")
    subprocess.run(["git", "init", "-q", "--bare", str(target)], check=True)
    ref = source.commit or "HEAD"
    url = f"https://github.com/{source.repo}.git"
    subprocess.run(
        ["git", f"--git-dir={target}", "fetch", "-q", "--depth", "1", url, ref], check=True
    )
    return target, "FETCH_HEAD"


def gather(out: Path, mirror: Path | None = None) -> dict[str, dict[str, int]]:
    """Write every source's recordings under ``out`` (emptied first: it is a cache
    of exactly what ``SOURCES`` names); counts per source and category."""
    shutil.rmtree(out, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for source in SOURCES:
            git_dir, ref = _checkout(source, mirror, Path(scratch))
            listing = _git(git_dir, "ls-tree", "-r", "-z", ref).decode().split("\0")
            blobs = {}
            for line in filter(None, listing):
                meta, path = line.split("\t", 1)
                blobs[path] = meta.split()[2]
            present = [
                p
                for p, blob in blobs.items()
                if subprocess.run(
                    ["git", f"--git-dir={git_dir}", "cat-file", "-e", blob], capture_output=True
                ).returncode
                == 0
            ]

            def read(path: str, _d: Path = git_dir, _r: str = ref) -> bytes:
                return _git(_d, "show", f"{_r}:{path}")

            for path, name, category, filename in source.select(present, read):
                target = out / name / category / filename
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.write_bytes(read(path))
                counts.setdefault(name, {}).setdefault(category, 0)
                counts[name][category] += 1
            log.info("%s: %s", source.repo, counts)
    record = [{"repo": s.repo, "commit": s.commit, "licence": s.licence} for s in SOURCES]
    (out / RECORD).write_text(json.dumps({"sources": record, "counts": counts}, indent=1) + "\n")
    return counts
