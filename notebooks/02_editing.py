# %% [markdown]
# # Editing an architecture
#
# Changing a U-Net should be a few safe lines, not a fork of a 600-line file. Here we take a
# trained U-Net, swap its bottleneck, change how a skip merges, drop a skip, change the
# encoder's activations and insert a block; see what changed; save the result as YAML and
# load it back; and lower it with the trained weights of every part we did not touch.

# %%
import tempfile
from pathlib import Path

import torch

import unetgraph as ug

torch.manual_seed(0)
g = ug.unet(3, 2, widths=(32, 64, 128, 256), block=ug.ConvBlock(norm="group", groups=8))
g

# %% [markdown]
# A few training steps on a toy task (predict the first two input channels), so the weights
# are no longer their initial values:

# %%
gm = g.lower()
opt = torch.optim.Adam(gm.parameters(), lr=1e-3)
for _ in range(5):
    x = torch.randn(4, 3, 32, 32)
    loss = (gm(x) - x[:, :2]).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"loss after 5 steps: {loss.item():.3f}")

# %% [markdown]
# ## Select
#
# Nodes by name, role, level or any predicate:

# %%
n = g["enc2"]
print(
    n.describe(), "| role", n.role, "| level", n.level, "| in", n.inputs[0], "| out", n.type, f"| {n.params:,} params"
)
print([n.name for n in g.nodes(role="encoder")])
print([n.name for n in g.nodes(level=1)])
print([n.name for n in g.nodes(where=lambda n: n.params > 500_000)])

# %% [markdown]
# ## Edit
#
# Each edit returns a new graph (the original stays as it is), re-infers every type and
# re-checks the graph. Node names do not change, so weights can follow them.

# %%
g2 = (
    g.replace("mid", ug.Sequence(ug.ResBlock(groups=8), ug.SelfAttention(heads=8, groups=8), ug.ResBlock(groups=8)))
    .set_skip("enc1", "merge1", merge="add")
    .remove_skip("enc0")
    .map_blocks(lambda b: b.with_(act="silu"), role="encoder")
    .insert_after("enc2", ug.ConvBlock(convs=1, norm="group", groups=8), name="enc2b")
)
print(g2)
print(g2.check((1, 3, 64, 64)).outputs)

# %% [markdown]
# ## What changed
#
# `ug.diff` matches nodes by name: added (`+`), removed (`-`), changed (`~`, with the fields),
# retyped (`≈`: same block, different inputs, so its weights no longer fit), edges, and the
# parameter change.

# %%
d = ug.diff(g, g2)
print(d)

# %%
{n: s for n, s in d.status.items() if s != "same"}  # what a drawing of the diff colours by

# %% [markdown]
# Drawn, both architectures share one U: added parts in green, removed ones dashed red where
# they used to be, changed ones in orange.

# %%
d.render("blocks")

# %% [markdown]
# ## An edit that would break the graph is refused
#
# An `add` merge needs equal channels. Widening `enc1` after making `merge1` an `add` merge
# would break it: the error names the edit, the node, the edges and the numbers, and `g2`
# is unchanged.

# %%
try:
    g2.set("enc1", channels=48)
except ug.ShapeError as e:
    print(f"ShapeError: {e}")
try:
    g2.add_skip("dec0", "up0")
except ug.GraphError as e:
    print(f"GraphError: {e}")
print(g2["enc1"].block.channels, g2 == ug.loads(ug.dumps(g2)))

# %% [markdown]
# ## Keep it as data
#
# A graph saves to YAML or JSON (atomically) and loads back equal. The document is plain
# data; loading never runs code from it.

# %%
folder = Path(tempfile.mkdtemp())
path = g2.save(folder / "my_unet.yaml")
print("\n".join(path.read_text().splitlines()[:24]))
g3 = ug.load(path)
assert g3 == g2
print("...\nloaded back equal:", g3 == g2)

# %% [markdown]
# A bad document gets an error that says where in the document, and what was expected:

# %%
bad = path.read_text().replace("convs: 1, kernel: 3", "convs: -3, kernel: 3", 1)
(folder / "bad.yaml").write_text(bad)
try:
    ug.load(folder / "bad.yaml")
except ug.SpecError as e:
    print(f"SpecError: {e}")

# %% [markdown]
# ## Keep the trained weights
#
# `lower(weights_from=gm)` copies the tensors of every node that kept its block and its input
# types, and reports what it copied, re-initialised and dropped.

# %%
gm2 = g2.lower(weights_from=gm)
report = ug.transfer_report(gm2)
print(report)

# %% [markdown]
# The untouched parts (here the up-convolution `up1`, the decoder block `dec2` and the head)
# have exactly their trained weights; the edited encoder blocks start fresh, and so does `up2`,
# whose input now comes from the new bottleneck with fewer channels:

# %%
trained, edited = gm.state_dict(), gm2.state_dict()
for key in ["up2.weight", "up1.weight", "dec2.conv0.weight", "head.weight", "enc0.conv0.weight"]:
    print(f"{key:<20} identical: {torch.equal(trained[key], edited[key])}")

# %% [markdown]
# ## Taps: intermediate features as extra outputs
#
# `tap` marks nodes as outputs; the lowered module then returns a dict by name (for a feature
# loss or deep supervision), and `torch.compile(fullgraph=True)` still sees one graph.

# %%
tapped = g2.tap("enc2b", "mid").lower().eval()
with torch.no_grad():
    out = tapped(torch.randn(1, 3, 64, 64))
print({k: tuple(v.shape) for k, v in out.items()})
explanation = torch._dynamo.explain(tapped)(torch.randn(1, 3, 64, 64))
print("graph breaks:", explanation.graph_break_count)

# %% [markdown]
# The new bottleneck is a `Sequence`: its parts' layers are fx nodes of their own, and its
# weights sit under `mid.<part><i>`:

# %%
print("\n".join(line for line in gm2.code.splitlines() if "mid" in line)[:900])
