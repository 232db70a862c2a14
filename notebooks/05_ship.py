# %% [markdown]
# # Ship it: optimize, compile for every size, export, eject
#
# The last step of the flow: a lowered U-Net becomes a faster inference module, one compiled
# artifact for every valid input size, a `.pt2`/ONNX file for deployment, or plain PyTorch
# source you can hand to a colleague. (A small U-Net, so the notebook runs quickly on a CPU.)

# %%
import tempfile
from pathlib import Path

import torch

import unetgraph as ug

torch.manual_seed(0)
out = Path(tempfile.mkdtemp())
g = ug.unet(3, 2, widths=(16, 32, 64))
gm = g.lower().eval()
x = torch.randn(1, 3, 64, 64)

# %% [markdown]
# ## Inference passes
#
# `ug.optimize` runs plain passes over the GraphModule (drop dropout/identity, fold batch norm
# into the convolutions, fold constant subgraphs, merge sibling layers, remove dead nodes, fold
# upsamplings into the convolution after them, channels-last, and on the CPU keep convolution
# weights packed in oneDNN's layout with their activations fused) and reports what each one
# changed. `example_inputs` makes it check the outputs too.

# %%
fast, report = ug.optimize(gm, example_inputs=[x])
print(report.summary())
print(report["fold_batchnorm"].changes[:3])
print(report["channels_last"])
print(report["prepack"].changes[:3])

# %% [markdown]
# A diffusion U-Net gives `merge_siblings` work: every residual block applies its own SiLU and
# `Linear` to the same time embedding, and every attention reads one tensor with three `Linear`
# layers. The pass keeps one SiLU and stacks each group of `Linear` layers into one, the old
# nodes becoming views of its output under their own names.

# %%
diffusion = ug.diffusion_unet(
    3, widths=(16, 32), layers_per_block=1, resblock=ug.ResBlock(groups=8), attention=ug.SelfAttention(groups=8)
)
d_inputs = list(ug.example_inputs(diffusion, batch=1, size=(32, 32)).values())
d_fast, d_report = ug.optimize(diffusion.lower().eval(), example_inputs=d_inputs)
for line in d_report["merge_siblings"].changes[:3]:
    print(line)

# %% [markdown]
# Its upsampling blocks double the size, then convolve 3×3 at the fine size. `fold_upsampling`
# computes each such pair as four 2×2 convolutions of the *coarse* input, interleaved: the same
# values for about half the pair's arithmetic, as the FLOP counter shows. (The classic U-Net's
# transposed convolutions halve the channels, so there the pass leaves them and says why.)

# %%
print(d_report["fold_upsampling"])
for name, model in (("lowered", diffusion.lower().eval()), ("optimize()d", d_fast)):
    counter = ug.cost.flop_counter()
    with counter, torch.no_grad():
        model(*d_inputs)
    print(f"{name}: {counter.get_total_flops() / 1e6:.1f} MFLOP")
print(report["fold_upsampling"].notes[0])

# %% [markdown]
# Every default pass keeps the outputs equal within float32 rounding. `dtype=torch.bfloat16`
# opts into reduced precision for inference: convolutions, linear layers and attention compute
# in bfloat16 (about twice as fast on CPUs with AVX512-BF16 or AMX, and on CUDA tensor cores),
# norms keep float32, and casts sit exactly where dtypes meet. The report lists them and the
# price in accuracy.

# %%
fast16, report16 = ug.optimize(gm, dtype=torch.bfloat16, example_inputs=[x])
print(report16["reduced_precision"])
print(f"max |Δ| against float32: {report16.max_abs_diff:.1e}")

# %% [markdown]
# ## One compile for every valid size
#
# The checker knows which sizes fit; `ug.served_axes` turns that into the sizes one dynamic
# artifact serves, and `ug.export_shapes` into `torch.export` dimensions (`step * Dim`).

# %%
print(g.valid_sizes())
print([a.describe() for a in ug.served_axes(g)])
print(ug.export_shapes(g))

# %% [markdown]
# `ug.compile` checks each input with the checker's rules, marks its spatial axes dynamic and
# counts the graphs it compiles: one graph serves all these sizes. For a model in eval mode it
# freezes the weights into the compiled code (prepacked for oneDNN, fused with activations).

# %%
compiled = ug.compile(fast)
with torch.no_grad():
    for size in (32, 48, 96):
        y = compiled(torch.randn(2, 3, size, size))
        print(size, tuple(y.shape), "graphs compiled so far:", compiled.compilations)
