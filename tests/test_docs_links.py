"""The docs point at things that exist: relative links, anchors, project paths and module names.

Files move (issue 14 moved every module of ``dicom_node``), and a manual
that names ``dicom_node/receiver.py`` after the receiver became
``dicom_node/receive/scp.py`` sends its reader nowhere.  Checked in
``README.md`` and ``docs/**/*.md``:

* every relative Markdown link (inline, image or reference style) names a
  file or folder inside the repository, and a ``#fragment`` names a heading
  of the target (GitHub's anchors);
* every path in inline code or in a fenced block that starts with one of
  the project's folders (``dicom_node/``, ``ai_models/``, ``routing_rules/``,
  ``tests/``, ``deploy/``) exists; a glob (``deploy/rules/*.toml``) must
  match something, a placeholder (``<model>``) stands for one path
  component, and a path that ``.gitignore`` names (a cache the set-up
  fills) counts as existing;
* every dotted name in inline code under ``dicom_node.``, ``ai_models.`` or
  ``routing_rules.`` is a module, or a name the module it starts with defines;
* nothing points outside the repository (``../shared/...``,
  ``/work/...``): a reader of the repository cannot follow it.

And ``docs/architecture.md`` agrees with the tree and the architecture
test: its table of packages lists the ``STAGES`` of
``tests/test_architecture.py`` in the same order, and every module its
flow diagram names exists.
"""
from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_architecture import STAGES

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FOLDERS = ("dicom_node/", "ai_models/", "routing_rules/", "tests/", "deploy/")
PACKAGES = ("dicom_node", "ai_models", "routing_rules")
OUTSIDE = ("../", "/work/", "shared/")

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_PLACEHOLDER = re.compile(r"<[^<>/]+>")
_DOTTED = re.compile(r"^(?:dicom_node|ai_models|routing_rules)(?:\.\w+)+")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def lines_of(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block) for each line; fence lines themselves are skipped."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        yield number, line, fenced


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line, fenced in lines_of(path.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            anchor = github_anchor(match.group(1))
            seen = counts.get(anchor, 0)
            counts[anchor] = seen + 1
            found.add(anchor if seen == 0 else f"{anchor}-{seen}")
    return found


def _ignore_patterns(root: Path) -> list[str]:
    path = root / ".gitignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "!"))]


def git_ignored(relative: str, patterns: list[str]) -> bool:
    """True when ``relative`` or a folder above it matches a ``.gitignore`` pattern (the subset the project uses)."""
    parts = relative.strip("/").split("/")
    for pattern in patterns:
        anchored = pattern.startswith("/") or "/" in pattern.rstrip("/")
        bare = pattern.strip("/")
        for depth in range(1, len(parts) + 1):
            if anchored:
                if fnmatch.fnmatchcase("/".join(parts[:depth]), bare):
                    return True
            elif fnmatch.fnmatchcase(parts[depth - 1], bare):
                return True
    return False


def path_exists(token: str, root: Path, patterns: list[str]) -> bool:
    """Does a path as a doc writes it exist?  Globs must match; ``<placeholder>`` is one component."""
    path = re.sub(r"(::\S*|:\d+(-\d+)?)$", "", token).rstrip(".,;:)")
    pattern = _PLACEHOLDER.sub("*", path).rstrip("/")
    if git_ignored(pattern, patterns):
        return True
    if any(c in pattern for c in "*?["):
        return bool(glob.glob(str(root / pattern)))
    return (root / pattern).exists()


def dotted_exists(name: str, root: Path) -> bool:
    """``pkg.module.attr``: the longest prefix that is a module, and the next name defined in it."""
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:length])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            rest = parts[length:]
            return not rest or re.search(rf"\b{re.escape(rest[0])}\b", source.read_text()) is not None
    return False


