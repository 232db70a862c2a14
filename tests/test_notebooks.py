"""Every notebook runs from a fresh kernel, matches its percent-format source, and carries outputs."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("notebooks_tool", ROOT / "scripts" / "notebooks.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

SOURCES = sorted((ROOT / "notebooks").glob("*.py"))


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
