"""Run by tests/test_distributed.py under torchrun (2 processes, gloo, CPU).

Each scenario trains one step of a lowered module under DistributedDataParallel or FSDP2, each
process on its half of a global batch, and compares the gradients and the parameters after one
Adam step with a single-process run on the whole batch. Rank 0 writes the results as JSON to
the path given as the only argument.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import unetgraph as ug

BATCH = 4


def seg_graph() -> ug.UNetGraph:
    return ug.unet(1, 3, widths=(8, 16, 32), block=ug.ConvBlock(norm="group", groups=4))


def diffusion_graph() -> ug.UNetGraph:
    return ug.diffusion_unet(
        3,
        widths=(8, 16),
        layers_per_block=1,
        resblock=ug.ResBlock(groups=4),
        attention=ug.SelfAttention(groups=4),
        time_embedding=ug.TimestepEmbedding(dim=8, channels=16),
        num_classes=5,
    )


def seg_batch() -> tuple[torch.Tensor, ...]:
    return torch.randn(BATCH, 1, 30, 30), torch.randint(0, 3, (BATCH, 30, 30))


def diffusion_batch() -> tuple[torch.Tensor, ...]:
    g = diffusion_graph()
    inputs = tuple(ug.example_inputs(g, batch=BATCH, size=(16, 16)).values())
    return (*inputs, torch.randn(BATCH, 3, 16, 16))


def loss_of(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    *inputs, target = batch
    out = model(*inputs)
    if target.dtype == torch.int64:
        return nn.functional.cross_entropy(out, target)
    return nn.functional.mse_loss(out, target)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def name_of(key: str) -> str:
    return key.removeprefix("module.").removeprefix("_orig_mod.")


def compare(
    make: Callable[[], nn.Module], wrap: Callable[[nn.Module], nn.Module], batch: Callable[[], tuple], rank: int
) -> dict[str, float]:
    torch.manual_seed(0)
    reference = make()
    model = copy.deepcopy(reference)
    data = batch()  # the same global batch on every process (same seed)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    loss_of(reference, data).backward()
    ref_grads = {k: p.grad.clone() for k, p in reference.named_parameters()}
    ref_opt.step()
    ref_params = {k: p.detach().clone() for k, p in reference.named_parameters()}

    wrapped = wrap(model)
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-3)
    half = BATCH // dist.get_world_size()
    local = tuple(t[rank * half : (rank + 1) * half] for t in data)
    loss_of(wrapped, local).backward()
    grads = {name_of(k): full(p.grad) for k, p in wrapped.named_parameters()}
    opt.step()
    params = {name_of(k): full(p.detach()) for k, p in wrapped.named_parameters()}
    local_numel = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in wrapped.parameters())
    assert grads.keys() == ref_grads.keys(), sorted(set(grads) ^ set(ref_grads))
    # Adam's first step is lr * g / (|g| + eps): where the true gradient is zero (an attention key's
    # bias: softmax ignores it) both runs hold rounding noise (~1e-10) that Adam scales up to a step
    # of any sign; those elements are compared against the step size, the others exactly
    signal = {k: g.abs() > 1e-7 for k, g in ref_grads.items()}
    return {
        "grad_error": max((grads[k] - g).abs().max().item() for k, g in ref_grads.items()),
        "grad_scale": max(g.abs().max().item() for g in ref_grads.values()),
        "param_error": max(((params[k] - p).abs() * signal[k]).max().item() for k, p in ref_params.items()),
        "noise_param_error": max(((params[k] - p).abs() * ~signal[k]).max().item() for k, p in ref_params.items()),
        "noise_elements": sum(int((~s).sum()) for s in signal.values()),
        "lr": 1e-3,
        "local_fraction": local_numel / sum(p.numel() for p in ref_params.values()),
        "tensors": len(ref_grads),
    }


SCENARIOS = {
    "ddp_groupnorm": (lambda: seg_graph().lower(pad="auto"), DistributedDataParallel, seg_batch),
    "ddp_checkpointed": (lambda: seg_graph().lower(pad="auto", checkpoint="all"), DistributedDataParallel, seg_batch),
    "ddp_diffusion": (lambda: diffusion_graph().lower(), DistributedDataParallel, diffusion_batch),
    "fsdp_per_node": (lambda: seg_graph().lower(pad="auto"), lambda m: ug.shard(m, per="node"), seg_batch),
    "fsdp_per_level_checkpointed_diffusion": (
        lambda: diffusion_graph().lower(checkpoint="all"),
        lambda m: ug.shard(m, per="level"),
        diffusion_batch,
    ),
}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        results = {"world_size": dist.get_world_size()}
        for name, (make, wrap, batch) in SCENARIOS.items():
            results[name] = compare(make, wrap, batch, rank)
        if rank == 0:
            out.write_text(json.dumps(results, indent=1))
        dist.barrier()  # leave together: gloo aborts a process whose peer tears down mid-exchange
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # FSDP keeps the gloo group's worker threads alive past destroy_process_group; one that releases a
    # tensor while Python shuts down aborts the process (pytorch/pytorch#190489). Leave without teardown,
    # as examples/train_segmentation.py does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
