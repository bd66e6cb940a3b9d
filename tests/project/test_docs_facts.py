"""The docs against what they describe, so that they cannot drift from it unseen: every
test a page cites exists where it says; example bodies show the shipped bundles'
version, threshold and caveat; the home page's and the README's lists of pages are the
site's navigation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# `tests/api/test_access.py::test_name`, and bare `test_name`s.
CITED = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
BARE = re.compile(r"`(test_\w+)`")
# The pages whose examples show a job's or a batch's result.
EXAMPLES = [DOCS / "api.md", DOCS / "batches.md", DOCS / "client.md", DOCS / "cli.md"]


def defines(path: Path, name: str) -> bool:
    return re.search(rf"^(?:async )?def {re.escape(name)}\(", path.read_text(), re.M) is not None


def test_every_test_a_page_cites_exists_where_it_says() -> None:
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    wrong: list[str] = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            where = f"{page.relative_to(ROOT)}:{number}"
            cited = CITED.findall(line)
            for path, name in cited:
                if not (ROOT / path).is_file() or not defines(ROOT / path, name):
                    wrong.append(f"{where}: {path}::{name} does not exist")
            for match in BARE.finditer(line):
                name = match.group(1)
                # A bare name is a test of the file cited last before it on the line
                # ("tests/a.py::x, `y`; tests/b.py::z": y is in a.py).
                before = CITED.findall(line[: match.start()])
                if before and before[-1][1] == name:
                    continue  # the name of a path::name citation itself
                if before:
                    path = before[-1][0]
                    if not defines(ROOT / path, name):
                        home = [str(t.relative_to(ROOT)) for t in tests if defines(t, name)]
                        wrong.append(f"{where}: {name} is not in {path} (it is in {home})")
                elif not any(defines(t, name) for t in tests):
                    wrong.append(f"{where}: {name} is no test")
    assert not wrong, "\n".join(wrong)


def manifest(bundle: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "models" / bundle / "manifest.json").read_text())
    return data


def shown_as(value: float, text: str) -> bool:
    """``text`` is ``value`` to the decimals it shows."""
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return round(value, decimals) == float(text)


def test_example_bodies_show_the_shipped_bundles() -> None:
    diagnosis, gate = manifest("default"), manifest("cough-gate")
    versions = {diagnosis["version"], gate["version"]}
    thresholds = (diagnosis["threshold"], gate["threshold"])
    wrong: list[str] = []
    for page in EXAMPLES:
        text = page.read_text()
        name = page.relative_to(ROOT)
        for version in re.findall(r"\b(20\d\d\.\d\d\.\d\d(?:\.\d+)?)\b", text):
            if version not in versions:
                wrong.append(f"{name}: version {version}, shipped {sorted(versions)}")
        for value in re.findall(r'"threshold": ([0-9.]+)', text):
            if not any(shown_as(t, value) for t in thresholds):
                wrong.append(f"{name}: threshold {value}, shipped {thresholds}")
        for value in re.findall(r'"within_source_auc": ([0-9.]+)', text):
            if not shown_as(diagnosis["within_source_auc"], value):
                wrong.append(f"{name}: within_source_auc {value}")
        for caveat in re.findall(r'"caveat": "([^"]*)"', text):
            shown = caveat.split("...")[0].rstrip(" .:")
            if not diagnosis["caveat"].startswith(shown):
                wrong.append(f"{name}: caveat {caveat!r}, shipped {diagnosis['caveat']!r}")
    assert not wrong, "\n".join(wrong)


def nav() -> list[str]:
    """The site's pages in navigation order (``mkdocs.yml``), the home page left out."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages = [next(iter(entry.values())) for entry in config["nav"]]
    return [p for p in pages if p != "index.md"]


def test_the_home_page_and_the_readme_list_every_page_in_the_navigation_order() -> None:
    pages = nav()
    home = (DOCS / "index.md").read_text().split("## Pages", 1)[1]
    assert re.findall(r"\]\(([\w-]+\.md)\)", home) == pages, "docs/index.md's Pages table"
    readme = (ROOT / "README.md").read_text().split("## Documentation", 1)[1].split("\n## ")[0]
    listed = re.findall(r"\]\(docs/([\w-]+\.md)\)", readme)
    assert listed == pages, "README.md's Documentation list"


def test_every_commands_help_names_only_options_it_has() -> None:
    """``tussis status --help`` once named an ``--evaluation`` it does not have."""
    import click

    from tussis.cli import main

    def commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
        found: list[tuple[str, click.Command]] = []
        for name, command in group.commands.items():
            found.append((f"{prefix} {name}", command))
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix} {name}")
        return found

    wrong = []
    for name, command in commands(main, "tussis"):
        with click.Context(command, info_name=name) as ctx:
            text = command.get_help(ctx)
        own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        # What another command takes, quoted as that command (`tussis results B --x`).
        text = re.sub(r"`tussis [^`]*`", "", text, flags=re.S)
        for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text)) - own - {"--help"}:
            wrong.append(f"`{name} --help` names {option}, which it does not take")
    assert not wrong, "\n".join(wrong)
