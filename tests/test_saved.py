"""Saved models (unetgraph/saved.py): bit-equal round trips, typed errors for every damaged folder,
atomic writes, no pickle, and resuming training from torch's weights_only checkpoints."""

import copy
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from deploy_helpers import small_diffusion
from safetensors.torch import load_file, save_file

import unetgraph as ug

ROOT = Path(__file__).resolve().parents[1]


def seg_graph(norm="group"):
    return ug.unet(1, 2, widths=(8, 16), block=ug.ConvBlock(norm=norm, groups=4))


def trained(gm, *inputs, steps=1):
    """A module whose weights and statistics are no longer their initial values."""
    opt = torch.optim.Adam(gm.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        gm(*inputs).square().mean().backward()
        opt.step()
    return gm


def outputs(gm, *inputs):
    with torch.no_grad():
        return gm.eval()(*inputs)


@pytest.mark.parametrize("case", ["group_pad_auto", "batchnorm", "diffusion", "checkpointed", "bfloat16"])
def test_round_trip_reproduces_outputs_bit_for_bit(case, tmp_path):
    if case == "diffusion":
        g = small_diffusion()
        inputs = tuple(ug.example_inputs(g, batch=2, size=(16, 16)).values())
        gm = g.lower()
    else:
        g = seg_graph("batch" if case == "batchnorm" else "group")
        inputs = (torch.randn(2, 1, 30, 30) if case == "group_pad_auto" else torch.randn(2, 1, 32, 32),)
        options = {"group_pad_auto": dict(pad="auto", pad_mode="reflect"), "checkpointed": dict(checkpoint=[0, "head"])}
        gm = g.lower(**options.get(case, {}), dtype=torch.bfloat16 if case == "bfloat16" else None)
        if case == "bfloat16":
            inputs = (inputs[0].bfloat16(),)
    trained(gm, *inputs)
    folder = ug.save_model(gm, tmp_path / "model")
    back = ug.load_model(folder)
    assert list(back.state_dict()) == list(gm.state_dict())
    for k, v in gm.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]) and v.dtype == back.state_dict()[k].dtype, k
    assert torch.equal(outputs(back, *inputs), outputs(gm, *inputs))
    want, got = ug.lowered_record(gm), ug.lowered_record(back)
    assert (got.graph, got.pad, got.pad_mode, got.guard, got.checkpoint) == (
        want.graph,
        want.pad,
        want.pad_mode,
        want.guard,
        want.checkpoint,
    )
    assert json.loads((folder / "config.json").read_text()) == g.to_dict()  # the plain graph document
    meta = json.loads((folder / "unetgraph.json").read_text())
    assert meta["dtype"] == ("bfloat16" if case == "bfloat16" else "float32")
    assert sorted(load_file(folder / "model.safetensors")) == sorted(gm.state_dict())


def test_save_a_graph_with_weights_and_wrapped_modules(tmp_path):
    g = seg_graph()
    gm = g.lower()
    ug.save_model(g, tmp_path / "a", weights=gm.state_dict())
    ug.save_model(torch.compile(gm), tmp_path / "b")  # torch.compile's wrapper: the module inside
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(outputs(ug.load_model(tmp_path / "a"), x), outputs(ug.load_model(tmp_path / "b"), x))
    with pytest.raises(ug.SavedModelError, match="needs its weights"):
        ug.save_model(g, tmp_path / "c")
    with pytest.raises(ug.SavedModelError, match=r"expected a module made by unetgraph\.lower"):
        ug.save_model(torch.nn.Linear(2, 2), tmp_path / "d")
    with pytest.raises(ug.SavedModelError, match=r"enc0\.conv0\.weight is missing"):
        ug.save_model(g, tmp_path / "e", weights={})


