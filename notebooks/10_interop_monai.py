# %% [markdown]
# # MONAI in and out
#
# A trained MONAI model becomes a graph with its weights: the checker, the drawing, edits,
# `torch.compile(fullgraph=True)` and export work on the model you already trust, and an edited
# graph goes back to MONAI. Import reads the model's configuration and layers (MONAI's
# `BasicUNet` traces without its skips, so nothing is traced) and copies every tensor along an
# explicit map. (Random weights stand in for trained ones; a small model keeps the notebook quick.)

# %%
import logging
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # MONAI's tqdm, in a notebook
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # inductor on a CPU-only machine

# %%
import tempfile
from pathlib import Path

import torch
from monai.networks.nets import UNet

import unetgraph as ug

torch.manual_seed(0)
out = Path(tempfile.mkdtemp())
net = UNet(
    spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2
).eval()
g, gm = ug.interop.from_monai(net)
x = torch.randn(1, 1, 96, 96)
with torch.no_grad():
    print(f"max |Δ| against MONAI: {(gm(x) - net(x)).abs().max().item():.1e}")
print(f"parameters: graph {g.params:,}, MONAI {sum(p.numel() for p in net.parameters()):,}")

# %% [markdown]
# ## Draw it
#
# MONAI's `UNet` nests `Sequential(down, SkipConnection(...), up)` blocks; as a graph it is a U:
# strided residual units down, a concatenation per level, then a transposed convolution and a
# residual unit up. The output is `up0`.

# %%
g.render("blocks", input_shape=(1, 1, 96, 96))

# %% [markdown]
# ## Check it at three sizes
#
# The checker gives MONAI's own shapes without running anything. A stride-2 convolution rounds
# an odd size up and the transposed convolution doubles it, so 95×95 comes out as 96×96, as in
# MONAI; at 94×94 MONAI fails inside `torch.cat`, and the graph says why before anything runs.

# %%
print(g.valid_sizes())
for size in (96, 95, 94):
    try:
        print(size, "→", g.check((1, 1, size, size)).outputs["up0"])
    except ug.ShapeError as e:
        print(size, "→ ShapeError:", e)
with torch.no_grad():
    print("MONAI at 95:", tuple(net(torch.randn(1, 1, 95, 95)).shape))
try:
    net(torch.randn(1, 1, 94, 94))
except RuntimeError as e:
    print("MONAI at 94:", str(e).splitlines()[0])

# %% [markdown]
# ## Edit one node
#
# Widen the bottleneck. Widths are declared once, so the merge and the up-sampling after it
# follow; every other node keeps its trained weights.

# %%
wide = g.set("mid", channels=128)
print(ug.diff(g, wide))
gm_wide = wide.lower(weights_from=gm).eval()
print(ug.transfer_report(gm_wide))

# %% [markdown]
# ## Compile with `fullgraph=True`, export
#
# The lowered module is one fx graph without Python control flow: `fullgraph=True` holds (it
# raises on any graph break). Export writes a `torch.export` program that serves every batch and
# every size of one residue class (here `H = 15 + 8k`, which includes 95; the loaded artifact
# refuses the others in the checker's words).

# %%
compiled = torch.compile(gm_wide, fullgraph=True)
with torch.no_grad():
    print(f"compiled vs eager: max |Δ| {(compiled(x) - gm_wide(x)).abs().max().item():.1e}")
path = ug.export(gm_wide, out / "unet.pt2", progress=False)
loaded = ug.load_exported(path)
x95 = torch.randn(2, 1, 95, 95)
with torch.no_grad():
    print(path.name, tuple(loaded(x95).shape), f"max |Δ| {(loaded(x95) - gm_wide(x95)).abs().max().item():.1e}")

# %% [markdown]
# ## Send it back
#
# `to_monai` reads the MONAI configuration from the graph (`channels` now ends with 128),
# rebuilds the graph that configuration imports to, requires it to equal this one node by node,
# and copies the weights back.

# %%
back = ug.interop.to_monai(gm_wide)
print(type(back).__name__, back.channels)
with torch.no_grad():
    print(f"MONAI vs graph: max |Δ| {(back(x) - gm_wide(x)).abs().max().item():.1e}")

# %% [markdown]
# An edit MONAI cannot express (one level with another kernel) is refused, naming the node:

# %%
try:
    ug.interop.to_monai(g.set("enc1", kernel=5).lower())
except ug.GraphError as e:
    print("GraphError:", e)
