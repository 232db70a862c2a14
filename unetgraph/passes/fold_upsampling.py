"""Fold a 2× upsampling into the 3×3 convolution that reads it (a sub-pixel convolution).

A decoder level upsamples by 2 (nearest neighbour, or a 2×2 stride-2 transposed convolution)
and then runs a 3×3 convolution at the fine resolution. Both are linear, so each of the 2^D
output phases (even or odd position along every axis) of the pair is a 2×2 convolution of the
*coarse* input. Computing the phases at the coarse resolution and interleaving them gives the
same values for a fraction of the arithmetic: for the 3D U-Net's levels (a transposed
convolution of C channels, then 3×3×3 from them and the skip), about a third of the pair's
FLOPs; after a nearest upsampling, (4/9)·((s + 1)/s)² in 2D. Zero padding carries over exactly
(a zero coarse border upsamples to a zero fine border), and a transposed convolution's bias
rides along as a constant input channel of ones, so the borders stay exact too.

Where the phases do not save enough (a transposed convolution that halves the channels, as in
the classic U-Net: about three quarters of the FLOPs), the pass leaves the pair alone and says so.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..blocks.layers import CenterCrop
from ..errors import LoweringError, ShapeError
from .base import PassResult, has_submodule, held_by, hold, refuse_input, target_of
from .prepack import PackedConv, _packable

__all__ = ["fold_upsampling", "unfold_upsampling", "UpsampledConv", "has_folds", "PAYS"]

# fold where the phases need at most this share of the pair's FLOPs (the rest pays for the
# interleaving copy and the extra coarse row per axis); decided per call from the input's size
PAYS = 0.6
_LARGE = 1 << 12  # a coarse size at which the extra row no longer counts (the pass's "any size")
_CONVS: dict[int, type[nn.Conv2d] | type[nn.Conv3d]] = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)

Transposed = nn.ConvTranspose2d | nn.ConvTranspose3d


def _phase_map() -> torch.Tensor:
    """``M[a, t, s, d]`` is 1 where, at output phase ``a``, the fine offset ``d - 1`` reads
    kernel tap ``t`` of the phase convolution (coarse offset ``t - 1 + a``) at sub-position
    ``s`` of the upsampling."""
    m = torch.zeros(2, 2, 2, 3)
    for a in (0, 1):
        for d in (-1, 0, 1):
            coarse, sub = divmod(a + d, 2)
            m[a, coarse + 1 - a, sub, d + 1] = 1.0
    return m


class UpsampledConv(nn.Module):
    """A 3×3 convolution (stride 1, padding 1) of a 2× upsampled input, possibly concatenated
    with other inputs, computed as 2×2 convolutions of the coarse input (see the module doc).

    It holds the convolution's ``weight`` and ``bias`` under the convolution's path, and the
    upsampling module stays at its own path (``reads``), so the ``state_dict`` keeps its keys.
    The phase kernel is derived from both (oneDNN-packed on the CPU) and remade when either
    changes in place or the module moves; under ``torch.compile``/``torch.export`` the graph
    computes it from the weights (inductor's freezing does that once). While autograd records,
    or where the phases do not pay at the input's size (:data:`PAYS`), it computes the plain
    way: upsample, concatenate, convolve.

    ``forward(x, *others)``: ``x`` the coarse input; ``others`` the concatenation's other inputs
    in order (a ``"crop"`` slot is centre-cropped to the upsampled size, as the merge did).
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, up: nn.Module, up_target: str, slots: tuple[str, ...]) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.dims = conv.weight.dim() - 2
        self.padding_arg: Any = conv.padding  # as the convolution was built (1s or "same")
        self.slots = slots  # per concatenated input: "up", "part" or "crop"
        self.reads = (up_target,)  # paths used besides its own (remove_dead_nodes keeps them)
        self.__dict__["_up"] = up  # not a child: it keeps its own path and state_dict keys
        self.node = ""  # the fx node that calls it (the convolution's), for errors
        self.original: dict[str, Any] = {}  # the nodes the fold replaced, for unfold_upsampling
        # a buffer, not a constant of the code: freezing then computes the traced kernel once
        self.register_buffer("phase_map", _phase_map(), persistent=False)
        self._cache: tuple[nn.Module | None, nn.Module | None, tuple[Any, ...]] = (None, None, ())

    @property
    def up(self) -> nn.Module:
        """The upsampling module (``nn.Upsample`` or a transposed convolution)."""
        up: nn.Module = self.__dict__["_up"]
        return up

    @property
    def transposed_up(self) -> Transposed | None:
        """The transposed convolution that upsamples, or ``None`` for a nearest upsampling."""
        up = self.up
        return up if isinstance(up, _TRANSPOSED) else None

    # -- the plain way ---------------------------------------------------------------------

    def _parts(self, x: torch.Tensor, others: tuple[torch.Tensor, ...]) -> list[torch.Tensor | None]:
        """The concatenation's inputs, ``None`` for the upsampled one."""
        fine = [2 * s for s in x.shape[2:]]  # SymInts under a dynamic compile: no int()
        if len(others) != len(self.slots) - 1:
            raise LoweringError(
                f"{self.node}: the folded convolution takes the coarse input and {len(self.slots) - 1} more "
                f"({', '.join(self.slots)}), got {1 + len(others)} inputs",
                node=self.node,
            )
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self._check(x, others)
        parts: list[torch.Tensor | None] = []
        rest = iter(others)
        for slot in self.slots:
            if slot == "up":
                parts.append(None)
                continue
            t = next(rest)
            if slot == "crop":
                for axis, size in enumerate(fine, start=2):
                    t = t.narrow(axis, (t.shape[axis] - size) // 2, size)
            parts.append(t)
        return parts

    def _check(self, x: torch.Tensor, others: tuple[torch.Tensor, ...]) -> None:
        """A :class:`ShapeError` naming the node for inputs the pair could not take (torch's own
        errors would name neither), checked eagerly: a lowered module's input guard covers traces."""
        d, axes = self.dims, ", ".join("DHW"[3 - self.dims :])
        if x.dim() != d + 2:
            refuse_input(self.node, f"(N, C, {axes})", tuple(x.shape), "the coarse input")
        up = self.transposed_up
        slots = [slot for slot in self.slots if slot != "up"]
        known = sum(int(p.shape[1]) for p in others if p.dim() == d + 2)
        channels = int(up.in_channels) if up is not None else int(self.weight.shape[1]) - known
        if int(x.shape[1]) != channels:
            refuse_input(self.node, f"(N, {channels}, {axes})", tuple(x.shape), "the coarse input")
        fine = tuple(2 * int(s) for s in x.shape[2:])
        for p, slot in zip(others, slots):
            at_least = " or larger (centre-cropped)" if slot == "crop" else ""
            size = ", ".join(map(str, fine))
            wrong = any(s < f if slot == "crop" else s != f for s, f in zip(p.shape[2:], fine))
            if p.dim() != d + 2 or p.shape[0] != x.shape[0] or wrong:
                refuse_input(self.node, f"({x.shape[0]}, C, {size}){at_least}", tuple(p.shape), "each other input")
        up_channels = int(up.out_channels) if up is not None else channels
        if up_channels + known != int(self.weight.shape[1]):
            got = ", ".join(str(int(p.shape[1])) for p in others)
            raise ShapeError(
                f"{self.node}: the other inputs have {got} channels, expected "
                f"{int(self.weight.shape[1]) - up_channels} in all",
                node=self.node,
            )

    def _plain(self, x: torch.Tensor, parts: list[torch.Tensor | None], packed: bool) -> torch.Tensor:
        u = self.up(x)
        full = [u if p is None else p for p in parts]
        joined = full[0] if len(full) == 1 else torch.cat(full, 1)
        if packed:
            return self._plain_conv()(joined)
        conv = F.conv2d if self.dims == 2 else F.conv3d
        return conv(joined, self.weight, self.bias, 1, self.padding_arg)

    def _plain_conv(self) -> nn.Module:
        """The convolution, packed where :class:`PackedConv` packs (it follows the weight itself)."""
        conv: nn.Module | None = self.__dict__.get("_plain_packed")
        if conv is None:
            conv = _packed(self.to_plain())
            self.__dict__["_plain_packed"] = conv
        return conv

    # -- the folded way --------------------------------------------------------------------

    def _widths(self, parts: list[torch.Tensor | None]) -> tuple[int, ...]:
        """Each concatenated input's channels (the upsampled one's: what the weight has left)."""
        known = sum(int(p.shape[1]) for p in parts if p is not None)
        return tuple(int(self.weight.shape[1]) - known if p is None else int(p.shape[1]) for p in parts)

    def pays(self, size: Sequence[Any], channels: int, up_channels: int) -> bool:
        """Whether the phases need at most :data:`PAYS` of the pair's FLOPs at coarse ``size``,
        for ``channels`` coarse channels upsampled to ``up_channels``."""
        out, d = int(self.weight.shape[0]), self.dims
        coarse = fine = padded = 1
        for s in size:
            coarse, fine, padded = coarse * s, fine * 2 * s, padded * (s + 1)
        upsampling = channels * up_channels * 2**d * coarse if self.transposed_up is not None else 0
        phases = (channels + self._ones()) * out * 4**d * padded
        return phases <= PAYS * (upsampling + up_channels * out * 3**d * fine)

    def _ones(self) -> int:
        """1 where a transposed convolution's bias rides along as a channel of ones."""
        up = self.transposed_up
        return int(up is not None and up.bias is not None)

    def _versions(self) -> tuple[int, ...]:
        tensors = [self.weight, self.bias, getattr(self.up, "weight", None), getattr(self.up, "bias", None)]
        present = [t for t in tensors if isinstance(t, torch.Tensor)]
        return (*(t._version for t in present), *(id(t) for t in present))

    def phase_kernel(self, widths: tuple[int, ...]) -> torch.Tensor:
        """The phase convolution's weight: ``2^D · out`` channels (the phases in reverse order,
        see :meth:`_interleave`), the coarse input's channels (+1 for a transposed convolution's
        bias), 2×…×2. Computed in float32, returned in the weight's dtype."""
        d, w = self.dims, self.weight.detach().float()
        k = self.slots.index("up")
        up_part = w.narrow(1, sum(widths[:k]), widths[k])
        m = self.get_buffer("phase_map").to(device=w.device, dtype=torch.float32)
        taps = "".join(f"{t}{s}{t.upper()}," for t, s in zip("xyz"[:d], "uvw"))
        axes = "xyz"[:d]
        operands = [up_part]
        up = self.transposed_up
        if up is not None:
            wt = up.weight.detach().float()
            if up.bias is not None:  # a channel of ones carries the bias through every tap
                ones = up.bias.detach().float().view(1, -1, *(1,) * d).expand(1, -1, *(2,) * d)
                wt = torch.cat([wt, ones], 0)
            operands.append(wt)
            spec = f"{taps}co{axes.upper()},io{'uvw'[:d]}->ci{axes}"
        else:
            spec = f"{taps}co{axes.upper()}->co{axes}"
        phases = itertools.product((1, 0), repeat=d)
        kernels = [torch.einsum(spec, *[m[a] for a in phase], *operands) for phase in phases]
        return torch.cat(kernels, 0).to(self.weight.dtype)

    def _current(self, widths: tuple[int, ...], fmt: torch.memory_format) -> tuple[nn.Module, nn.Module | None]:
        """The phase convolution and the convolution of the other inputs, remade when a weight changed."""
        phases, rest, key = self._cache
        now = (*self._versions(), *widths, fmt)
        if phases is None or key != now:
            with torch.no_grad():
                kernel = self.phase_kernel(widths).contiguous(memory_format=fmt)
                bias = None if self.bias is None else self.bias.detach().repeat(2**self.dims)
                phases = _packed(_fixed(kernel, bias))
                pieces = torch.split(self.weight.detach(), list(widths), dim=1)
                kept = [p for p, slot in zip(pieces, self.slots) if slot != "up"]
                rest = _packed(_fixed(torch.cat(kept, 1).contiguous(memory_format=fmt), None)) if kept else None
            self._cache = (phases, rest, now)  # one assignment: a concurrent call sees old or new
        return phases, rest

    def _interleave(self, out: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
        """The fine tensor from the phases. ``out``'s channels are (phase, channel) with the
        phases reversed, so the shuffled grid holds phase ``a`` of window ``k`` at ``2k + 1 - a``;
        fine position ``2i + a`` reads window ``i + a``, so the fine tensor is the grid shifted
        by one. The result has ``out``'s layout (channels-last stays channels-last)."""
        d, n, c = self.dims, out.shape[0], out.shape[1] // 2**self.dims
        grid = out.unflatten(1, (2,) * d + (c,))  # (N, 2, …, 2, C, S, …, S)
        order = [0, *(i for k in range(d) for i in (d + 2 + k, 1 + k)), d + 1]  # (N, S, 2, …, S, 2, C)
        shuffled = grid.permute(order).reshape(n, *(2 * s for s in out.shape[2:]), c)
        fine = shuffled.permute(0, d + 1, *range(1, d + 1))
        for axis, s in enumerate(size, start=2):
            fine = fine.narrow(axis, 1, 2 * s)
        return fine

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        parts = self._parts(x, others)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._plain(x, parts, packed=False)
        traced = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        widths = self._widths(parts)
        size = tuple(x.shape[2:])  # SymInts under a dynamic compile: no int()
        if not self.pays(size, int(x.shape[1]), widths[self.slots.index("up")]):
            return self._plain(x, parts, packed=not traced)
        coarse = torch.cat([x, torch.ones_like(x[:, :1])], 1) if self._ones() else x
        rest = [p for p in parts if p is not None]
        joined = None if not rest else rest[0] if len(rest) == 1 else torch.cat(rest, 1)
        if traced:  # the kernel from the weights in the graph (freezing computes it once)
            conv = F.conv2d if self.dims == 2 else F.conv3d
            bias = None if self.bias is None else self.bias.repeat(2**self.dims)
            fine = self._interleave(conv(coarse, self.phase_kernel(widths), bias, 1, 1), size)
            if joined is None:
                return fine
            kept = [p for p, slot in zip(torch.split(self.weight, list(widths), dim=1), self.slots) if slot != "up"]
            return conv(joined, torch.cat(kept, 1), None, 1, 1) + fine
        fmt = torch.channels_last if self.dims == 2 else torch.channels_last_3d
        if not x.is_contiguous(memory_format=fmt):
            fmt = torch.contiguous_format
        phases, rest_conv = self._current(widths, fmt)
        fine = self._interleave(phases(coarse), size)
        if rest_conv is None or joined is None:
            return fine
        return rest_conv(joined) + fine

    def to_plain(self) -> nn.Conv2d | nn.Conv3d:
        """The convolution: a new ``nn.Conv2d``/``nn.Conv3d`` sharing this module's parameters."""
        out, channels = int(self.weight.shape[0]), int(self.weight.shape[1])
        conv = _CONVS[self.dims](channels, out, 3, padding=self.padding_arg, bias=self.bias is not None, device="meta")
        conv.weight = self.weight
        conv.bias = self.bias
        return conv

    def _apply(self, fn: Any, recurse: bool = True) -> UpsampledConv:
        super()._apply(fn, recurse)
        self._cache = (None, None, ())  # a move or cast: remade at the next call
        self.__dict__.pop("_plain_packed", None)
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_cache": (None, None, ())}
        state.pop("_plain_packed", None)  # oneDNN's tensors do not pickle or deepcopy: remade at the next call
        return state

    def extra_repr(self) -> str:
        kind = type(self.up).__name__ if self.transposed_up is not None else "nearest 2×"
        shape = f"{self.weight.shape[1]}→{self.weight.shape[0]}"
        return f"{kind} → 3×3 convolution {shape}, inputs {', '.join(self.slots)}"


def _fixed(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d | nn.Conv3d:
    """A convolution (stride 1, padding 1) with these weights, which no optimizer sees."""
    out, cin = weight.shape[:2]
    conv = _CONVS[weight.dim() - 2](cin, out, int(weight.shape[-1]), padding=1, bias=bias is not None, device="meta")
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    return conv


def _packed(conv: nn.Conv2d | nn.Conv3d) -> nn.Module:
    """``conv`` as a :class:`PackedConv` where oneDNN packs its weight (CPU, float32/bfloat16)."""
    if conv.weight.device.type != "cpu" or not _packable(conv.weight.dtype):
        return conv
    return PackedConv(conv)


# -- the pass --------------------------------------------------------------------------------


def _doubles(gm: fx.GraphModule, node: fx.Node, dims: int) -> bool:
    """Whether ``node`` upsamples by exactly 2 with a module whose arithmetic the fold knows
    (exact types: a subclass may compute something else)."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return False
    m = gm.get_submodule(target_of(node))
    if isinstance(m, nn.Upsample) and type(m) is nn.Upsample:
        scale = m.scale_factor
        factors = scale if isinstance(scale, tuple) else (scale,) * dims
        return m.mode == "nearest" and m.size is None and len(factors) == dims and all(f == 2 for f in factors)
    if isinstance(m, _TRANSPOSED) and type(m) in _TRANSPOSED:
        return (
            m.weight.dim() == dims + 2
            and m.groups == 1
            and all(k == 2 for k in m.kernel_size)
            and all(s == 2 for s in m.stride)
            and not any(m.padding)
            and not any(m.output_padding)
            and all(v == 1 for v in m.dilation)
            and m.padding_mode == "zeros"
        )
    return False


def _three_by_three(conv: nn.Module) -> bool:
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or type(conv) not in (nn.Conv2d, nn.Conv3d):
        return False
    dims = conv.weight.dim() - 2
    padding = (1,) * dims if conv.padding == "same" else tuple(conv.padding)
    return (
        all(k == 3 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and padding == (1,) * dims
        and all(v == 1 for v in conv.dilation)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class _Match:
    """A convolution node the fold takes: the upsampling it reads, the concatenation (or
    ``None``), and the crops that read the upsampling's size."""

    def __init__(self, up: fx.Node, cat: fx.Node | None, crops: list[fx.Node]) -> None:
        self.up, self.cat, self.crops = up, cat, crops

    @property
    def tensors(self) -> list[fx.Node]:
        if self.cat is None:
            return [self.up]
        return [t for t in self.cat.args[0] if isinstance(t, fx.Node)]  # type: ignore[union-attr]


def _match(gm: fx.GraphModule, node: fx.Node) -> _Match | None:
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    conv = gm.get_submodule(target_of(node))
    calls = sum(n.op == "call_module" and n.target == node.target for n in gm.graph.nodes)
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or not _three_by_three(conv) or calls != 1:
        return None
    dims = conv.weight.dim() - 2
    (src,) = node.args
    if not isinstance(src, fx.Node):
        return None
    if _doubles(gm, src, dims):
        return _Match(src, None, []) if len(src.users) == 1 else None
    if src.op != "call_function" or src.target is not torch.cat or len(src.users) != 1:
        return None
    tensors = src.args[0] if src.args else None
    dim = src.kwargs.get("dim", src.args[1] if len(src.args) > 1 else 0)
    if dim != 1 or not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
        return None
    ups = [t for t in tensors if isinstance(t, fx.Node) and _doubles(gm, t, dims)]
    if len(ups) != 1 or list(tensors).count(ups[0]) != 1:
        return None
    up, crops = ups[0], []
    for user in up.users:
        if user is src:
            continue
        crop = user.op == "call_module" and isinstance(gm.get_submodule(target_of(user)), CenterCrop)
        if not (crop and user.args[1:] == (up,) and list(user.users) == [src] and list(tensors).count(user) == 1):
            return None  # something else reads the upsampled tensor: it must exist
        crops.append(user)
    return _Match(up, src, crops)


def _saved(gm: fx.GraphModule, node: fx.Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "target": node.target if node.op == "call_module" else None,
        "custom": dict(node.meta.get("custom", {})),
        "held": held_by(gm, node.name),
    }


def fold_upsampling(gm: fx.GraphModule) -> PassResult:
    """In place: each 3×3 convolution (stride 1, padding 1) that alone reads a 2× nearest
    upsampling or a 2×2 stride-2 transposed convolution (directly, or through a merge's channel
    concatenation, with its crops) becomes an :class:`UpsampledConv` under the same path and
    node name, which computes the pair at the coarse resolution where that needs at most
    :data:`PAYS` of its FLOPs. Inference only (it computes the plain way while autograd records).

    The ``state_dict`` is unchanged. The upsampling's, concatenation's and crops' graph nodes
    name the folded node (``ug.fx_node_names``) until :func:`unfold_upsampling`, which
    :func:`unetgraph.passes.plain` applies for export, eject and compile.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.unet(1, 2, widths=(8, 16), dims=3, up="transpose")
        >>> print(fold_upsampling(g.lower().eval()))
        fold_upsampling: 1 change
          dec0.conv0: ConvTranspose3d up0 and the 3×3 convolution after it run as 8 phases at the coarse size
    """
    changes: list[str] = []
    never: list[str] = []
    for node in list(gm.graph.nodes):
        found = _match(gm, node)
        if found is None:
            continue
        up, cat, crops, tensors = found.up, found.cat, found.crops, found.tensors
        target, up_target = target_of(node), target_of(up)
        slots = tuple("up" if t is up else "crop" if t in crops else "part" for t in tensors)
        conv = gm.get_submodule(target)
        assert isinstance(conv, (nn.Conv2d, nn.Conv3d))  # _match checked it
        folded = UpsampledConv(conv, gm.get_submodule(up_target), up_target, slots)
        channels = _coarse_channels(folded, cat is None)
        if channels is not None and not folded.pays((_LARGE,) * folded.dims, *channels):
            never.append(target)
            continue
        folded.node = node.name
        folded.original = {
            "up": _saved(gm, up),
            "cat": None if cat is None else _saved(gm, cat),
            "crops": [_saved(gm, c) for c in crops],
        }
        others = [t.args[0] if slot == "crop" else t for t, slot in zip(tensors, slots) if slot != "up"]
        gm.add_submodule(target, folded)
        node.args = (up.args[0], *others)  # the same node (and name) now calls the folded module
        dead = [*([cat] if cat is not None else []), *crops, up]  # users first
        hold(gm, tuple(k for n in dead for k in held_by(gm, n.name)), node.name)
        for n in dead:
            gm.graph.erase_node(n)
        transposed = folded.transposed_up is not None
        kind = f"{type(folded.up).__name__} {up_target}" if transposed else f"{up_target} (nearest)"
        changes.append(
            f"{target}: {kind} and the 3×3 convolution after it run as {2**folded.dims} phases at the coarse size"
        )
    notes = [f"{t} left alone: its phases would need over {PAYS:.0%} of the pair's FLOPs" for t in never]
    if not changes and not never:
        notes.append("no 3×3 convolution reads a 2× upsampling alone")
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("fold_upsampling", tuple(changes), tuple(notes))


def _coarse_channels(folded: UpsampledConv, alone: bool) -> tuple[int, int] | None:
    """(coarse channels, upsampled channels) where the modules fix them, else ``None``."""
    up = folded.transposed_up
    if up is not None:
        return int(up.in_channels), int(up.out_channels)
    return (int(folded.weight.shape[1]),) * 2 if alone else None


def has_folds(gm: nn.Module) -> bool:
    """Whether ``gm`` holds an :class:`UpsampledConv`."""
    return any(isinstance(m, UpsampledConv) for m in gm.modules())


def unfold_upsampling(gm: fx.GraphModule) -> PassResult:
    """Put every :class:`UpsampledConv` of ``gm`` back as the upsampling, crops, concatenation
    and convolution it stands for (the same parameters; a node name takes a suffix only where
    another node has taken it since), in place."""
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        folded = gm.get_submodule(target_of(node))
        if not isinstance(folded, UpsampledConv):
            continue
        saved = folded.original
        (up_target,) = folded.reads
        if not has_submodule(gm, up_target):
            gm.add_submodule(up_target, folded.up)
        x, *others = node.args
        if len(others) != len(folded.slots) - 1:
            raise LoweringError(
                f"{node.name}: calls the folded convolution with {len(node.args)} inputs, not {len(folded.slots)}",
                node=node.name,
            )
        rest, crops = iter(others), iter(saved["crops"])
        with gm.graph.inserting_before(node):
            up = _restored(gm, gm.graph.call_module(up_target, (x,)), saved["up"])
            tensors: list[Any] = []
            for slot in folded.slots:
                if slot == "up":
                    tensors.append(up)
                elif slot == "part":
                    tensors.append(next(rest))
                else:
                    info = next(crops)
                    tensors.append(_restored(gm, gm.graph.call_module(info["target"], (next(rest), up)), info))
            src = up
            if saved["cat"] is not None:
                src = _restored(gm, gm.graph.call_function(torch.cat, (tuple(tensors),), {"dim": 1}), saved["cat"])
        gm.add_submodule(target_of(node), folded.to_plain())
        node.args = (src,)
        changes.append(f"{node.target}: the plain convolution of {src.name} again")
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult("unfold_upsampling", tuple(changes))


def _restored(gm: fx.GraphModule, node: fx.Node, info: dict[str, Any]) -> fx.Node:
    node._rename(info["name"])
    if info["custom"]:
        node.meta["custom"] = dict(info["custom"])
    hold(gm, info["held"], node.name)
    return node
