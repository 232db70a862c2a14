# %% [markdown]
# # unetgraph quickstart: build, check, lower, compile
#
# A U-Net here is a typed graph. We build one with a single call, check every shape
# statically, lower it to a `torch.fx.GraphModule` and compile it.

# %%
import torch

import unetgraph as ug

g = ug.unet(
    in_channels=3,
    out_channels=2,
    widths=(64, 128, 256, 512, 1024),
    block=ug.ConvBlock(convs=2, norm="batch", act="relu"),
    down="maxpool",
    up="transpose",
    merge="concat",
)
g

# %% [markdown]
# The graph reads as levels and named skip edges:

# %%
print([n.name for n in g.level(2)])
print([e.name for e in g.skips])

# %% [markdown]
# ## Check: every node's shape, before any tensor exists

# %%
report = g.check((1, 3, 256, 256))
print(report)

# %% [markdown]
# Which input sizes fit? And what happens with one that does not:

# %%
print(g.valid_sizes())
try:
    g.check((1, 3, 70, 70))
except ug.ShapeError as e:
    print(f"ShapeError: {e}")

# %% [markdown]
# ## Lower: a GraphModule built from the graph, one line per layer

# %%
gm = g.lower()
print(gm.code[:1200])

# %% [markdown]
# The lowered module refuses an input that does not fit with the checker's words, not a
# traceback from inside `torch.cat`; `pad="auto"` accepts any size instead.

# %%
try:
    gm(torch.randn(1, 3, 255, 255))
except ug.ShapeError as e:
    print(f"ShapeError: {e}")
gm_auto = g.lower(pad="auto").eval()
with torch.no_grad():
    print(gm_auto(torch.randn(1, 3, 255, 255)).shape)

# %% [markdown]
# ## Compile: one graph, no break
#
# (A small U-Net, so the notebook runs quickly on a CPU.)

# %%
small = ug.unet(3, 2, widths=(16, 32, 64)).lower().eval()
x = torch.randn(1, 3, 64, 64)
compiled = torch.compile(small, fullgraph=True)
with torch.no_grad():
    print("max |compiled - eager| =", (compiled(x) - small(x)).abs().max().item())

# %% [markdown]
# ## The original U-Net (Ronneberger et al. 2015)
#
# Valid convolutions and cropped skips: a 572×572 tile gives a 388×388 map.

# %%
classic = ug.presets.classic_unet(in_channels=1, num_classes=2)
print(f"{classic.params:,} parameters;", classic.valid_sizes())
print(classic.check((1, 1, 572, 572)).outputs)
