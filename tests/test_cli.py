"""The `unetgraph` command: the demo (the main job, end to end) and check/draw/eject on saved graphs."""

import subprocess
import sys
from pathlib import Path

import unetgraph as ug
from unetgraph.cli import main

EXE = str(Path(sys.executable).parent / "unetgraph")


def test_demo_runs_every_step_and_writes_its_files(tmp_path, capsys):
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
    for step in [
        "1. built",
        "2. checked",
        "3. drawn",
        "4. lowered",
        "5. ran",
        "6. optimized",
        "7. compiled",
        "8. timed",
        "9. exported",
    ]:
        assert step in out, step
    assert "real shapes equal the checker's at all 13 nodes" in out
    assert "fold_batchnorm 10" in out
    assert (tmp_path / "report.txt").read_text().startswith("UNet:")
    assert "def forward(self, x)" in (tmp_path / "forward.py").read_text()
    assert (tmp_path / "unet.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert ug.load(tmp_path / "unet.yaml") == ug.unet(3, 2, widths=(4, 8, 16))
    assert "unetgraph" not in (tmp_path / "unet_ejected.py").read_text()
    assert ug.load_exported(tmp_path / "unet.pt2").graph == ug.unet(3, 2, widths=(4, 8, 16))


def test_console_script_reports_typed_errors(tmp_path):
    res = subprocess.run(
        [EXE, "demo", "--size", "31", "--widths", "4", "8", "--no-compile", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.startswith(
        "unetgraph: ShapeError: merge0 (concat) receives 30×30 from up0 but 31×31 from skip "
        "enc0→merge0: input height 31 is not a multiple of 2"
    )


def test_check_draw_eject_on_a_saved_graph(tmp_path):
    g = ug.unet(1, 2, widths=(4, 8))
    spec = g.save(tmp_path / "net.yaml")
    res = subprocess.run([EXE, "check", str(spec), "--shape", "1,1,12,12", "--cost"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "UNet: x (1, 1, 12, 12) → head (1, 2, 12, 12)" in res.stdout and "FLOPs" in res.stdout
    assert main(["draw", str(spec), "-o", str(tmp_path / "net.dot"), "--detail", "levels"]) == 0
    assert (tmp_path / "net.dot").read_text().startswith("digraph")
    assert main(["eject", str(spec), "-o", str(tmp_path / "net.py")]) == 0
    assert "class UNet(nn.Module):" in (tmp_path / "net.py").read_text()


def test_presets_by_name_and_errors(capsys):
    assert main(["check", "preset:ddpm_unet"]) == 0
    assert "t (1,)" in capsys.readouterr().out
    assert main(["check", "preset:no_such"]) == 2
    assert "unknown preset 'no_such'" in capsys.readouterr().err
