"""Every relative link and image in the README and docs/ resolves: the file exists and, where the
link names a heading (#anchor), that heading exists in the target, slugged the way GitHub does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto: are not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme_links = {target.partition("#")[0] for target in links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_slug_follows_github():
    assert slug("The `default` aligner") == "the-default-aligner"
    assert slug("When the index must be smaller: 8-bit codes and exact re-scoring") == (
        "when-the-index-must-be-smaller-8-bit-codes-and-exact-re-scoring"
    )


def test_docs_pages_named_in_the_code_exist_with_their_headings():
    """Comments point to docs/PAGE.md#heading for the figures behind a choice: those must resolve."""
    broken = []
    for source in sorted([*(ROOT / "retrieval").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for page_name, anchor in re.findall(r"docs/([\w\-]+\.md)(?:#([\w\-]+))?", source.read_text()):
            page = ROOT / "docs" / page_name
            where = f"{source.relative_to(ROOT)}: docs/{page_name}"
            if not page.exists():
                broken.append(f"{where}: no such file")
            elif anchor and anchor not in anchors(page):
                broken.append(f"{where}#{anchor}: no such heading")
    assert not broken, "; ".join(broken)
