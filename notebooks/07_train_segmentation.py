# %% [markdown]
# # 07 · Train a segmentation U-Net
#
# A U-Net built from the graph trains like any PyTorch module. This notebook makes a small
# synthetic data set (disks and squares on noise), trains a U-Net to tell them apart, measures
# the Dice score on held-out images, and shows the loss curve and the predictions. Then it runs
# the same model with activation checkpointing and round-trips it through a saved-model folder.
# Everything runs on a CPU in a few minutes; [docs/training.md](../docs/training.md) covers
# several processes and GPUs.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import unetgraph as ug

torch.manual_seed(0)
# figures go to docs/figures when the notebook runs from the repository's notebooks/ folder
FIGURES = Path("../docs/figures") if Path("../docs/figures").is_dir() else Path(".")

# %% [markdown]
# ## A synthetic data set
#
# Each 48×48 image holds up to four shapes that do not touch, disks and squares of the same
# brightness, on Gaussian noise with a random offset. The mask labels each pixel 0 (background), 1 (disk) or
# 2 (square): the network must tell the shapes apart by their outline, not by intensity.


# %%
def make_shapes(n: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        mask = masks[i]
        for label in (1, 2, 1, 2):  # up to two disks and two squares
            if torch.rand((), generator=gen) < 0.3:
                continue
            for _ in range(5):  # a place where it touches no other shape
                r = int(torch.randint(5, 11, (), generator=gen))
                cy, cx = torch.randint(r, size - r, (2,), generator=gen).tolist()
                if not mask[((yy - cy).abs() <= r + 2) & ((xx - cx).abs() <= r + 2)].any():
                    break
            else:
                continue
            if label == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                inside = ((yy - cy).abs() <= 0.85 * r) & ((xx - cx).abs() <= 0.85 * r)
            mask[inside] = label
        noise = 0.35 * torch.randn(size, size, generator=gen)
        images[i, 0] = 0.8 * (mask > 0) + noise + 0.2 * torch.rand((), generator=gen)
    return images, masks


train_x, train_y = make_shapes(2000, seed=0)
val_x, val_y = make_shapes(100, seed=1)  # for stopping
test_x, test_y = make_shapes(200, seed=2)  # held out: scored once, at the end
print(f"train {tuple(train_x.shape)}, validation {tuple(val_x.shape)}, test {tuple(test_x.shape)}")

fig, axes = plt.subplots(2, 6, figsize=(10, 3.6))
for i in range(6):
    axes[0, i].imshow(train_x[i, 0], cmap="gray")
    axes[1, i].imshow(train_y[i], cmap="viridis", vmin=0, vmax=2)
    axes[0, i].axis("off")
    axes[1, i].axis("off")
axes[0, 0].set_title("images", loc="left")
axes[1, 0].set_title("masks: disk, square", loc="left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The model
#
# A three-level U-Net with GroupNorm; `check` gives every node's shapes before anything runs,
# `lower()` the module to train.

# %%
g = ug.unet(1, 3, widths=(16, 32, 64), block=ug.ConvBlock(norm="group", groups=8), name="ShapesUNet")
print(g.summary((16, 1, 48, 48)).headline())
model = g.lower()

# %% [markdown]
# ## Training
#
# Cross-entropy plus a soft Dice term, AdamW with a one-cycle schedule, batches of 16. The loss
# is printed every 50 steps with the validation Dice, for a fixed 300 steps (the one-cycle
# schedule ends there). A fixed count, not a stop at a Dice threshold: float rounding differs
# between CPUs, so a threshold would be reached at a different step on another machine.


# %%
def dice_scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Dice of each foreground class (disk, square) over a whole set."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 50]).argmax(1) for i in range(0, len(x), 50)])
    model.train()
    return [(2 * ((pred == c) & (y == c)).sum() / ((pred == c).sum() + (y == c).sum())).item() for c in (1, 2)]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2)[:, 1:].float()
    overlap = 2 * (prob * onehot).sum((0, 2, 3)) + 1
    soft_dice = 1 - overlap / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return F.cross_entropy(logits, target) + soft_dice.mean()


steps, batch = 300, 16
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
losses: list[float] = []
start = time.perf_counter()
for step in range(1, steps + 1):
    idx = torch.randint(0, len(train_x), (batch,))
    loss = loss_fn(model(train_x[idx]), train_y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()
    losses.append(loss.item())
    if step % 50 == 0:
        val = dice_scores(model, val_x, val_y)
        took = time.perf_counter() - start
        print(f"step {step:4d}  loss {loss.item():.3f}  validation Dice {val[0]:.3f} / {val[1]:.3f}  {took:6.1f} s")
train_seconds = time.perf_counter() - start
print(f"trained {step} steps in {train_seconds:.1f} s")

# %% [markdown]
# ## Held-out Dice

# %%
disk, square = dice_scores(model, test_x, test_y)
print(f"held-out Dice: disk {disk:.3f}, square {square:.3f}")
assert min(disk, square) >= 0.9, "the model should separate disks from squares"

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, lw=0.6, alpha=0.5, label="per step")
smooth = torch.tensor(losses).unfold(0, 20, 1).mean(1)
ax.plot(range(19, 19 + len(smooth)), smooth, lw=2, label="mean of 20")
ax.set(xlabel="step", ylabel="cross-entropy + soft Dice", yscale="log", title="training loss")
ax.legend()
plt.tight_layout()
fig.savefig(FIGURES / "train_segmentation_loss.png", dpi=110)
plt.show()

# %%
model.eval()
with torch.no_grad():
    pred = model(test_x[:6]).argmax(1)
fig, axes = plt.subplots(3, 6, figsize=(10, 5.2))
for i in range(6):
    for row, (img, kw) in enumerate(
        [(test_x[i, 0], {"cmap": "gray"}), (test_y[i], {"vmin": 0, "vmax": 2}), (pred[i], {"vmin": 0, "vmax": 2})]
    ):
        axes[row, i].imshow(img, **kw)
        axes[row, i].axis("off")
for row, title in enumerate(["input", "mask", "prediction"]):
    axes[row, 0].set_title(title, loc="left")
plt.tight_layout()
fig.savefig(FIGURES / "train_segmentation_predictions.png", dpi=110)
plt.show()

# %% [markdown]
# ## The same model, checkpointed
#
# `lower(checkpoint="all")` runs every block under activation checkpointing, together with the
# pooling, up-sampling and merge that feed only it: only the inputs are kept for the backward
# pass, the activations are recomputed there. The gradients are the plain module's, the
# `state_dict` keys are unchanged, and autograd keeps far less between the forward and the
# backward pass.

# %%
checkpointed = g.lower(checkpoint="all")
checkpointed.load_state_dict(model.state_dict())
model.train()
x, y = train_x[:16], train_y[:16]


def gradients_and_saved(module: torch.nn.Module) -> tuple[dict, int]:
    module.zero_grad(set_to_none=True)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(module(x), y)
    loss.backward()
    return {k: p.grad for k, p in module.named_parameters()}, saved[0]


plain_grads, plain_saved = gradients_and_saved(model)
ckpt_grads, ckpt_saved = gradients_and_saved(checkpointed)
same = all(torch.equal(plain_grads[k], ckpt_grads[k]) for k in plain_grads)
print(f"checkpointed nodes: {', '.join(ug.lowered_record(checkpointed).checkpoint)}")
print(f"gradients equal: {same}; saved for backward: {plain_saved / 2**20:.1f} MB → {ckpt_saved / 2**20:.1f} MB")

# %% [markdown]
# ## Save and load
#
# `ug.save_model` writes a folder anyone who uses the Hugging Face Hub knows: `config.json` (the
# graph document), `model.safetensors` and `unetgraph.json`. `ug.load_model` rebuilds the module
# without unpickling anything and gives the same predictions.

# %%
import tempfile

folder = ug.save_model(model, Path(tempfile.mkdtemp()) / "shapes_unet")
print(sorted(p.name for p in folder.iterdir()))
loaded = ug.load_model(folder).eval()
with torch.no_grad():
    print("same predictions:", torch.equal(loaded(test_x[:8]), model.eval()(test_x[:8])))
