# %% [markdown]
# # Backbones: a pretrained encoder as one typed node
#
# Segmentation models usually start from a pretrained classifier. Here a ResNet-34 becomes the
# encoder of a U-Net: one node whose outputs are its feature maps, with skips that name the
# output they take. We check and draw it, fine-tune its decoder with the encoder frozen, and
# compare it with segmentation_models_pytorch's `Unet`. (No model hub here: the weights are
# random; `pretrained=True` would load them with timm's or torchvision's own code when the graph
# is lowered, see docs/backbones.md.)

# %%
import torch

import unetgraph as ug

torch.manual_seed(0)
g = ug.presets.smp_unet("resnet34", encoder_weights=None, classes=2)
g

# %% [markdown]
# The encoder is torchvision's ResNet-34 cut at its five stages. Each output has a type and a level
# (its number of halvings); the skips name the output they take.

# %%
enc = g["encoder"]
for name, t, level in zip(enc.block.output_names(enc.inputs), enc.outputs, enc.levels):
    print(f"{name:>7}  {t}  level {level}")
print([e.describe() for e in g.skips])

# %% [markdown]
# ## Checked before it runs
#
# The checker knows the backbone's size rule (five halvings: multiples of 32) and reports every
# output's shape; a size that does not fit is a typed error that says why.

# %%
print(g.valid_sizes())
report = g.check((1, 3, 256, 256))
print(report)

# %%
try:
    g.check((1, 3, 250, 250))
except ug.ShapeError as e:
    print(f"ShapeError: {e}")

# %% [markdown]
# ## Drawn as a U
#
# The backbone's stages run down the left of the U, framed with its name and cost; each skip runs
# straight across to the merge of its level.

# %%
g.render("blocks", input_shape=(1, 3, 256, 256))

# %% [markdown]
# ## Fine-tuning with a frozen encoder
#
# `ug.freeze(gm, role="encoder")` stops the encoder's weights from training and keeps its batch
# norms in evaluation mode (their statistics stay as pretrained, even in `gm.train()`). The task:
# find the bright squares in noisy 64×64 images.


# %%
def batch(n=8, size=64):
    x = torch.randn(n, 3, size, size) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size - 16, (2,)).tolist()
        x[i, :, r : r + 16, c : c + 16] += 1.5
        y[i, r : r + 16, c : c + 16] = 1
    return x, y


gm = g.lower()
print(ug.freeze(gm, role="encoder"))
encoder_before = {k: v.clone() for k, v in gm.state_dict().items() if k.startswith("encoder.")}
opt = torch.optim.Adam([p for p in gm.parameters() if p.requires_grad], lr=3e-3)
gm.train()
for step in range(15):
    x, y = batch()
    loss = torch.nn.functional.cross_entropy(gm(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 3 == 0 or step == 14:
        print(f"step {step:2d}  loss {loss.item():.3f}")
unchanged = all(torch.equal(v, gm.state_dict()[k]) for k, v in encoder_before.items())
print("encoder weights and statistics unchanged:", unchanged)

# %% [markdown]
# ## The same model as smp's `Unet`
#
# `smp_unet` takes smp's argument names and defaults and builds the same network: the same
# parameter count, and with smp's weights (`smp_state_dict` renames its keys) the same outputs.

# %%
import warnings

with warnings.catch_warnings():  # smp's import asks tqdm for notebook widgets
    warnings.simplefilter("ignore")
    import segmentation_models_pytorch as smp

theirs = smp.Unet("resnet34", encoder_weights=None, classes=2).eval()
ours = g.lower().eval()
ours.load_state_dict(ug.presets.smp_state_dict(theirs.state_dict()), strict=True)
x = torch.randn(2, 3, 128, 128)
with torch.no_grad():
    diff = (theirs(x) - ours(x)).abs().max().item()
print(f"parameters: smp {sum(p.numel() for p in theirs.parameters()):,}, ours {g.params:,}")
print(f"max |Δ| of the outputs: {diff:.1e}")
print([k for k in ug.presets.smp_state_dict(theirs.state_dict()) if k.startswith("dec4")][:4])

# %% [markdown]
# A timm encoder is one argument away (`"tu-<timm name>"`, as in smp), and the backbone can be
# swapped in an edit: each skip moves to the new backbone's output at its level, so ConvNeXt's
# stride-4 stem leaves level 1 without a skip.

# %%
g2 = g.replace_backbone(ug.Backbone("convnext_atto", depth=5))
print([e.describe() for e in g2.skips])
print(ug.diff(g, g2).summary())

# %% [markdown]
# The graph is still data (the backbone is stored by source and name; loading never imports
# code), and it compiles, exports and ejects like any other graph; the ejected file creates the
# backbone with torchvision's own call:

# %%
print(g.to_dict()["nodes"]["encoder"]["block"])
source = ug.eject_source(g, verify=False)
start = source.index("# encoder")
print(source[start : source.index("self.up4")])
