# %% [markdown]
# # Interop: a diffusers U-Net in, edited, compiled, exported, and back
#
# `ug.interop.from_diffusers` rebuilds a diffusers `UNet2DModel` or `UNet2DConditionModel` from its
# configuration, with its weights: the result is an ordinary graph, so everything else in
# unetgraph works on it. `ug.interop.to_diffusers` hands it back. (Small models with random
# weights, so the notebook runs quickly on a CPU; `UNet2DModel.from_pretrained(path)` works the same.)

# %%
import tempfile
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

import unetgraph as ug

torch.manual_seed(0)
out = Path(tempfile.mkdtemp())
model = UNet2DModel(
    sample_size=32,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=16,
    resnet_time_scale_shift="scale_shift",
).eval()

graph, gm = ug.interop.from_diffusers(model)
x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
with torch.no_grad():
    diff = (gm(x, t) - model(x, t).sample).abs().max().item()
print(graph)
print(f"{graph.params:,} parameters (diffusers: {sum(p.numel() for p in model.parameters()):,}); max |Δ| {diff:.1e}")

# %% [markdown]
# ## Draw it
#
# The imported graph has diffusers' layout with named skips: every encoder output crosses the U to
# one decoder merge.

# %%
graph.render("levels", input_shape=ug.input_shapes(graph, size=32))

# %% [markdown]
# ## Check it at three sizes
#
# Every shape is known before a tensor runs; a size that does not fit is refused in words, and the
# lowered module refuses it the same way (diffusers' own model raises inside `torch.cat`).

# %%
print(graph.valid_sizes())
for size in (16, 24, 40):
    report = graph.check(ug.input_shapes(graph, size=size))
    print(size, "→", report.outputs["head"], f"{report['mid_attn'].inputs[0]} at the middle attention")
try:
    graph.check(ug.input_shapes(graph, size=30))
except ug.ShapeError as e:
    print("ShapeError:", e)

# %% [markdown]
# ## Edit one node
#
# Add a squeeze-and-excitation block after the last decoder block: the diff names the change, and
# every other node keeps its trained weights.

# %%
edited = graph.insert_after("dec0_1", ug.SqueezeExcitation("cse", reduction=4), name="dec0_se")
edited_gm = edited.lower(weights_from=gm)
print(ug.diff(graph, edited))
print(ug.transfer_report(edited_gm).summary())

# %% [markdown]
# ## Compile with `fullgraph=True` and export
#
# The lowered module is one `torch.fx` graph, so `torch.compile(fullgraph=True)` takes it without a
# break, and `ug.export` writes a `.pt2` for every valid size.

# %%
fast, _ = ug.optimize(edited_gm)
compiled = torch.compile(fast, fullgraph=True)
with torch.no_grad():
    print("compiled vs eager:", (compiled(x, t) - edited_gm(x, t)).abs().max().item())
program = ug.load_exported(ug.export(fast, out / "ddpm.pt2", progress=False))
with torch.no_grad():
    print("exported at 48²:", tuple(program(torch.randn(1, 3, 48, 48), torch.tensor([5])).shape))

# %% [markdown]
# ## Send it back
#
# The squeeze-and-excitation node has no place in diffusers' layout, so `to_diffusers` refuses the
# edited graph and names the node. An edit that keeps the layout goes back: here a new dropout in
# every residual block (`match="shape"` keeps the weights of nodes whose fields changed).

# %%
try:
    ug.interop.to_diffusers(edited_gm)
except ug.SpecError as e:
    print("SpecError:", e)

dropped = graph.map_blocks(lambda b: b.with_(dropout=0.1), where=lambda n: isinstance(n.block, ug.ResBlock))
dropped_gm = dropped.lower()
ug.transfer_weights(dropped_gm, gm, match="shape")
back = ug.interop.to_diffusers(dropped_gm.eval(), sample_size=32)
with torch.no_grad():
    print(
        type(back).__name__,
        "dropout",
        back.config.dropout,
        "max |Δ|",
        (back(x, t).sample - model(x, t).sample).abs().max().item(),
    )

# %% [markdown]
# ## Text-conditioned U-Nets
#
# A `UNet2DConditionModel` (Stable Diffusion's layout) imports the same way: its cross-attention
# transformers become `Transformer` blocks that take the context on a conditioning edge, and the
# module is called as `gm(x, t, context)`.

# %%
sd = UNet2DConditionModel(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=24,
    attention_head_dim=4,
    use_linear_projection=True,
).eval()
sd_graph, sd_gm = ug.interop.from_diffusers(sd)
latents, context = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 24)
with torch.no_grad():
    delta = (sd_gm(latents, t[:1], context) - sd(latents, t[:1], context).sample).abs().max().item()
print(sd_graph["enc0_0_attn"].block, f"max |Δ| {delta:.1e}")
sd_graph.render("blocks", input_shape=ug.input_shapes(sd_graph, size=16))
