"""The repository documents itself: no file points at documents outside it, and every link
into `docs/*.md` lands on a file that exists and, with an anchor, on one of its headings.

Outside documents are the project's former shared notes (the methods, architecture and
dataset notes and the papers' seed files). In Python-like files (`.py`, `.smk`, `Snakefile`)
only comments and strings are read, so that code names such as `SEARCH_METHODS` or a
`DATASETS` variable are not mistaken for references.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# What is scanned: the brief's trees, plus the tests (this file excepted).
TREES = ("src", "workflow", "config", "docs", "bench", "experiments", "profiles", "envs", "tests")
TOP_FILES = ("README.md", "Snakefile", "pyproject.toml")
SELF = Path(__file__).resolve()
TEXT_SUFFIXES = {".py", ".smk", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".json"}
PYTHON_LIKE = {".py", ".smk"}
SKIP_DIRS = {"__pycache__", ".snakemake", ".pytest_cache", ".venv", "venv", "results", "resources", "logs",
             "benchmarks"}

_OUTSIDE_NAMES = r"(?:METHODS|ARCHITECTURE|DATASETS)"
# Anywhere, code included: a file name of the former notes, or a path into them.
HARD_PATTERNS = (
    re.compile(rf"(?<![\w/]){_OUTSIDE_NAMES}\.md\b"),
    re.compile(r"\.\./shared\b"),
    re.compile(r"\bshared/(?:seeds|METHODS|ARCHITECTURE|DATASETS)"),
)
# In prose, comments and strings only: the notes by bare name ("METHODS §4", "the papers or
# METHODS") and the papers by seed-file number ("seed 004", "seeds 000/001").
PROSE_PATTERNS = (
    re.compile(rf"(?<![\w./#-]){_OUTSIDE_NAMES}(?![\w.-])"),
    re.compile(r"\bseeds? 00\d(?:/00\d)*\b"),
    re.compile(r"\bshared notes\b"),
)
# A section sign must name its paper ("IAC-LTH §5.3", "[LUnet] §II-D"), continue a list of
# sections ("§3.1-§3.4", "§4.1, §6.3") or follow "Cited:"; a bare "§4" meant the old notes.
SECTION = re.compile(r"§\s?[\dIVX]")
SECTION_OWNER = re.compile(r"(?:(?:XTinyU-Net|IAC-LTH|IAC|LUnet|nnU-Net|DARTS|PC-DARTS|Single-DARTS)\]?"
                           r"|§[\w.-]+\s*(?:-|,|and)|Cited:)$")


def bare_section_reference(text: str) -> bool:
    return any(not SECTION_OWNER.search(text[:m.start()].rstrip()) for m in SECTION.finditer(text))


# Markdown link targets into docs: `docs/NAME.md#anchor` anywhere, `NAME.md#anchor` relative
# to a file inside docs/. The anchor is optional.
DOCS_LINK = re.compile(r"(?<![\w./-])docs/([\w-]+\.md)(?:#([\w-]+))?")
RELATIVE_LINK = re.compile(r"(?<![\w./-])([\w-]+\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for tree in TREES:
        base = ROOT / tree
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            parts = path.relative_to(ROOT).parts
            if any(p in SKIP_DIRS or p.endswith(".egg-info") or (p.startswith(".") and p != ".") for p in parts[:-1]):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.resolve() != SELF:
                files.append(path)
    return files


def _strip_fstring_fields(text: str) -> str:
    """Python 3.11 tokenises an f-string as one STRING: drop its `{...}` fields (code, not prose)."""
    previous = None
    while previous != text:
        previous, text = text, re.sub(r"\{[^{}]*\}", "", text)
    return text


def prose_of_python(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every comment and string literal (raises if `text` does not tokenise)."""
    pieces: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            pieces.append((token.start[0], token.string))
        elif token.type == tokenize.STRING or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            string = token.string
            if token.type == tokenize.STRING and "f" in re.match(r"^[A-Za-z]*", string).group(0).lower():
                string = _strip_fstring_fields(string)
            for offset, line in enumerate(string.splitlines()):
                pieces.append((token.start[0] + offset, line))
    return pieces


