"""The README and docs/: every relative link (README into docs/, docs/ into each other and back)
names a file that exists and, with a #fragment, a heading of that file; the README stays short
enough to read through (issue 26: at most 250 lines); docs/README.md lists every page of docs/."""

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
PAGES = [PROJECT / "README.md", *sorted(DOCS.glob("*.md"))]
# [text](target), not an image's ![..](..) (those are checked as files all the same)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text):
    """The lines of a markdown text outside fenced code blocks."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped but hyphens and
    underscores, each space a hyphen."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page):
    found, seen = set(), {}
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page):
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not ours
                yield target


def test_there_are_docs_pages_and_the_readme_links_into_them():
    linked = {(PROJECT / target.split("#")[0]).resolve() for target in relative_links(PROJECT / "README.md")}
    assert (DOCS / "README.md").resolve() in linked
    assert len(list(DOCS.glob("*.md"))) >= 8


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(PROJECT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        goal = (page.parent / path).resolve() if path else page
        if not goal.exists():
            broken.append(f"{target}: no such file")
        elif fragment and goal.suffix == ".md" and fragment not in anchors(goal):
            broken.append(f"{target}: no heading #{fragment} in {goal.relative_to(PROJECT)}")
    assert broken == []


def test_the_readme_is_short():
    assert len((PROJECT / "README.md").read_text().splitlines()) <= 250


def test_the_contents_list_every_page():
    listed = {(DOCS / target.split("#")[0]).resolve() for target in relative_links(DOCS / "README.md")}
    pages = {page.resolve() for page in DOCS.glob("*.md") if page.name != "README.md"}
    assert pages - listed == set()
