"""Running graphviz's ``dot``: SVG/PNG/PDF/JSON from DOT text, figures written atomically.

DOT text needs nothing installed; everything here needs the ``dot`` program and says how to
install it when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import RenderError
from ..files import write_atomic

__all__ = ["INSTALL_DOT", "INSTALL_PY", "FORMATS", "find_dot", "run_dot", "write_figure"]

INSTALL_DOT = (
    "install graphviz, which provides it: `apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or see "
    "https://graphviz.org/download/; DOT text needs no install (g.to_dot(), or save_figure('unet.dot'))"
)
INSTALL_PY = "pip install 'unetgraph[graphviz]'"

#: file suffix → dot output format (``None``: the DOT text itself)
FORMATS: dict[str, str | None] = {
    ".svg": "svg",
    ".png": "png",
    ".pdf": "pdf",
    ".json": "json",
    ".dot": None,
    ".gv": None,
}


def find_dot() -> str:
    """The path of the ``dot`` program on ``PATH``.

    Raises:
        RenderError: ``dot`` is not installed; the message says how to install it.
    """
    path = shutil.which("dot")
    if path is None:
        raise RenderError(f"graphviz's `dot` program is not on PATH; {INSTALL_DOT}")
    return path


def run_dot(source: str, fmt: str, *, dpi: int | None = None, timeout: float | None = 120) -> bytes:
    """``dot -T<fmt>`` on ``source``; returns its output.

    Raises:
        RenderError: ``dot`` is missing, fails, or runs past ``timeout`` seconds.
    """
    cmd = [find_dot(), f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if dpi else [])
    try:
        done = subprocess.run(cmd, input=source.encode("utf-8"), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RenderError(f"`dot -T{fmt}` took more than {timeout} s; try detail='levels' for a large graph") from None
    if done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"`dot -T{fmt}` failed (exit {done.returncode}): {msg}")
    return done.stdout


def write_figure(source: str, path: str | os.PathLike[str], *, dpi: int | None = None) -> Path:
    """Write ``source`` to ``path`` as the format its suffix names (.svg, .png, .pdf, .json, .dot, .gv),
    atomically: the file appears whole or not at all.

    Raises:
        RenderError: an unknown suffix, or ``dot`` is missing for anything but .dot/.gv.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise RenderError(f"save_figure: cannot tell the format of {str(path)!r}; use one of {', '.join(FORMATS)}")
    fmt = FORMATS[suffix]
    data: str | bytes = source if fmt is None else run_dot(source, fmt, dpi=dpi)
    return write_atomic(path, data)
