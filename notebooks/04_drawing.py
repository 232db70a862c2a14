# %% [markdown]
# # Seeing the architecture: the U, its cost, and what changed
#
# A U-Net graph knows its roles, levels and skips, so it draws as a U: encoder down the left,
# bottleneck at the bottom, decoder up the right, skips straight across. Every number on the
# drawing comes from the static cost model, before any tensor exists.

# %%
import tempfile
from pathlib import Path

import unetgraph as ug

g = ug.presets.classic_unet()  # Ronneberger et al. 2015
g  # a notebook shows the graph as its U (SVG, via graphviz's dot)

# %% [markdown]
# ## Three levels of detail
#
# With an input shape, labels carry each output shape, parameters and FLOPs. `"levels"` keeps
# one box per level and side:

# %%
tile = (1, 1, 572, 572)
g.render("levels", input_shape=tile)

# %% [markdown]
# `"blocks"` (the default) has one box per graph node; `heat="flops"` colours each box by its
# share of the FLOPs:

# %%
g.render("blocks", input_shape=tile, heat="flops", annotate=("shape", "flops"))

# %% [markdown]
# `"layers"` shows every layer, each block framed (the graph is lowered on the meta device, so
# nothing is allocated). A small U-Net keeps it readable:

# %%
small = ug.unet(3, 2, widths=(16, 32), block=ug.ConvBlock(norm="group", groups=8, act="silu"))
small.render("layers", input_shape=(1, 3, 64, 64))

# %% [markdown]
# ## The cost model as a table
#
# Parameters, FLOPs (as `torch.utils.flop_counter.FlopCounterMode` counts them) and activation
# memory per node, from the types:

# %%
report = g.summary(tile)
report

# %%
print(f"{report.flops:,} FLOPs = {report.macs:,} MACs; peak inference memory {ug.cost.fmt_bytes(report.peak_bytes)}")
print("the most expensive node:", max(report, key=lambda r: r.flops).name)

# %% [markdown]
# ## A diffusion U-Net
#
# The DDPM CIFAR-10 model (Ho et al. 2020): two residual blocks per level, a skip from every
# encoder block, attention at 16×16, and the time embedding reaching every residual block
# through conditioning edges (dotted, they do not bend the U).

# %%
ddpm = ug.presets.ddpm_unet(32)
ddpm.render("levels", input_shape=ug.input_shapes(ddpm, size=32))

# %% [markdown]
# ## Drawing what changed
#
# `ug.diff(a, b).render()` draws both architectures in one U: added parts green, removed ones
# dashed red where they were, changed ones orange. Under it, `marks=` marks any nodes and edges.

# %%
edited = g.remove_skip("enc0").set("dec3", convs=1).insert_after("enc2", ug.ConvBlock(convs=1), name="enc2b")
ug.diff(g, edited).render("blocks", annotate=("shape",))

# %% [markdown]
# ## Files
#
# `save_figure` writes SVG, PNG, PDF or DOT (atomically); DOT text needs no graphviz at all.

# %%
out = Path(tempfile.mkdtemp())
for name in ("unet.svg", "unet.png", "unet.pdf", "unet.dot"):
    path = g.save_figure(out / name, "levels", input_shape=tile)
    print(f"{path.name}: {path.stat().st_size:,} bytes")
print(g.to_dot("levels").splitlines()[0])
