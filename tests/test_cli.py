"""The `unetgraph demo` command: the main job, end to end."""

import subprocess
import sys
from pathlib import Path

from unetgraph.cli import main


def test_demo_runs_and_reports(tmp_path, capsys):
    rc = main(
        [
            "demo",
            "--size",
            "32",
            "--widths",
            "4",
            "8",
            "16",
            "--backend",
            "eager",
            "--repeat",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for step in ["1. built", "2. checked", "3. lowered", "4. ran", "5. compiled", "6. timed"]:
        assert step in out
    assert "real shapes equal the checker's at all 13 nodes" in out
    assert (tmp_path / "report.txt").read_text().startswith("UNet:")
    assert "def forward(self, x)" in (tmp_path / "forward.py").read_text()


def test_console_script_reports_typed_errors(tmp_path):
    exe = [
        str(Path(sys.executable).parent / "unetgraph"),
        "demo",
        "--size",
        "31",
        "--widths",
        "4",
        "8",
        "--no-compile",
        "--out",
        str(tmp_path),
    ]
    res = subprocess.run(exe, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith(
        "unetgraph: ShapeError: merge0 (concat) receives 30×30 from up0 but 31×31 from skip "
        "enc0→merge0: input height 31 is not a multiple of 2"
    )