def find_outside_references(text: str, python_like: bool) -> list[tuple[int, str]]:
    """(line number, line) of every reference to an outside document in `text`."""
    lines = text.splitlines()
    found = [(number, line) for number, line in enumerate(lines, start=1)
             if any(p.search(line) for p in HARD_PATTERNS)]
    prose = list(enumerate(lines, start=1))
    if python_like:
        try:
            prose = prose_of_python(text)
        except (tokenize.TokenError, SyntaxError):
            pass  # cannot separate code from prose: read every line as prose
    found += [(number, lines[number - 1] if number <= len(lines) else piece) for number, piece in prose
              if any(p.search(piece) for p in PROSE_PATTERNS) or bare_section_reference(piece)]
    return sorted(dict(found).items())


def outside_references(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    python_like = path.suffix in PYTHON_LIKE or path.name == "Snakefile"
    return [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for number, line in find_outside_references(text, python_like)]


def github_anchor(heading: str) -> str:
    """GitHub's heading id: markup dropped, lower case, punctuation removed except '-' and '_',
    each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(markdown: Path) -> set[str]:
    """Every heading id of a Markdown file, duplicates numbered as GitHub numbers them."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            base = github_anchor(match.group(2))
            n = counts.get(base, 0)
            anchors.add(base if n == 0 else f"{base}-{n}")
            counts[base] = n + 1
    return anchors


def docs_links() -> list[tuple[str, str, str | None]]:
    """(where, docs file name, anchor or None) of every link into docs/ in the scanned files."""
    links = []
    for path in scanned_files():
        in_docs = path.parent == DOCS
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            where = f"{path.relative_to(ROOT)}:{number}"
            matches = list(DOCS_LINK.finditer(line))
            if in_docs:
                spans = [m.span() for m in matches]
                matches += [m for m in RELATIVE_LINK.finditer(line)
                            if not any(s <= m.start() < e for s, e in spans)]
            links += [(where, m.group(1), m.group(2)) for m in matches]
    return links


def test_the_scan_sees_the_repository():
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert {"README.md", "docs/methods.md", "docs/datasets.md", "config/config.yaml"} <= names
    assert any(n.startswith("src/unetscout/") and n.endswith(".py") for n in names)
    assert any(n.startswith("workflow/rules/") and n.endswith(".smk") for n in names)


@pytest.mark.parametrize("line, python_like, expected", [
    ("see METHODS.md for the formulas", False, True),
    ("# search settings of METHODS §4", True, True),
    ("the papers are in ../shared/seeds/", False, True),
    ("# XTinyU-Net (seeds 000/001) on the datasets", False, True),
    ('"""The §4 defaults with overrides applied."""', True, True),
    ("from unetscout.names import SEARCH_METHODS, CELL_METHODS", True, False),
    ("DATASETS = _dataset_entries(config['datasets'])", True, False),
    ("settings of docs/methods.md#implantable-adaptive-cells", False, False),
    ("cap ([IAC-LTH] §3.2); importance (IAC-LTH §4.2, §5.2); Cited: §3.1-§3.4", False, False),
])
def test_outside_reference_patterns(line, python_like, expected):
    assert bool(find_outside_references(line + "\n", python_like)) is expected


def test_python_code_names_are_not_references():
    source = ("from unetscout.names import CELL_METHODS as METHODS\n"
              "if method not in METHODS:\n"
              "    raise ValueError(f\"choose one of {', '.join(METHODS)}\")\n"
              "# but this comment cites METHODS §4\n")
    assert [number for number, _ in find_outside_references(source, python_like=True)] == [4]


def test_no_references_to_documents_outside_the_repository():
    found = [hit for path in scanned_files() for hit in outside_references(path)]
    assert not found, ("references to documents outside the repository (point them to "
                       "docs/methods.md#... or docs/datasets.md instead):\n" + "\n".join(found))


@pytest.mark.parametrize("heading, anchor", [
    ("Plain and capped U-Net", "plain-and-capped-u-net"),
    ("IAC-LTH search", "iac-lth-search"),
    ("Epochs, validation and checkpoints", "epochs-validation-and-checkpoints"),
    ("Fisher's method", "fishers-method"),
    ("The `paper` preset", "the-paper-preset"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_links_into_docs_resolve():
    problems = []
    cache: dict[str, set[str] | None] = {}
    for where, name, anchor in docs_links():
        if name not in cache:
            cache[name] = anchors_of(DOCS / name) if (DOCS / name).is_file() else None
        anchors = cache[name]
        if anchors is None:
            problems.append(f"{where}: docs/{name} does not exist")
        elif anchor is not None and anchor not in anchors:
            problems.append(f"{where}: docs/{name}#{anchor} is not a heading of docs/{name}")
    assert not problems, "broken links into docs/:\n" + "\n".join(problems)
