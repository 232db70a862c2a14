"""Every notebook runs from a fresh kernel, matches its percent-format source, carries outputs,
and still shows what its saved outputs show (so a notebook on GitHub never tells a stale story)."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "scripts" / "notebooks.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

SOURCES = sorted((ROOT / "notebooks").glob("*.py"))

# What may differ between two runs of the same notebook: object addresses, and floats (timings,
# losses, float32 rounding). Integers (shapes, parameter counts, sizes) and words must not.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")


def normalise(text: str) -> str:
    """``text`` with addresses and floats replaced by placeholders and white space folded."""
    return " ".join(_FLOAT.sub("<float>", _ADDRESS.sub("0x…", text)).split())


def shown(cell: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What a code cell shows, comparably: per output its kind and normalised text (images by their type only)."""
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append((o.name, normalise(o.text)))
        elif o.output_type == "error":
            out.append(("error", f"{o.ename}: {normalise(o.evalue)}"))
        else:
            data = o.get("data", {})
            text = data.get("text/plain", "")
            out.append((",".join(sorted(data)), normalise(text if isinstance(text, str) else "".join(text))))
    return out


def _merged_streams(cell: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """Consecutive prints joined (how they split into outputs depends on timing); stderr left out
    (torch's warnings and progress lines depend on the machine, not on the notebook)."""
    merged: list[tuple[str, str]] = []
    for kind, text in shown(cell):
        if kind == "stderr":
            continue
        if merged and kind == "stdout" and merged[-1][0] == kind:
            merged[-1] = (kind, f"{merged[-1][1]} {text}".strip())
        else:
            merged.append((kind, text))
    return merged


def test_normalise_keeps_integers_and_words():
    assert (
        normalise("eager 78.4 ms, 1.2e-08 at 0x7f3a; 31,030,658 params")
        == "eager <float> ms, <float> at 0x…; 31,030,658 params"
    )
    assert normalise("(1, 2, 388, 388)") == "(1, 2, 388, 388)"
    assert normalise("loss 0.780") != normalise("loss 780")


def test_there_are_notebooks():
    assert SOURCES


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_and_matches_its_source(src, tmp_path):
    saved = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    expected = [(c.cell_type, c.source) for c in tool.notebook_from_source(src).cells]
    assert [(c.cell_type, c.source) for c in saved.cells] == expected, "run scripts/notebooks.py to rebuild"
    assert any(c.get("outputs") for c in saved.cells if c.cell_type == "code"), "saved without outputs"
    nb = tool.notebook_from_source(src)
    tool.execute(nb, tmp_path)  # raises CellExecutionError on any failing cell
    for i, (old, new) in enumerate(zip(saved.cells, nb.cells)):
        if new.cell_type == "code":
            assert _merged_streams(new) == _merged_streams(old), (
                f"{src.name} cell {i} shows something else than its saved output: rebuild with scripts/notebooks.py\n"
                f"saved: {_merged_streams(old)}\nnow:   {_merged_streams(new)}"
            )
