"""The user-facing docs point at things that exist: every relative Markdown link names a file
of the repository (and a heading of it, for ``#anchor``), and every repository path the prose
names (``docs/...``, ``tests/...``, ``config/...``, ...) is there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
               *(ROOT / "contrib_plugins").glob("*/README.md")])

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|core|plugins|scripts|config|contrib_plugins|"
                  r"benchmarks)/[\w./*-]+)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = name = slug(m.group(1))
            n = 1
            while name in out:  # GitHub numbers repeated headings
                name, n = f"{base}-{n}", n + 1
            out.add(name)
    return out


def broken_links(doc: Path) -> list[str]:
    bad = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, frag = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{doc.name}: {target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{doc.name}: {target}: no such heading")
    return bad


def missing_paths(doc: Path) -> list[str]:
    bad = []
    for mention in PATH.findall(doc.read_text()):
        path = mention.rstrip(".,:;")
        if not any(any(base.glob(path)) for base in (ROOT, doc.parent)):
            bad.append(f"{doc.name}: {path}")
    return bad


def test_links_resolve() -> None:
    bad = [b for doc in DOCS for b in broken_links(doc)]
    assert not bad, bad


def test_named_paths_exist() -> None:
    bad = [b for doc in DOCS for b in missing_paths(doc)]
    assert not bad, bad


def test_the_checks_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("# A `b` heading, too\n\n[ok](#a-b-heading-too) [gone](#nope) "
                   "[file](missing.md) see docs/nothing-here.md and docs/*.md\n")
    assert anchors(doc) == {"a-b-heading-too"}
    assert broken_links(doc) == ["x.md: #nope: no such heading",
                                 "x.md: missing.md: no such file"]
    assert missing_paths(doc) == ["x.md: docs/nothing-here.md"]
