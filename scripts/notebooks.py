"""Build the notebooks from their percent-format sources and run them, saving outputs.

    .venv/bin/python scripts/notebooks.py            # every notebooks/*.py
    .venv/bin/python scripts/notebooks.py editing    # one, by name

A source ``notebooks/NAME.py`` has cells separated by ``# %%`` lines (``# %% [markdown]``
for text, whose lines start with ``# ``). The result ``notebooks/NAME.ipynb`` carries its
outputs so it reads on GitHub; tests/test_notebooks.py runs each one again and checks
that it matches its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def cells_from_source(text: str) -> list[nbformat.NotebookNode]:
    cells = []
    for chunk in text.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if header.strip() == "[markdown]":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    return cells


def notebook_from_source(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells_from_source(path.read_text(encoding="utf-8")))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def main(names: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from unetgraph.files import write_atomic

    sources = [NOTEBOOKS / f"{n}.py" for n in names] if names else sorted(NOTEBOOKS.glob("*.py"))
    for src in sources:
        nb = execute(notebook_from_source(src), NOTEBOOKS)
        write_atomic(src.with_suffix(".ipynb"), nbformat.writes(nb) + "\n")
        print(f"wrote {src.with_suffix('.ipynb').relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
