"""The documentation site builds (mkdocs --strict, as CI runs it), every relative link in the
README and the docs resolves, and the README stays a front door of 300 lines at most."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from .conftest import ROOT

DOCS = ROOT / "docs"
README_MAX_LINES = 300


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner
    )


@pytest.mark.slow
def test_the_site_builds_strict_with_the_api_reference(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds on the committed docs, and the API page holds the
    public names' docstrings as mkdocstrings renders them (not just their names)."""
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    for name, docstring in (
        ("install", "Observe every asyncio task in this process"),
        ("uninstall", "Stop observing and put back every task factory"),
        ("stats", "A snapshot per coroutine name"),
        ("findings", "detectors found, oldest first"),
        ("advise", "What to change: thread/process pool sizes"),
    ):
        assert f'id="asyncwatch.{name}"' in api, name
        assert docstring in api, name
    for name in ("Config", "profile", "AsyncWatchMiddleware"):
        assert f'id="asyncwatch.{name}"' in api, name
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "--require" in cli  # the generated `asyncwatch run --help`


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "addition", "complaint"),
    [
        ("index.md", "\nSee [nowhere](guide/no-such-page.md).\n", "no-such-page.md"),
        ("index.md", "\nSee [nowhere](reference/api.md#no-such-anchor).\n", "no-such-anchor"),
        ("reference/api.md", "\n::: asyncwatch.no_such_name\n", "no_such_name"),
    ],
    ids=["missing page", "missing anchor", "missing API name"],
)
def test_the_strict_build_fails_on_a_broken_reference(
    tmp_path: Path, page: str, addition: str, complaint: str
) -> None:
    """The same configuration on a copy of the docs with one broken link or one reference to
    a name that does not exist fails the build, naming it: what makes the first test worth
    running."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    target = tmp_path / "docs" / page
    target.write_text(target.read_text() + addition)
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0, result.stdout + result.stderr
    assert complaint in result.stdout + result.stderr


def test_the_readme_is_a_front_door() -> None:
    """The README is at most 300 lines and keeps the two set-up commands and the one line."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "./scripts/demo " in text
    assert "./scripts/test " in text
    assert "asyncwatch.install()" in text


_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.MULTILINE)


def _slugs(markdown: str) -> set[str]:
    """Heading anchors as GitHub and Python-Markdown's toc make them (they agree but for runs
    of spaces and dashes, which one collapses and the other keeps)."""
    found = set()
    for title in _HEADING.findall(_FENCE.sub("", markdown)):
        text = unicodedata.normalize("NFKD", title.replace("`", "")).lower()
        text = re.sub(r"[^\w\s-]", "", text).strip()
        found.add(re.sub(r"\s", "-", text))
        found.add(re.sub(r"[-\s]+", "-", text))
    return found


def _links(path: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", path.read_text()))
    return [m for m in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", m)]


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link in the README and the docs names a file that exists and, with a
    #fragment, a heading of that file (the README's links into docs/ work on GitHub too)."""
    broken = []
    for link in _links(page):
        target, _, fragment = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in _slugs(file.read_text()):
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    """The link check above does find a missing file and a missing heading."""
    (tmp_path / "a.md").write_text("# Title\n\n## A `code` heading: here\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#a-code-heading-here) [bad](a.md#nope) [gone](c.md) `[code](x.md)`\n"
        "[web](https://example.com/x.md)\n"
    )
    assert _links(page) == ["a.md#a-code-heading-here", "a.md#nope", "c.md"]
    assert "a-code-heading-here" in _slugs((tmp_path / "a.md").read_text())
    assert "nope" not in _slugs((tmp_path / "a.md").read_text())
