# %% [markdown]
# # 08 · Train a small diffusion U-Net
#
# `ug.diffusion_unet` builds the conditioned U-Nets of denoising diffusion models (residual
# blocks that take the timestep's embedding). This notebook trains a small one as a DDPM
# (Ho et al. 2020: predict the noise added at a random timestep) on a synthetic data set of
# disks, then samples new images from pure noise with diffusers' `DDPMScheduler`. A few hundred
# steps on a CPU are enough for samples that look like the data.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

import unetgraph as ug

torch.manual_seed(0)
FIGURES = Path("../docs/figures") if Path("../docs/figures").is_dir() else Path(".")
SIZE = 16

# %% [markdown]
# ## Data: one disk per image
#
# White disks of random radius and position on black, scaled to [-1, 1] as diffusion models expect.


# %%
def make_disks(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = 2.5 + 3 * torch.rand(n, 1, 1, generator=gen)
    cy = r + (size - 2 * r) * torch.rand(n, 1, 1, generator=gen)
    cx = r + (size - 2 * r) * torch.rand(n, 1, 1, generator=gen)
    disks = (((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() <= r).float()
    return (2 * disks - 1)[:, None]


data = make_disks(4000)


def show_grid(images: torch.Tensor, title: str, path: Path | None = None) -> None:
    fig, axes = plt.subplots(2, 8, figsize=(8, 2.3))
    for ax, img in zip(axes.flat, images):
        ax.imshow(img[0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(title)
    plt.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    plt.show()


show_grid(data[:16], "training images")

# %% [markdown]
# ## The model
#
# Two levels of residual blocks (16 and 32 channels) conditioned on the timestep, no attention:
# `forward(x, t)`. The graph is checked and lowered like any other.

# %%
g = ug.diffusion_unet(
    1,
    widths=(16, 32),
    layers_per_block=1,
    attention_levels=(),
    mid_attention=False,
    resblock=ug.ResBlock(groups=4),
    time_embedding=ug.TimestepEmbedding(dim=16, channels=64),
    name="DiskDiffusion",
)
print(g)
model = g.lower()

# %% [markdown]
# The scheduler's forward process: the same image with more and more noise as the timestep grows.

# %%
scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
ts = torch.tensor([0, 100, 250, 400, 550, 700, 850, 999])
noised = scheduler.add_noise(data[:1].expand(8, -1, -1, -1), torch.randn(8, 1, SIZE, SIZE), ts)
fig, axes = plt.subplots(1, 8, figsize=(8, 1.4))
for ax, img, t in zip(axes, noised, ts):
    ax.imshow(img[0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"t={t.item()}", fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Training
#
# Each step takes a batch of images, a random timestep per image and Gaussian noise, noises the
# images with the scheduler's schedule and regresses the noise (mean squared error).

# %%
steps, batch = 500, 64
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
losses: list[float] = []
start = time.perf_counter()
for step in range(1, steps + 1):
    x0 = data[torch.randint(0, len(data), (batch,))]
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
    loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()
    losses.append(loss.item())
    if step % 100 == 0:
        print(f"step {step:4d}  loss {sum(losses[-100:]) / 100:.4f}  {time.perf_counter() - start:6.1f} s")

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses, lw=0.5, alpha=0.5)
smooth = torch.tensor(losses).unfold(0, 50, 1).mean(1)
ax.plot(range(49, 49 + len(smooth)), smooth, lw=2)
ax.set(xlabel="step", ylabel="noise MSE", yscale="log", title="training loss")
plt.tight_layout()
fig.savefig(FIGURES / "train_diffusion_loss.png", dpi=110)
plt.show()

# %% [markdown]
# ## Sampling
#
# Start from pure noise and let the scheduler remove the predicted noise step by step (100 of
# the 1,000 training timesteps, evenly spaced).

# %%
model.eval()
scheduler.set_timesteps(100)
x = torch.randn(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
start = time.perf_counter()
with torch.no_grad():
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
        if (i + 1) % 25 == 0:
            print(f"sampling step {i + 1}/100  {time.perf_counter() - start:4.1f} s")
show_grid(x, "samples", FIGURES / "train_diffusion_samples.png")

# %% [markdown]
# How much do the samples look like disks? Each sample is thresholded at 0 and compared with
# the disk of the same area and centre: the share of pixels that agree (1.0 for a perfect disk).


# %%
def disk_likeness(images: torch.Tensor) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(SIZE).float(), torch.arange(SIZE).float(), indexing="ij")
    out = []
    for img in images[:, 0] > 0:
        area = img.sum()
        if area == 0:
            out.append(torch.tensor(0.0))
            continue
        cy, cx = (yy * img).sum() / area, (xx * img).sum() / area
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= area / torch.pi
        out.append((disk == img).float().mean())
    return torch.stack(out)


print(f"training images: {disk_likeness(data[:16]).mean():.3f}")
print(f"pure noise:      {disk_likeness(torch.randn(16, 1, SIZE, SIZE)).mean():.3f}")
print(f"samples:         {disk_likeness(x).mean():.3f}")
assert disk_likeness(x).mean() >= 0.9, "the samples should look like disks"