def test_optimized_modules_are_refused_with_a_way_out(tmp_path):
    gm = seg_graph("batch").lower()
    fast, _ = ug.optimize(gm)
    with pytest.raises(ug.SavedModelError, match=r"optimize.*load_model") as err:
        ug.save_model(fast, tmp_path / "m")
    assert err.value.node == "enc0"
    low, _ = ug.optimize(seg_graph().lower(), dtype=torch.bfloat16, channels_last=False)
    with pytest.raises(ug.SavedModelError, match="mix"):
        ug.save_model(low, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_an_existing_folder_is_refused_or_replaced_whole(tmp_path):
    x = torch.randn(1, 1, 32, 32)
    a, b = seg_graph().lower(), seg_graph().lower()
    path = ug.save_model(a, tmp_path / "m")
    with pytest.raises(ug.SavedModelError, match="exists"):
        ug.save_model(b, path)
    assert torch.equal(outputs(ug.load_model(path), x), outputs(a, x))
    ug.save_model(b, path, overwrite=True)
    assert torch.equal(outputs(ug.load_model(path), x), outputs(b, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    (tmp_path / "file").write_text("x")
    with pytest.raises(ug.SavedModelError, match="not a folder"):
        ug.save_model(b, tmp_path / "file", overwrite=True)


# -- damaged folders -----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    gm = seg_graph().lower()
    return ug.save_model(gm, tmp_path / "model"), gm


def rewrite_weights(folder, change):
    """Change the weights and record the new file's checksum, as a careful forger would."""
    tensors = load_file(folder / "model.safetensors")
    save_file(change(tensors), folder / "model.safetensors")
    meta = json.loads((folder / "unetgraph.json").read_text())
    meta["files"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "unetgraph.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "words", "node"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "dec0.conv1.weight"}, "dec0.conv1.weight is missing", "dec0"),
        (lambda t: {**t, "enc9.conv.weight": torch.zeros(1)}, "enc9.conv.weight is not a tensor", "enc9"),
        (lambda t: {**t, "mid.conv0.weight": torch.zeros(3, 3)}, "mid.conv0.weight .node mid. is 3×3", "mid"),
        (lambda t: {**t, "head.bias": t["head.bias"].half()}, r"head.bias .node head. is torch.float16", "head"),
    ],
    ids=["missing", "unexpected", "shape", "dtype"],
)
def test_tensors_that_do_not_fit_name_their_node(saved, change, words, node):
    folder, _ = saved
    rewrite_weights(folder, change)
    with pytest.raises(ug.SavedModelError, match=words) as err:
        ug.load_model(folder)
    assert err.value.node == node


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "unetgraph.json"])
def test_a_missing_file_is_named(saved, name):
    folder, _ = saved
    (folder / name).unlink()
    with pytest.raises(ug.SavedModelError, match=f"{name}: missing"):
        ug.load_model(folder)
    with pytest.raises(ug.SavedModelError, match="no such folder"):
        ug.load_model(folder / "nowhere")


def test_truncated_or_garbled_weights_are_named(saved):
    folder, _ = saved
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ug.SavedModelError, match=r"model\.safetensors: its contents changed"):
        ug.load_model(folder)
    with pytest.raises(ug.SavedModelError, match=r"model\.safetensors: not a valid safetensors file"):
        ug.load_model(folder, verify=False)
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json" + data[17:])
    with pytest.raises(ug.SavedModelError, match=r"model\.safetensors: not a valid safetensors file"):
        ug.load_model(folder, verify=False)


def test_bit_flips_give_a_typed_error_or_the_same_model(saved):
    """A flipped bit anywhere in the JSON files or the weights: refused with the file's name, or (in
    unetgraph.json, a field that does not change the model such as the library version) harmless."""
    folder, gm = saved
    x = torch.randn(1, 1, 32, 32)
    want = outputs(gm, x)
    rng = random.Random(0)
    refused = 0
    for name in ["config.json", "unetgraph.json", "model.safetensors"] * 25:
        path = folder / name
        original = path.read_bytes()
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            got = outputs(ug.load_model(folder), x)
        except ug.SavedModelError as e:
            assert any(f in str(e) for f in ("config.json", "unetgraph.json", "model.safetensors")), str(e)
            if name != "unetgraph.json":
                assert str(e).startswith(name), str(e)
            refused += 1
        else:
            assert name == "unetgraph.json" and torch.equal(got, want)
        path.write_bytes(original)
    assert refused >= 50


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("format", "something", "not a unetgraph model folder"),
        ("format_version", 7, "newer unetgraph"),
        ("dtype", "float8", "dtype: expected"),
        ("lowering", {"pad": 3}, r"lowering.pad: expected"),
        ("files", {}, "files: expected"),
    ],
)
def test_metadata_values_this_release_cannot_read_are_named(saved, field, value, words):
    folder, _ = saved
    meta = json.loads((folder / "unetgraph.json").read_text())
    meta[field] = value
    (folder / "unetgraph.json").write_text(json.dumps(meta))
    with pytest.raises(ug.SavedModelError, match=f"unetgraph.json: .*{words}"):
        ug.load_model(folder)