try:
    compiled(torch.randn(2, 3, 50, 50))
except ug.ShapeError as e:
    print("ShapeError:", e)

# %% [markdown]
# ## The fast mode: static size buckets
#
# A dynamic graph cannot keep convolution weights packed (inductor packs them only for shapes it
# knows). When the sizes you serve are known, `sizes=` compiles static, frozen, prepacked code
# per bucket. This U-Net pads its convolutions, so padding a smaller input up to a bucket would
# change its output: sizes without a bucket are refused, with the layer that makes it so.

# %%
fastest = ug.compile(fast, sizes=[64])
with torch.no_grad():
    print("64×64:", tuple(fastest(x).shape), "max |Δ|", (fastest(x) - gm(x)).abs().max().item())
print("graphs:", fastest.compilations)
try:
    fastest(torch.randn(1, 3, 48, 48))
except ug.ShapeError as e:
    print("ShapeError:", e)

# %% [markdown]
# ## Large activations on the CPU: keep freed memory
#
# glibc hands every block above 32 MiB straight back to the kernel when it is freed, so a model
# whose maps are larger (here 16 channels of four 512² images: 67 MB) gets fresh pages for each
# of them in every forward, and the kernel faults in and zeroes every page. `ug.keep_freed_memory()`
# keeps freed memory for the next forward, at the price of a higher peak of resident memory (the
# heap keeps holes between blocks of changing sizes). It changes the whole process, like
# `torch.set_num_threads`: call it once in a process that serves inference.

# %%
import resource
import time

big = torch.randn(4, 3, 512, 512)


def forward_cost() -> tuple[float, int]:
    """Seconds and minor page faults of one forward, after two that let the heap settle."""
    with torch.no_grad():
        fast(big)
        fast(big)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        fast(big)
        return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


seconds, faults = forward_cost()
print(f"glibc's defaults:  {seconds:.3f} s, {faults / 1e3:.1f} thousand page faults per forward")
print("keep_freed_memory:", ug.keep_freed_memory())
seconds, faults = forward_cost()
print(f"freed memory kept: {seconds:.3f} s, {faults / 1e3:.1f} thousand page faults per forward")

# %% [markdown]
# ## Export: `torch.export` program and ONNX
#
# Both are dynamic in batch and size and carry the size rules, so the loaded model refuses a
# bad size with the checker's words. Loading runs nothing from the file: it is read once, checked
# entry by entry, and torch gets only the checked bytes. (`format="aoti"` builds an AOTInductor
# package the same way, one compiled artifact for every size; it is machine code, so it loads only
# with `ug.load_exported(path, native=True)`, for packages you trust.)

# %%
program = ug.load_exported(ug.export(fast, out / "unet.pt2", progress=False))
onnx_model = ug.load_exported(ug.export(fast, out / "unet.onnx", progress=False))
print(onnx_model)
with torch.no_grad():
    for shape in [(1, 3, 32, 32), (3, 3, 64, 48)]:
        xi = torch.randn(shape)
        ref = gm(xi)
        print(
            shape,
            "pt2 max|Δ|",
            (program(xi) - ref).abs().max().item(),
            "onnx max|Δ|",
            (onnx_model(xi) - ref).abs().max().item(),
        )

# %% [markdown]
# A damaged or doctored file is one `ug.ArtifactError` naming the file and the entry, never
# silently wrong outputs: here one flipped bit in the middle of the archive, inside a weight.

# %%
damaged = bytearray((out / "unet.pt2").read_bytes())
damaged[len(damaged) // 2] ^= 0x40
(out / "damaged.pt2").write_bytes(bytes(damaged))
try:
    ug.load_exported(out / "damaged.pt2")
except ug.ArtifactError as e:
    print("ArtifactError:", str(e).replace(str(out), "…"))

# %% [markdown]
# ## Eject: plain PyTorch source
#
# `ug.eject` writes one readable `nn.Module` with the graph's names, shape comments, and the
# same `state_dict` keys; it imports only torch.

# %%
path = ug.eject(g, out / "my_unet.py")
source = path.read_text()
main = source[source.index("class UNet") :]
print(main[main.index("    def forward") :])
print("mentions unetgraph:", "unetgraph" in source)

# %%
namespace = {}
exec(source, namespace)
mine = namespace["UNet"]()
mine.load_state_dict(gm.state_dict())
mine.eval()
with torch.no_grad():
    print("ejected == lowered:", torch.equal(mine(x), gm(x)))
