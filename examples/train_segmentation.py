"""Train a unetgraph U-Net for segmentation on one or several processes with torch's own engines.

    python examples/train_segmentation.py                               # one process
    torchrun --nproc_per_node=2 examples/train_segmentation.py          # 2 processes: gloo on CPU
    torchrun --nproc_per_node=8 examples/train_segmentation.py --fsdp   # 8 GPUs: NCCL, FSDP2 per node

The same file runs on CPUs and GPUs: the backend is NCCL when CUDA is available, else gloo. The
data set is synthetic (disks and squares on noise, three classes) so the script runs anywhere;
swap ``ShapesDataset`` for your own. See docs/training.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import unetgraph as ug


class ShapesDataset(Dataset):
    """Noisy images with a disk and a square each; labels 0 (background), 1 (disk), 2 (square).
    Item ``i`` is the same on every process (its own random generator), so a sampler can split them."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        s = self.size
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        mask = torch.zeros(s, s, dtype=torch.long)
        r = int(torch.randint(s // 10, s // 5, (), generator=gen))
        cy, cx = (int(v) for v in torch.randint(r, s - r, (2,), generator=gen))
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        h = int(torch.randint(s // 8, s // 4, (), generator=gen))
        y0, x0 = (int(v) for v in torch.randint(0, s - h, (2,), generator=gen))
        mask[y0 : y0 + h, x0 : x0 + h] = 2
        image = 0.6 * (mask > 0).float() + 0.3 * torch.randn(s, s, generator=gen)
        return image[None], mask


def dice(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class Dice sums (intersection, total) over a batch, foreground classes only."""
    out = []
    for c in range(1, classes):
        p, t = pred == c, target == c
        out.append(torch.stack([2 * (p & t).sum(), p.sum() + t.sum()]).float())
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16, help="images per process and step")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--widths", type=str, default="16,32,64")
    parser.add_argument("--norm", choices=["group", "batch"], default="group")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 per graph node (ug.shard) instead of DDP")
    parser.add_argument("--checkpoint", default=None, help="activation checkpointing: 'all', a role, node names")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--save", default=None, help="save the trained model to this folder (ug.save_model)")
    args = parser.parse_args()

    distributed = "RANK" in os.environ  # set by torchrun
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local = 0, 1, 0
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        ug.keep_freed_memory()  # reuse freed activations' memory: no page faults after the first steps
    say = print if rank == 0 else (lambda *a, **k: None)

    widths = tuple(int(w) for w in args.widths.split(","))
    g = ug.unet(1, 3, widths=widths, block=ug.ConvBlock(norm=args.norm, groups=min(8, widths[0])))
    torch.manual_seed(0)  # the same initial weights on every process
    checkpoint = None if args.checkpoint is None else args.checkpoint.split(",")
    model = g.lower(device=device, checkpoint=checkpoint)
    if args.norm == "batch" and world > 1:
        if cuda:
            model = ug.sync_batchnorm(model)  # statistics over the global batch
        else:
            say("note: SyncBatchNorm runs on GPUs only; on CPU each process normalizes with its own batch")
    if args.fsdp and world > 1:
        model = ug.shard(model, per="node")
        trained = model
    elif world > 1:
        trained = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    else:
        trained = model
    step_fn = torch.compile(trained) if args.compile else trained
    opt = torch.optim.AdamW(trained.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1))))

    data = ShapesDataset(args.steps * args.batch * world, args.size, seed=1)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, drop_last=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    say(f"{world} process(es) on {device.type}, backend {dist.get_backend() if distributed else 'none'}; {g!r}")

    start = time.perf_counter()
    model.train()
    for step, (x, y) in enumerate(loader, 1):
        x, y = x.to(device), y.to(device)
        with autocast:
            loss = F.cross_entropy(step_fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == len(loader):
            say(
                f"step {step:4d}/{len(loader)}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f} s",
                flush=True,
            )

    # held-out Dice, summed over every process's share of the test images
    test = ShapesDataset(64 * world, args.size, seed=2)
    test_loader = DataLoader(test, batch_size=16, sampler=DistributedSampler(test, world, rank, shuffle=False))
    model.eval()
    totals = torch.zeros(2, 2, device=device)
    with torch.no_grad(), autocast:
        for x, y in test_loader:
            totals += dice(model(x.to(device)).argmax(1), y.to(device), 3)
    if distributed:
        dist.all_reduce(totals)
    scores = (totals[:, 0] / totals[:, 1].clamp(min=1)).tolist()
    say(f"held-out Dice: disk {scores[0]:.3f}, square {scores[1]:.3f}")

    if args.save:
        if args.fsdp and world > 1:  # gather the shards (every process takes part), then rank 0 writes
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if rank == 0:
                ug.save_model(g, args.save, weights=weights, overwrite=True)
        elif rank == 0:
            ug.save_model(model, args.save, overwrite=True)
        say(f"saved to {args.save}")
    if distributed:
        dist.barrier()  # every process leaves together: gloo aborts a process whose peer tears down mid-exchange
        dist.destroy_process_group()
        # Under FSDP the group outlives destroy_process_group, and so do gloo's worker threads (torch 2.14).
        # One that drops its last reference to a tensor while Python shuts down aborts the process
        # (pytorch/pytorch#190489; here about 1 run in 35). Everything is written: leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
