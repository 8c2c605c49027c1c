"""The docs hold together: the option table is the code's, every link resolves, and
nothing cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dprl.config import GROUPS, markdown_table, options

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_option_table_in_the_docs_is_the_code_s():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert markdown_table() in page, "docs/configuration.md's table differs: paste the output of scripts/options-table"


def test_every_option_is_in_exactly_one_help_group():
    grouped = [name for _, names in GROUPS for name in names]
    assert sorted(grouped) == sorted(spec.name for spec in options())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(page: Path):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    for target in re.findall(r"\]\(([^)#:]+/)\)", text):
        assert (page.parent / target).is_dir(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_nothing_cites_a_file_outside_the_repository(page: Path):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\.\./shared|\bDESIGN\.md\b", text)  # the notes the project grew from are not its docs


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the details into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page: Path):
    """A page that names a file of the repository names one that is there (no stale paths)."""
    text = page.read_text(encoding="utf-8")
    for path in set(re.findall(r"\b(?:tests|scripts|dprl|benchmarks)/[\w./-]+\.(?:py|lua|c|txt)\b", text)):
        assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"