def test_a_pickle_in_place_of_the_weights_never_runs(saved, tmp_path):
    folder, _ = saved
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Payload()}, folder / "model.safetensors")
    rewrite = json.loads((folder / "unetgraph.json").read_text())
    rewrite["files"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "unetgraph.json").write_text(json.dumps(rewrite))
    with pytest.raises(ug.SavedModelError, match=r"model\.safetensors"):
        ug.load_model(folder)
    assert not marker.exists()


def test_a_killed_save_leaves_the_old_folder_or_the_new_one(tmp_path):
    """Kill a process that keeps replacing a saved model; the folder always loads whole."""
    path = tmp_path / "model"
    script = (
        "import sys, torch, unetgraph as ug\n"
        "g = ug.unet(1, 2, widths=(16, 32, 64), block=ug.ConvBlock(norm='group', groups=4))\n"
        "gm = g.lower()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    ug.save_model(gm, sys.argv[1], overwrite=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(1)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            ug.load_model(path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model"]
    ug.save_model(seg_graph().lower(), path, overwrite=True)  # the next save removes the killed writers' folders
    assert [p.name for p in tmp_path.iterdir()] == ["model"], leftovers


def test_resume_training_from_a_saved_model_and_optimizer_state(tmp_path):
    """docs/training.md: weights as a saved model, optimizer state through torch.save / weights_only loading."""
    g = seg_graph()
    x, target = torch.randn(4, 1, 32, 32), torch.randint(0, 2, (4, 32, 32))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model, opt):
        opt.zero_grad()
        loss_fn(model(x), target).backward()
        opt.step()

    model = g.lower()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step(model, opt)
    ug.save_model(model, tmp_path / "ckpt")
    torch.save({"optimizer": opt.state_dict(), "step": 1}, tmp_path / "ckpt" / "optimizer.pt")
    straight = copy.deepcopy(model)
    straight_opt = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    straight_opt.load_state_dict(opt.state_dict())
    step(straight, straight_opt)

    resumed = ug.load_model(tmp_path / "ckpt")
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    state = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    resumed_opt.load_state_dict(state["optimizer"])
    step(resumed, resumed_opt)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_atomic_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    from unetgraph.files import atomic_dir

    path = tmp_path / "out"
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(path, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new, half")
        raise RuntimeError("disk full")
    assert (path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(FileExistsError), atomic_dir(path):
        pass
    with atomic_dir(path, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in path.iterdir()) == ["b.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask  # a plain mkdir's mode, not mkdtemp's 0700


# -- hostile folders, races and failed writes ------------------------------------------------------


@pytest.mark.parametrize("name", [ug.saved.METADATA, ug.saved.CONFIG, ug.saved.WEIGHTS])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_in_a_saved_folder_is_refused_without_blocking(saved, name, kind):
    """Opening a FIFO waits for a writer and /dev/zero never ends: both hung or grew memory
    without bound before files were checked on their descriptor (/dev/null stands for the
    devices here, so that a regression fails this test instead of filling the memory)."""
    from thread_helpers import error_within

    folder, _ = saved
    (folder / name).unlink()
    if kind == "fifo":
        os.mkfifo(folder / name)
    else:
        (folder / name).symlink_to("/dev/null")
    error = error_within(30, lambda: ug.load_model(folder), f"load_model with a {kind} as {name}")
    assert isinstance(error, ug.SavedModelError) and "not a regular file" in str(error), error
    assert str(error).startswith(name)


def test_a_folder_replaced_while_it_loads_gives_one_model_whole(tmp_path):
    """Another thread keeps replacing the folder with one of two models that differ in their
    recorded options and weights. A load read the three files at separate moments by name, so it
    mixed one model's options with the other's weights, or blamed a checksum."""
    from thread_helpers import run_together

    g = seg_graph()
    models = {"constant": g.lower(pad="auto"), "reflect": g.lower(pad="auto", pad_mode="reflect")}
    x = torch.randn(1, 1, 21, 21)
    want = {mode: outputs(gm, x) for mode, gm in models.items()}
    path = tmp_path / "m"
    ug.save_model(models["constant"], path)

    def save(i):
        for gm in models.values():
            ug.save_model(gm, path, overwrite=True)

    def load(i):
        gm = ug.load_model(path)
        mode = ug.lowered_record(gm).pad_mode
        assert torch.equal(outputs(gm, x), want[mode]), f"{mode}'s options with the other model's weights"

    counts = run_together(4, {"save": (save, 1), "load": (load, 2)})
    assert counts["load"] > 5 and counts["save"] > 2, counts
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_folder_describing_a_huge_graph_is_refused_before_anything_is_built(saved):
    """A 10 KB folder can describe any graph (its checksums sit in a file anyone can rewrite): the
    tensors are now checked against a module built on the meta device, before the real one."""
    folder, _ = saved
    doc = json.loads((folder / ug.saved.CONFIG).read_text())
    doc["nodes"]["mid"]["block"]["channels"] = 2**20  # a 2**20 × 2**20 × 3 × 3 weight: 40 TB of float32
    config = (json.dumps(doc) + "\n").encode()
    (folder / ug.saved.CONFIG).write_bytes(config)
    meta = json.loads((folder / ug.saved.METADATA).read_text())
    meta["files"][ug.saved.CONFIG] = hashlib.sha256(config).hexdigest()
    (folder / ug.saved.METADATA).write_text(json.dumps(meta))
    with pytest.raises(
        ug.SavedModelError, match=r"mid\.conv0\.weight \(node mid\) is 16×8×3×3, the graph needs 1048576"
    ):
        ug.load_model(folder)


def test_json_files_of_a_saved_folder_keep_the_document_limits(saved):
    """config.json went through plain json.loads: a repeated key or a 5000-digit integer gave a raw
    ValueError or was taken silently, where ug.loads refuses both."""
    folder, _ = saved
    config = (folder / ug.saved.CONFIG).read_text()
    (folder / ug.saved.CONFIG).write_text(config.replace("{", '{"schema_version": 1, ', 1))
    with pytest.raises(ug.SavedModelError, match=r"config\.json: document: the key 'schema_version' appears more"):
        ug.load_model(folder, verify=False)
    meta = (folder / ug.saved.METADATA).read_text()
    (folder / ug.saved.METADATA).write_text(meta.replace('"format_version": 1', '"format_version": ' + "9" * 5000))
    with pytest.raises(ug.SavedModelError, match=r"unetgraph\.json: format_version: an integer of 5,000 digits"):
        ug.load_model(folder)


FULL_DISK = """
import resource, signal, sys, torch, unetgraph as ug
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
gm = ug.unet(1, 2, widths=(8, 16)).lower()
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
writes = (lambda: ug.save_model(gm, sys.argv[1] + "/a/b/model"), lambda: ug.unet(1, 2).save(sys.argv[1] + "/c/g.json"))
for write in writes:
    try:
        write()
    except ug.FileError as e:
        print("FileError", e)
"""


def test_a_write_that_fails_is_typed_and_leaves_nothing_behind(tmp_path):
    """A full disk (a file-size limit here) raised a raw OSError from save_model, and left the
    folders a write had created on its way to the target."""
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"FileError {tmp_path}/a/b/model",
        f"FileError {tmp_path}/c/g.json",
    ]
    assert all(line.endswith("cannot write: File too large") for line in lines), lines
    assert list(tmp_path.iterdir()) == []


def test_save_model_refuses_what_load_model_would_and_saves_tied_tensors(tmp_path):
    gm = seg_graph().lower()
    state = dict(gm.state_dict())
    state["head.weight"] = state["head.weight"].to(torch.int32)
    with pytest.raises(
        ug.SavedModelError, match=r"head\.weight \(node head\) is torch\.int32, the model is built in torch\.float32"
    ):
        ug.save_model(seg_graph(), tmp_path / "int", weights=state)
    tied = dict(gm.state_dict())
    tied["enc0.norm0.bias"] = tied["enc0.norm0.weight"]  # one tensor under two names
    ug.save_model(seg_graph(), tmp_path / "tied", weights=tied)
    back = ug.load_model(tmp_path / "tied").state_dict()
    assert torch.equal(back["enc0.norm0.bias"], tied["enc0.norm0.weight"])
    with pytest.raises(ug.SavedModelError, match="the key 3 is a int, not a name"):
        ug.save_model(seg_graph(), tmp_path / "key", weights={**gm.state_dict(), 3: torch.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tied"]


def test_atomic_dir_never_replaces_a_folder_that_appeared_while_writing(tmp_path):
    """The check for an existing target and the rename were two steps: an empty folder created in
    between was replaced silently, a full one gave a raw ENOTEMPTY."""
    from unetgraph.files import atomic_dir

    for fill in (False, True):
        path = tmp_path / f"out{int(fill)}"
        with pytest.raises(FileExistsError), atomic_dir(path) as tmp:
            (tmp / "new.txt").write_text("new")
            path.mkdir()
            if fill:
                (path / "theirs.txt").write_text("theirs")
        assert sorted(p.name for p in path.iterdir()) == (["theirs.txt"] if fill else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0", "out1"]
