"""The documentation runs: every Python block in README.md and docs/*.md, and every ``>>>`` transcript.

Rules a document follows so that it can be checked:

- A fenced ``python`` block runs, in order, in one namespace per document (later blocks may use
  what earlier ones defined), in a temporary working folder.
- A block that cannot run as written (it needs a GPU, a file from the reader, or minutes) is
  marked on the line before its fence with ``<!-- not run: the reason -->``; the test checks that
  the reason is given and that the block still parses as Python.
- A fenced ``text`` block whose first line starts with ``>>> `` is a transcript: each ``>>> ``
  statement runs in the document's namespace and must print what follows it (an exception as
  ``Type: message``), compared with white space folded (``...`` stands for any text, as
  doctest's ELLIPSIS), so that a quoted message cannot drift from what the library says.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import sys
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->\s*$")


class Block(NamedTuple):
    language: str
    line: int  # 1-based line of the opening fence
    code: str
    not_run: str | None  # the reason given, when marked


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown document."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        marker = _NOT_RUN.match(lines[start - 1]) if start else None
        out.append(Block(m[1], start + 1, "\n".join(lines[start + 1 : j]), marker[1] if marker else None))
        i = j + 1
    return out


def _fold(text: str) -> str:
    return " ".join(text.split())


def _matches(got: str, expected: str) -> bool:
    """``got`` equals ``expected`` with white space folded, ``...`` in ``expected`` matching any text."""
    pattern = ".*".join(re.escape(part) for part in _fold(expected).split("..."))
    return re.fullmatch(pattern, _fold(got), flags=re.DOTALL) is not None


def _statements(transcript: str) -> list[tuple[str, str]]:
    """``(statement, expected output)`` pairs of a ``>>>`` transcript (``...`` continues a statement)."""
    pairs: list[tuple[str, list[str], list[str]]] = []
    for line in transcript.splitlines():
        if line.startswith(">>> "):
            pairs.append((line[4:], [], []))
        elif line.startswith("... ") and pairs and not pairs[-1][2]:
            pairs[-1][1].append(line[4:])
        elif pairs:
            pairs[-1][2].append(line)
    return [("\n".join([s, *more]), "\n".join(out)) for s, more, out in pairs]


def _run_statement(source: str, namespace: dict) -> str:
    """What the interpreter would show for ``source``: printed text, the value's repr, or ``Type: message``."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            tree = ast.parse(source, mode="single")
            exec(compile(tree, "<transcript>", "single"), namespace)
    except Exception as e:  # the transcript shows the error
        return buffer.getvalue() + f"{type(e).__name__}: {e}"
    return buffer.getvalue()


def _cases() -> list[Path]:
    return [p for p in DOCUMENTS if any(b.language in ("python", "text") for b in blocks(p))]


@pytest.mark.parametrize("path", _cases(), ids=lambda p: str(p.relative_to(ROOT)))
def test_document_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"doc_{path.stem.lower()}")  # a real module: dataclasses look their class up in it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    ran = 0
    for block in blocks(path):
        where = f"{path.relative_to(ROOT)}:{block.line}"
        if block.language == "python":
            if block.not_run is not None:
                assert block.not_run, f"{where}: say why the block does not run"
                ast.parse(block.code, filename=where)
                continue
            try:
                exec(compile(block.code, where, "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{where}: the block fails: {type(e).__name__}: {e}") from e
            ran += 1
        elif block.language == "text" and block.code.startswith(">>> "):
            for statement, expected in _statements(block.code):
                got = _run_statement(statement, namespace)
                assert _matches(got, expected), f"{where}: `{statement}` shows\n{got}\nnot\n{expected}"
            ran += 1
    assert ran or path.name != "README.md", "the README's examples should run"


def test_markers_sit_on_python_blocks() -> None:
    """A ``not run`` marker is meant for the Python block right under it; anywhere else it hides nothing."""
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if _NOT_RUN.match(line):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                assert following.strip() == "```python", f"{path.name}:{i + 1}: marker not above a python block"


def test_environment_is_left_alone() -> None:
    """Running the documents must not leave the test process in another folder."""
    assert Path(os.getcwd()).exists()
