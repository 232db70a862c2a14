"""The `unetgraph` command: the demo (the main job, end to end) and check/draw/eject on saved graphs."""

import re
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


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines()


def test_bad_arguments_of_every_subcommand_print_one_line_and_exit_2(tmp_path, capsys):
    spec = str(ug.unet(1, 2, widths=(4, 8)).save(tmp_path / "net.yaml"))
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    (tmp_path / "a_file").write_text("x")
    blocked = str(tmp_path / "a_file" / "out")  # a file where a folder should be: unwritable even as root
    cases = {
        ("check", str(tmp_path / "missing.yaml")): "FileError: .*missing.yaml: cannot read: No such file",
        ("check", str(tmp_path / "bad.yaml")): "SpecError: bad.yaml: not UTF-8 text",
        ("check", spec, "--shape", "1,x,8,8"): "SpecError: --shape: expected positive integers separated by commas",
        ("check", spec, "--shape", ""): "SpecError: --shape: expected positive integers",
        ("check", spec, "--shape", "1,1,0,8"): "SpecError: --shape: expected positive integers",
        ("check", spec, "--shape", "1,1,7,7"): "ShapeError: merge0 \\(concat\\) receives 6×6",
        ("check", "preset:ddpm_unet", "--shape", "1,3"): "SpecError: --shape: DDPM32's input x takes \\(N, 3, H, W\\)",
        ("check", "preset:nope"): "SpecError: unknown preset 'nope'",
        ("draw", spec, "-o", blocked + ".svg"): "FileError: .*out.svg: cannot write: .*is a file, not a folder",
        ("draw", spec, "-o", str(tmp_path / "net.txt")): "RenderError: save_figure: cannot tell the format",
        ("draw", spec, "--shape", "big"): "SpecError: --shape",
        ("eject", spec, "-o", blocked + ".py"): "FileError: .*out.py: cannot write",
        ("eject", spec, "-o", str(tmp_path)): "FileError: .*: cannot write: it is a folder",
        ("eject", str(tmp_path / "missing.json")): "FileError: .*missing.json: cannot read",
        ("demo", "--out", blocked, "--no-compile", "--widths", "4", "8", "--size", "16"): "FileError: .*cannot write",
    }
    for argv, message in cases.items():
        rc, lines = _run(list(argv), capsys)
        assert rc == 2 and len(lines) == 1, (argv, rc, lines)
        assert re.match("unetgraph: " + message, lines[0]), (argv, lines)
    for argv in (
        ["demo", "--size", "0"],
        ["demo", "--repeat", "-1"],
        ["demo", "--widths", "x"],
        ["draw", spec, "--detail", "x"],
    ):
        rc, lines = _run(argv, capsys)  # argparse: its usage, then one error line
        assert rc == 2 and re.match(r"unetgraph \w+: error: argument ", lines[-1]), (argv, lines)


def test_console_script_reports_a_missing_file_without_a_traceback(tmp_path):
    res = subprocess.run([EXE, "check", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr == f"unetgraph: FileError: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"


def test_an_output_that_is_the_input_document_is_refused(tmp_path, capsys):
    g = ug.unet(1, 2, widths=(4, 8))
    spec = g.save(tmp_path / "net.yaml")
    doc = g.save(tmp_path / "net.json")
    (tmp_path / "link.yaml").symlink_to(spec)  # the same file by another path
    for argv in (
        ["eject", str(spec), "-o", str(spec)],
        ["eject", str(spec), "-o", str(tmp_path / "link.yaml")],
        ["draw", str(doc), "-o", str(doc)],
        ["draw", str(tmp_path / "link.yaml"), "-o", str(tmp_path / "." / "net.yaml")],
    ):
        rc, lines = _run(argv, capsys)
        assert rc == 2 and len(lines) == 1, (argv, lines)
        assert re.match(r"unetgraph: FileError: .*: the output is the input document", lines[0]), lines
    assert ug.load(spec) == g and ug.load(doc) == g


def test_presets_that_need_arguments_or_build_no_graph_are_refused_in_one_line(capsys):
    rc, lines = _run(["check", "preset:nnunet_plain"], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("unetgraph: SpecError: preset 'nnunet_plain' needs arguments")
    rc, lines = _run(["draw", "preset:smp_state_dict"], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("unetgraph: SpecError: 'smp_state_dict' is a helper of unetgraph.presets, not a graph")
    listed = lines[0].split("presets: ")[1].split(", ")
    assert "classic_unet" in listed and "nnunet_plain" not in listed and "smp_state_dict" not in listed


def test_shape_with_unicode_digits_or_wrong_channels_for_a_graph_of_several_inputs(capsys):
    rc, lines = _run(["check", "preset:classic_unet", "--shape", "1,1,²,8"], capsys)
    assert rc == 2 and lines == [
        "unetgraph: SpecError: --shape: expected positive integers separated by commas, like 1,3,256,256; got '1,1,²,8'"
    ]
    rc, lines = _run(["check", "preset:ddpm_unet", "--shape", "1,5,32,32"], capsys)  # inputs x and t
    assert rc == 2 and lines == [
        "unetgraph: ShapeError: --shape: input x expects 3 channels (N, 3, H, W), got 5 in shape (1, 5, 32, 32)"
    ]


def test_demo_refuses_a_huge_size_or_batch_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "d"
    for extra in (["--size", "999999998"], ["--size", "8", "--batch", "999999999"], ["--widths", "99999999"]):
        rc, lines = _run(["demo", "--no-compile", "--repeat", "1", "--out", str(out), *extra], capsys)
        assert rc == 2 and len(lines) == 1, (extra, lines)
        assert re.match(r"unetgraph: SpecError: --(size|widths):? .*over the demo's limit", lines[0]), lines
    assert not out.exists()


def test_a_reader_that_goes_away_ends_the_command_quietly():
    proc = subprocess.Popen(
        [EXE, "check", "preset:ddpm_unet", "--cost"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # as `| head -c 10` does, before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert err == ""
