"""The documentation: a short README, and an MkDocs site that builds strictly.

The site (``mkdocs.yml``, ``docs/``) includes parts of README.md with
pymdownx.snippets instead of copying them, so each fact lives in one place.
``mkdocs build --strict`` turns every warning (a link to a missing page or
anchor, a missing snippet section) into a failure; these tests check that it
passes, that a broken link really does fail it, and that every README section a
page includes exists.

Outside CI, the build tests are skipped when MkDocs or the Material theme is not
installed; under ``CI=true`` they fail instead, as the rest of the suite does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

# A page line that includes a README section: --8<-- "README.md:NAME"
INCLUDE = re.compile(r'^[ \t]*-+8<-+[ \t]+"README\.md:([a-z][-_0-9a-z]*)"[ \t]*$', re.M)
# A README section marker, inside an HTML comment: <!-- --8<-- [start:NAME] -->
MARKER = re.compile(
    r"^<!--[ \t]*-+8<-+[ \t]+\[[ \t]*(start|end)[ \t]*:[ \t]*([a-z][-_0-9a-z]*)[ \t]*\][ \t]*-->$",
    re.M,
)


def require_mkdocs() -> None:
    missing = [m for m in ("mkdocs", "material", "pymdownx") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"not installed: {', '.join(missing)} (mkdocs-material, pymdown-extensions)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def mkdocs_build(project: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def included_sections() -> dict[str, set[str]]:
    """Section name -> the pages that include it."""
    pages: dict[str, set[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for name in INCLUDE.findall(page.read_text(encoding="utf-8")):
            pages.setdefault(name, set()).add(page.relative_to(ROOT).as_posix())
    return pages


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it to {MAX_README_LINES} and move the "
        "rest to a page under docs/"
    )


def test_every_included_readme_section_exists() -> None:
    readme = README.read_text(encoding="utf-8")
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    for match in MARKER.finditer(readme):
        kind, name = match.groups()
        (starts if kind == "start" else ends)[name] = match.start()
    included = included_sections()
    assert included, "no page includes a README section"
    for name, pages in included.items():
        assert name in starts and name in ends, (
            f"{', '.join(sorted(pages))} include README.md:{name}, but README.md has no "
            f"<!-- --8<-- [start:{name}] --> ... [end:{name}] --> section"
        )
        assert starts[name] < ends[name], f"README.md section {name} ends before it starts"


def test_site_builds_strictly(tmp_path: Path) -> None:
    require_mkdocs()
    site = tmp_path / "site"
    build = mkdocs_build(ROOT, site)
    assert build.returncode == 0, build.stdout + build.stderr
    # The home page shows the README's disclaimer, included rather than copied.
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Research tool, not a diagnostic device." in home
    # Every include was replaced, and nothing is loaded from elsewhere at run time
    # (no web fonts, no scripts or styles from a CDN).
    leftover = re.compile(r"--8&lt;--\s+(?:&quot;|\")README\.md:")
    external = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.I)
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        where = page.relative_to(site)
        assert not leftover.search(html), f"{where} shows an include line instead of its section"
        assert not external.search(html), f"{where} loads an external resource"
        assert "fonts.googleapis.com" not in html, f"{where} loads web fonts"


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    require_mkdocs()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(README, project / "README.md")
    shutil.copy2(MKDOCS_YML, project / "mkdocs.yml")
    shutil.copytree(DOCS, project / "docs")
    page = project / "docs" / "getting-started.md"
    with page.open("a", encoding="utf-8") as f:
        f.write("\nSee also [a page that does not exist](missing-page.md).\n")
    build = mkdocs_build(project, tmp_path / "site")
    assert build.returncode != 0, "mkdocs build --strict passed despite a broken link"
    assert "missing-page.md" in build.stdout + build.stderr


def test_a_missing_readme_section_fails_the_strict_build(tmp_path: Path) -> None:
    require_mkdocs()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(README, project / "README.md")
    shutil.copy2(MKDOCS_YML, project / "mkdocs.yml")
    shutil.copytree(DOCS, project / "docs")
    with (project / "docs" / "index.md").open("a", encoding="utf-8") as f:
        f.write('\n--8<-- "README.md:no-such-section"\n')
    build = mkdocs_build(project, tmp_path / "site")
    assert build.returncode != 0, "mkdocs build --strict passed despite a missing README section"