def problems_in(path: Path, root: Path = ROOT) -> list[str]:
    """Every dead reference in one Markdown file, as ``file:line: what``."""
    root, path = root.resolve(), path.resolve()
    patterns = _ignore_patterns(root)
    where = path.relative_to(root)
    found: list[str] = []
    for number, line, fenced in lines_of(path.read_text()):
        if not fenced:
            targets = [m.group(1) for m in _LINK.finditer(line)]
            reference = _REFERENCE.match(line)
            if reference:
                targets.append(reference.group(1))
            for target in targets:
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, fragment = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                if root not in linked.parents and linked != root:
                    found.append(f"{where}:{number}: link outside the repository: {target}")
                elif not linked.exists():
                    found.append(f"{where}:{number}: link to a missing file: {target}")
                elif fragment and linked.suffix == ".md" and fragment not in anchors_of(linked):
                    found.append(f"{where}:{number}: no heading for #{fragment} in {linked.relative_to(root)}")
        spans = [line] if fenced else [m.group(2) for m in _INLINE_CODE.finditer(line)]
        for span in spans:
            for word in span.split():
                word = word.strip("\"'(),;")
                if word.startswith(OUTSIDE) and not fenced:
                    found.append(f"{where}:{number}: path outside the repository: {word}")
                elif word.startswith(PROJECT_FOLDERS) and not path_exists(word, root, patterns):
                    found.append(f"{where}:{number}: no such path: {word}")
            dotted = _DOTTED.match(span.strip())
            if dotted and not fenced and not dotted_exists(dotted.group(0), root):
                found.append(f"{where}:{number}: no such module or name: {dotted.group(0)}")
    return found


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_references_exist(doc: Path) -> None:
    problems = problems_in(doc)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_each_kind_of_dead_reference(tmp_path: Path) -> None:
    (tmp_path / "dicom_node" / "receive").mkdir(parents=True)
    (tmp_path / "dicom_node" / "__init__.py").write_text("")
    (tmp_path / "dicom_node" / "receive" / "__init__.py").write_text("from .scp import Receiver\n")
    (tmp_path / "dicom_node" / "receive" / "scp.py").write_text("class Receiver: ...\n")
    (tmp_path / ".gitignore").write_text("tests/viewer/.ohif/\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section: the end\n")
    doc = tmp_path / "docs" / "page.md"
    doc.write_text(
        "# Page\n"
        "[ok](other.md#a-section-the-end) [gone](missing.md) [bad anchor](other.md#nothing) [here](#page)\n"
        "`dicom_node/receive/scp.py` `dicom_node/receiver.py` `dicom_node/*/scp.py` `dicom_node/<stage>/scp.py`\n"
        "`dicom_node/receive/*.toml` `tests/viewer/.ohif/app.tgz` `../shared/NOTES.md`\n"
        "`dicom_node.receive.scp.Receiver` `dicom_node.receive.Receiver` `dicom_node.receiver` `dicom_node.receive.scp.Nope`\n"
        "[up](../../elsewhere.md)\n"
        "```\n.venv/bin/python dicom_node/receive/gone.py\n```\n"
    )
    assert problems_in(doc, tmp_path) == [
        "docs/page.md:2: link to a missing file: missing.md",
        "docs/page.md:2: no heading for #nothing in docs/other.md",
        "docs/page.md:3: no such path: dicom_node/receiver.py",
        "docs/page.md:4: no such path: dicom_node/receive/*.toml",
        "docs/page.md:4: path outside the repository: ../shared/NOTES.md",
        "docs/page.md:5: no such module or name: dicom_node.receiver",
        "docs/page.md:5: no such module or name: dicom_node.receive.scp.Nope",
        "docs/page.md:6: link outside the repository: ../../elsewhere.md",
        "docs/page.md:8: no such path: dicom_node/receive/gone.py",
    ]


def stages_in(architecture: str) -> list[tuple[str, ...]]:
    """The packages of each numbered row of the import-rule table, as module names."""
    section = architecture.split("## Packages and the import rule", 1)[1].split("\n## ", 1)[0]
    stages = []
    for line in section.splitlines():
        row = re.match(r"^\|\s*\d+\s*\|([^|]*)\|", line)
        if row:
            names = [name.strip("/").replace("/", ".") for name in re.findall(r"`([^`]+)`", row.group(1))]
            stages.append(tuple(n if n.split(".")[0] == "dicom_node" else f"dicom_node.{n}" for n in names))
    return stages


def test_architecture_doc_lists_the_stages_of_the_test_in_order() -> None:
    documented = stages_in((ROOT / "docs" / "architecture.md").read_text())
    assert [sorted(s) for s in documented] == [sorted(s) for s in STAGES]


def test_stages_in_reads_the_table() -> None:
    text = "## Packages and the import rule\n| # | package |\n|---|---|\n| 0 | the package `dicom_node` and `clock` |\n| 1 | `dicom_node/db/` |\n\n## Next\n| 2 | `x` |\n"
    assert stages_in(text) == [("dicom_node", "dicom_node.clock"), ("dicom_node.db",)]


def test_architecture_diagram_names_existing_modules() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {m for _, line, fenced in lines_of(text) if fenced for m in re.findall(r"\b[a-z_]+/[a-z_]+\.py\b", line)}
    assert len(named) > 15, named  # the diagram is there and this pattern finds its modules
    missing = sorted(m for m in named if not (ROOT / "dicom_node" / m).is_file())
    assert not missing, missing
