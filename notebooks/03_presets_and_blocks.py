# %% [markdown]
# # Presets and the block library
#
# The famous U-Nets are ordinary graphs here, each exact to its source, and the blocks they are
# made of (residual blocks, attention, embeddings, gates) are registered specs you can use in
# your own graphs.

# %%
import torch

import unetgraph as ug

presets = {
    "classic_unet (Ronneberger 2015)": ug.presets.classic_unet(1, 2),
    "ddpm_unet 32 (Ho 2020, CIFAR-10)": ug.presets.ddpm_unet(32),
    "ddpm_unet 256 (Ho 2020, LSUN)": ug.presets.ddpm_unet(256),
    "attention_unet (Oktay 2018)": ug.presets.attention_unet(3, 1),
    "unet3d (Çiçek 2016)": ug.presets.unet3d(3, 3),
    "unet_plus_plus (Zhou 2018)": ug.presets.unet_plus_plus(1, 1),
    "nnunet_plain (default 3D plan)": ug.presets.nnunet_plain(1, 3),
    "residual_unet (Zhang 2018)": ug.presets.residual_unet(3, 1),
}
for name, g in presets.items():
    print(f"{name:34} {g.params:>12,} params  {len(g):4} nodes  {len(g.skips):3} skips  {g.valid_sizes()}")

# %% [markdown]
# ## The DDPM topology: a skip from every encoder block
#
# Each level has two residual blocks; the stem or the downsampler output and each block's output
# are skips, consumed in reverse by the three decoder blocks of the level. The timestep
# embedding reaches every `ResBlock` through a `cond` edge.

# %%
g = ug.presets.ddpm_unet(32)
print([e.name for e in g.skips if g[e.dst].level == 1])
print([e.describe() for e in g.in_edges("dec1_0")])
print(g.check({"x": (2, 3, 32, 32), "t": (2,)}).summary())

# %% [markdown]
# ## Your own diffusion U-Net: class labels and cross-attention
#
# `ug.diffusion_unet` builds the same topology from arguments. With `num_classes` the model takes
# labels `y`, with `context_channels` a context sequence for cross-attention.

# %%
small = ug.diffusion_unet(
    3,
    widths=(32, 64),
    layers_per_block=1,
    attention_levels=(1,),
    num_classes=10,
    context_channels=16,
    resblock=ug.ResBlock(groups=8, cond="scale_shift"),
    attention=ug.SelfAttention(heads=4, groups=8),
    cross_attention=ug.CrossAttention(heads=4, groups=8),
)
gm = small.lower()
x, t, y, ctx = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.tensor([3, 7]), torch.randn(2, 5, 16)
print(small.inputs, tuple(gm(x, t, y, ctx).shape))

# %% [markdown]
# A missing argument is reported by the input guard, by name:

# %%
try:
    gm(x)
except ug.ShapeError as e:
    print(f"ShapeError: {e}")

# %% [markdown]
# ## Blocks in your own graph
#
# A conditioned residual block, a gate on the skip, squeeze-excitation: each a node.

# %%
b = ug.GraphBuilder("Custom")
b.input("x", channels=1, dims=2)
b.input("t", kind="timestep")
b.add("temb", ug.TimestepEmbedding(dim=16), "embedding", None, ["t"])
b.add("enc", ug.ResBlock(channels=8, groups=4, pre_norm=False), "encoder", 0, ["x", ug.In("temb", "cond")])
b.add("down", ug.Down("pixel_unshuffle", channels=16), "down", 1, ["enc"])
b.add("mid", ug.LinearAttention(heads=2, head_dim=8), "bottleneck", 1, ["down"])
b.add("up", ug.Up("pixel_shuffle", channels=8), "up", 0, ["mid"])
b.add("gate", ug.AttentionGate(), "merge", 0, [ug.In("enc", "skip"), "up"])
b.add("merge", ug.Merge(), "merge", 0, ["gate", "up"])
b.add("se", ug.SqueezeExcitation("scse", reduction=4), "decoder", 0, ["merge"])
b.add("head", ug.Head(channels=2), "head", 0, ["se"])
custom = b.build(["head"])
print(custom.check({"x": (2, 1, 16, 16), "t": (2,)}))

# %% [markdown]
# ## UNet++ and nnU-Net: dense skips, anisotropic strides, deep supervision

# %%
upp = ug.presets.unet_plus_plus(deep_supervision=True)
print([e.name for e in upp.in_edges("merge0_4")], upp.outputs)
nn_unet = ug.presets.nnunet_plain(
    1, 3, (8, 16, 32, 64), [(1, 3, 3), 3, 3, 3], [1, (1, 2, 2), 2, 2], deep_supervision=True
)
outs = nn_unet.lower()(torch.randn(1, 1, 8, 32, 32))
print({k: tuple(v.shape) for k, v in outs.items()})

# %% [markdown]
# Every preset compiles without a graph break:

# %%
torch._dynamo.reset()
compiled = torch.compile(small.lower().eval(), fullgraph=True, backend="eager")
with torch.no_grad():
    print(tuple(compiled(x, t, y, ctx).shape))
