"""Helpers shared by the deployment tests (passes, export, eject)."""

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import torch
from torch import nn

import unetgraph as ug


def randomize_norms(gm: nn.Module) -> nn.Module:
    """Give batch norms non-trivial statistics and affine parameters, so folding has work to do."""
    with torch.no_grad():
        for m in gm.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return gm


def second_size_inputs(g: ug.UNetGraph, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """One tensor per graph input, images at the second valid size (small, not the edge case)."""
    size = [r.sizes(2)[1] for r in g.valid_sizes().axes]
    return tuple(ug.example_inputs(g, batch=batch, size=size).values())


def assert_close(a, b) -> None:
    if isinstance(a, dict):  # several outputs
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k])
        return
    scale = max(1.0, a.abs().max().item())
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4 * scale, (a - b).abs().max().item()


# A block whose forward computes sinusoidal frequencies from a buffer on every call, as diffusion
# time embeddings do: fold_constants must compute them once. Left unregistered: tests must not
# grow the registry that other tests enumerate.
class _Sinusoidal(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("index", torch.arange(channels // 2, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(channels))
        self.half = channels // 2

    def forward(self, x):
        freqs = torch.exp(-math.log(10000.0) * self.index / self.half)
        table = torch.cat([torch.sin(freqs), torch.cos(freqs)]) * self.scale
        return x * table.reshape(1, -1, 1, 1)


@dataclass(frozen=True)
class KeepsType(ug.BlockSpec):
    """A test block whose output type is its input's; a subclass builds the module."""

    def infer(self, inputs, sources=()):
        return inputs[0]


@dataclass(frozen=True)
class SinusoidalScale(KeepsType):
    def build(self, inputs, output):
        return _Sinusoidal(inputs[0].channels)


def small_diffusion(**changes) -> ug.UNetGraph:
    """A small class-conditional DDPM-style graph, ``forward(x, t, y)``, quick to lower and run;
    ``changes`` override ``ug.diffusion_unet``'s arguments."""
    args = dict(
        widths=(8, 16),
        layers_per_block=1,
        resblock=ug.ResBlock(groups=4),
        attention=ug.SelfAttention(groups=4),
        time_embedding=ug.TimestepEmbedding(dim=8, channels=16),
        num_classes=5,
    )
    return ug.diffusion_unet(3, **{**args, **changes})


# Blocks whose modules hold torch containers as attributes, traced through when lowered: their
# layers are named "seq.0", "heads.b-2", "scales.1" in the state_dict, which an ejected file
# must keep (numbered Sequential, ModuleList, ModuleDict, ParameterList/Dict, nested).
class _Containers(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.layers = nn.ModuleList([nn.Conv2d(c, c, 1), nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())])
        self.heads = nn.ModuleDict({"a": nn.Conv2d(c, c, 1), "b-2": nn.Conv2d(c, c, 1)})
        self.nested = nn.Sequential(nn.ModuleList([nn.Conv2d(c, c, 1)]), nn.Sequential(nn.Identity()))
        self.scales = nn.ParameterList([nn.Parameter(torch.rand(c)), nn.Parameter(torch.rand(c))])
        self.shift = nn.ParameterDict({"all": nn.Parameter(torch.rand(c))})

    def forward(self, x):
        h = self.seq(x)
        for layer in self.layers:
            h = layer(h) + h
        h = self.heads["a"](h) * self.heads["b-2"](h)
        h = self.nested[1](self.nested[0][0](h))
        scale = self.scales[0] * self.scales[1] + self.shift["all"]
        return h * scale.reshape(1, -1, 1, 1) + x


@dataclass(frozen=True)
class Containers(KeepsType):
    def build(self, inputs, output):
        return _Containers(inputs[0].channels)


RUNNER = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    spec = importlib.util.spec_from_file_location("ejected", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, sys.argv[2])()
    state = torch.load(sys.argv[3], weights_only=True)
    model.load_state_dict(state)
    model.eval()
    xs = torch.load(sys.argv[4], weights_only=True)
    with torch.no_grad():
        torch.save(model(*xs), sys.argv[5])
    ours = sorted(m for m in sys.modules if m.split(".")[0] == "unetgraph")
    print(json.dumps({"keys": list(model.state_dict()), "imported": ours}))
    """
)


def run_fresh(tmp_path, path, class_name, gm, xs):
    """Import the ejected file in a new interpreter (no unetgraph imported), load gm's weights, run xs."""
    torch.save(gm.state_dict(), tmp_path / "state.pt")
    torch.save(list(xs), tmp_path / "x.pt")
    (tmp_path / "runner.py").write_text(RUNNER)
    out = subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(path), class_name]
        + [str(tmp_path / f) for f in ("state.pt", "x.pt", "y.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return torch.load(tmp_path / "y.pt", weights_only=True), info
