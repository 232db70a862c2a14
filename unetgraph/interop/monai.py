"""MONAI's U-Nets as graphs with their weights (:func:`from_monai`), and graphs back as MONAI models
(:func:`to_monai`).

Import reads a model's configuration from its attributes and its layers (never by tracing:
MONAI's ``BasicUNet`` traces without its skips), builds the graph of exactly that network
from the block library, lowers it and copies every weight and buffer across by an explicit
map from each graph node's layers to MONAI's. Anything the block library cannot express
raises :class:`~unetgraph.SpecError` naming the configuration field and its value.

The way back reads the MONAI configuration from the graph, rebuilds the graph that
configuration imports to, and requires it to equal the given graph node by node, so an
edit that leaves MONAI's layout is an error naming the node; then it builds the MONAI
model and copies the weights back by the same map.

``monai`` is imported when these functions run, never at ``import unetgraph``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence, Union, cast

import torch
from torch import fx, nn

from ..blocks import AttentionGate, BasicResBlock, BlockSpec, ConvBlock, Head, Merge, ResidualUnit, Up
from ..blocks import Sequence as Chain
from ..blocks.layers import canonical_act, canonical_norm, parse_layer
from ..build import unet
from ..errors import GraphError, LoweringError, SpecError, UNetGraphError
from ..graph import GraphBuilder, In, UNetGraph
from ..types import EdgeKind, Role

__all__ = ["from_monai", "to_monai", "MONAI_MODELS"]

# the MONAI classes import understands (monai.networks.nets.<name>)
MONAI_MODELS = ("BasicUNet", "UNet", "AttentionUnet", "DynUNet")

Axes = Union[int, tuple[int, ...]]
Pairs = list[tuple[str, str]]  # (our module path, MONAI's module path)


# -- norms and activations: MONAI's layers ↔ the block library's names ---------------------


def _norm_of(layer: Any, field: str) -> tuple[str, int]:
    """``(norm, groups)`` for a norm layer MONAI built (``None``: no norm)."""
    if layer is None:
        return "none", 32
    kind = type(layer)
    batch = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    instance = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    groups = 32
    if kind in batch or kind in instance:
        name = "batch" if kind in batch else "instance"
        options: dict[str, Any] = {
            "eps": float(layer.eps),
            "momentum": layer.momentum,
            "affine": bool(layer.affine),
            "track_running_stats": bool(layer.track_running_stats),
        }
        if layer.momentum is None:
            raise SpecError(f"{field}: {kind.__name__}(momentum=None) (a cumulative average) is not supported")
    elif kind is nn.GroupNorm:
        name, groups = "group", int(layer.num_groups)
        options = {"eps": float(layer.eps), "affine": bool(layer.affine)}
    else:
        raise SpecError(f"{field}: {kind.__name__} is not supported; unetgraph imports batch, instance and group norms")
    if options["affine"] and getattr(layer, "bias", None) is None:
        raise SpecError(f"{field}: {kind.__name__} with a scale but no shift (bias=False) is not supported")
    return canonical_norm((name, options)), groups


# our activation name -> MONAI's (the activations both have)
_MONAI_ACTS = {
    "relu": "relu",
    "leaky_relu": "leakyrelu",
    "prelu": "prelu",
    "silu": "swish",
    "gelu": "gelu",
    "elu": "elu",
    "celu": "celu",
    "selu": "selu",
    "relu6": "relu6",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "mish": "mish",
}
# torch layers without options -> our activation name
_PLAIN_ACTS = {
    nn.ReLU: "relu",
    nn.SiLU: "silu",
    nn.SELU: "selu",
    nn.ReLU6: "relu6",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Mish: "mish",
}


def _act_of(layer: Any, field: str, channels: int) -> str:
    """The activation name for a layer MONAI built (``None``: no activation)."""
    if layer is None:
        return "none"
    kind = type(layer)
    if kind in _PLAIN_ACTS:
        return _PLAIN_ACTS[kind]
    if kind is nn.LeakyReLU:
        return canonical_act(("leaky_relu", {"negative_slope": float(layer.negative_slope)}))
    if kind in (nn.ELU, nn.CELU):
        return canonical_act((kind.__name__.lower(), {"alpha": float(layer.alpha)}))
    if kind is nn.GELU and layer.approximate == "none":
        return "gelu"
    if kind is nn.PReLU:
        count = layer.num_parameters
        if count not in (1, channels):
            raise SpecError(f"{field}: PReLU(num_parameters={count}) on {channels} channels is not supported")
        return canonical_act(("prelu", {"channelwise": count != 1, "init": float(layer.init)}))
    monai_name = f"{kind.__module__}.{kind.__name__}"
    if monai_name == "monai.networks.blocks.activation.Swish" and float(layer.alpha) == 1.0:
        return "silu"
    if monai_name == "monai.networks.blocks.activation.MemoryEfficientSwish":
        return "silu"
    if monai_name == "monai.networks.blocks.activation.Mish":
        return "mish"
    raise SpecError(f"{field}: {layer!r} is not supported; unetgraph imports {', '.join(_MONAI_ACTS.values())}")


def _norm_to_monai(norm: str, groups: int, node: str) -> tuple[str, dict[str, Any]] | None:
    """MONAI's ``(name, args)`` for one of our norms."""
    if norm == "none":
        return None
    name, given = parse_layer(norm)
    options = dict(given)
    if name == "batch":
        return "batch", options
    if name == "batch_noaffine":
        return "batch", {**options, "affine": False}
    if name == "instance":
        return "instance", {"affine": True, **options}
    if name == "group":
        return "group", {"num_groups": groups, **options}
    raise GraphError(f"{node}: norm {norm!r} has no MONAI counterpart", node=node)


def _act_to_monai(act: str, node: str, widths: set[int]) -> tuple[str, dict[str, Any]] | None:
    """MONAI's ``(name, args)`` for one of our activations, used on layers of ``widths`` channels."""
    if act == "none":
        return None
    name, given = parse_layer(act)
    options = dict(given)
    if name == "prelu" and options.pop("channelwise", False):
        if len(widths) != 1:  # MONAI gives every layer the same num_parameters
            raise GraphError(
                f"{node}: act {act!r} (a slope per channel) on layers of {sorted(widths)} channels has no MONAI "
                "configuration: MONAI gives every layer one num_parameters",
                node=node,
            )
        options["num_parameters"] = next(iter(widths))
    if name not in _MONAI_ACTS:
        raise GraphError(f"{node}: act {act!r} has no MONAI counterpart", node=node)
    return _MONAI_ACTS[name], options


def _dropout_of(layer: Any, field: str) -> float:
    if layer is None:
        return 0.0
    if type(layer) is not nn.Dropout:
        raise SpecError(f"{field}: {type(layer).__name__} is not supported; unetgraph imports nn.Dropout")
    return float(layer.p)


def _adn(conv: Any, field: str, ordering: str = "NDA") -> tuple[str, str, str, float, int]:
    """``(order, norm, act, dropout, groups)`` of a MONAI ``Convolution``'s ADN block, made with
    ``adn_ordering=ordering``."""
    adn = getattr(conv, "adn", None)
    children = dict(adn.named_children()) if adn is not None else {}
    out_channels = _conv_layer(conv).out_channels
    norm, groups = _norm_of(children.get("N"), f"{field} (norm)")
    act = _act_of(children.get("A"), f"{field} (act)", out_channels)
    dropout = _dropout_of(children.get("D"), f"{field} (dropout)")
    present, ordering = "".join(children), ordering.upper()
    if sorted(ordering) in (["A", "N"], ["A", "D", "N"]) and "".join(c for c in ordering if c in present) == present:
        return ordering, norm, act, dropout, groups  # the layers there follow the configured order
    order = present
    for letter in "NA":  # a layer left out: "none", its place does not matter
        if letter not in order:
            order += letter
    return order, norm, act, dropout, groups


def _conv_layer(conv: Any) -> Any:
    """The convolution of a MONAI ``Convolution`` (a Sequential whose ``conv`` child it is)."""
    return conv.conv if hasattr(conv, "conv") else conv


def _axes(value: Any, dims: int) -> Axes:
    """An int, or a per-axis tuple when the axes differ (MONAI's kernel/stride arguments)."""
    if isinstance(value, (list, tuple)):
        values = tuple(int(v) for v in value)
        if len(values) != dims:
            raise SpecError(f"expected {dims} entries, one per axis, got {value!r}")
        return values[0] if len(set(values)) == 1 else values
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SpecError(f"expected an integer or one per axis, got {value!r}")
    return int(value)


def _per_axis(value: Axes, dims: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * dims


def _map(fn: Callable[[int], int], value: Axes, dims: int) -> Axes:
    out = tuple(fn(v) for v in _per_axis(value, dims))
    return out[0] if len(set(out)) == 1 else out


def _dims_of(conv: nn.Module) -> int:
    for dims, kinds in enumerate(((nn.Conv1d, nn.ConvTranspose1d), (nn.Conv2d, nn.ConvTranspose2d)), start=1):
        if isinstance(conv, kinds):
            return dims
    return 3


# -- module paths of our blocks' layers (relative to the node) ----------------------------


def _conv_block_pairs(node: str, units: Sequence[str]) -> Pairs:
    """A ConvBlock's layers ↔ MONAI ``Convolution`` units (its conv and ADN children)."""
    pairs = []
    for i, unit in enumerate(units):
        pairs += [(f"{node}.conv{i}", f"{unit}.conv"), (f"{node}.norm{i}", f"{unit}.adn.N")]
        pairs += [(f"{node}.act{i}", f"{unit}.adn.A")]
    return pairs


def _up_pairs(node: str, spec: Up, theirs: str) -> Pairs:
    """An ``Up`` node ↔ a MONAI transposed ``Convolution`` (conv + ADN)."""
    bare = spec.norm == "none" and spec.act == "none" and not spec.dropout and spec.mode == "transpose"
    return [
        (node if bare else f"{node}.conv", f"{theirs}.conv"),
        (f"{node}.norm", f"{theirs}.adn.N"),
        (f"{node}.act", f"{theirs}.adn.A"),
    ]


def _residual_unit_pairs(node: str, spec: ResidualUnit, theirs: str) -> Pairs:
    pairs = [(f"{node}.residual", f"{theirs}.residual")]
    for j in range(spec.subunits):
        ours, unit = f"{node}.units.unit{j}", f"{theirs}.conv.unit{j}"
        pairs += [(f"{ours}.conv", f"{unit}.conv"), (f"{ours}.norm", f"{unit}.adn.N"), (f"{ours}.act", f"{unit}.adn.A")]
    return pairs


def _head_pairs(node: str, spec: Head, theirs: str) -> Pairs:
    bare = spec.norm == "none" and spec.act == "none" and not spec.dropout
    return [(node if bare else f"{node}.conv", theirs)]


# -- the four models --------------------------------------------------------------------


@dataclass(frozen=True)
class _BasicUNet:
    """``monai.networks.nets.BasicUNet``: five levels of two convolutions, max pooling, ``UpCat``."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    features: tuple[int, ...]
    norm: str
    groups: int
    act: str
    bias: bool
    dropout: float
    order: str
    upsample: str  # "deconv" | "nontrainable"

    @classmethod
    def from_model(cls, model: Any) -> _BasicUNet:
        first = model.conv_0.conv_0
        order, norm, act, dropout, groups = _adn(first, "BasicUNet act/norm/dropout")
        ups = [getattr(model, f"upcat_{i}").upsample for i in range(1, 5)]
        kinds = {tuple(up._modules) for up in ups}
        if all("deconv" in k for k in kinds):
            upsample = "deconv"
        elif all("upsample_non_trainable" in k for k in kinds):
            upsample = "nontrainable"
            for up in ups:
                interp = up.upsample_non_trainable
                if interp.mode not in ("linear", "bilinear", "trilinear") or not interp.align_corners:
                    raise SpecError(
                        f"BasicUNet upsample='nontrainable' with interp_mode={interp.mode!r}, "
                        f"align_corners={interp.align_corners}: only linear interpolation with aligned corners "
                        "(BasicUNet's own) is supported"
                    )
        else:
            names = sorted({n for k in kinds for n in k})
            raise SpecError(f"BasicUNet upsample: {', '.join(names)} is not supported (use 'deconv' or 'nontrainable')")
        convs = [model.conv_0, *(getattr(model, f"down_{i}").convs for i in range(1, 5)), model.upcat_1.convs]
        return cls(
            spatial_dims=_dims_of(first.conv),
            in_channels=first.conv.in_channels,
            out_channels=model.final_conv.out_channels,
            features=tuple(c.conv_1.conv.out_channels for c in convs),
            norm=norm,
            groups=groups,
            act=act,
            bias=first.conv.bias is not None,
            dropout=dropout,
            order=order,
            upsample=upsample,
        )

    def block(self) -> ConvBlock:
        return ConvBlock(
            convs=2,
            norm=self.norm,
            groups=self.groups,
            act=self.act,
            dropout=self.dropout,
            bias=self.bias,
            order=self.order,
        )

    def graph(self) -> tuple[UNetGraph, Pairs]:
        f = self.features
        ups = []
        for i in range(4):  # level i's up takes level i+1's width: halved, but the shallowest keeps it
            cin, cout = f[i + 1], f[i + 1] // 2 if i > 0 else f[i + 1]
            if self.upsample == "deconv":
                ups.append(Up("transpose", channels=cout))
            elif cin == cout:
                ups.append(Up("linear", conv=False, align_corners=True))
            else:
                ups.append(Up("linear", channels=cout, kernel=1, align_corners=True, conv_first=True))
        g = unet(
            self.in_channels,
            self.out_channels,
            f[:5],
            dims=self.spatial_dims,
            block=self.block(),
            decoder_widths=(f[5], *f[1:4]),
            down="maxpool",
            up=ups,
            name="BasicUNet",
        )
        encoders = ["conv_0", *(f"down_{i}.convs" for i in range(1, 4))]
        pairs: Pairs = []
        for i, theirs in enumerate(encoders):
            pairs += _conv_block_pairs(f"enc{i}", [f"{theirs}.conv_0", f"{theirs}.conv_1"])
        pairs += _conv_block_pairs("mid", ["down_4.convs.conv_0", "down_4.convs.conv_1"])
        for i in range(4):
            upcat = f"upcat_{i + 1}"
            pairs += _conv_block_pairs(f"dec{i}", [f"{upcat}.convs.conv_0", f"{upcat}.convs.conv_1"])
            if self.upsample == "deconv":
                pairs.append((f"up{i}", f"{upcat}.upsample.deconv"))
            elif _block(g, f"up{i}", Up).conv:
                pairs.append((f"up{i}.conv", f"{upcat}.upsample.preconv"))
        pairs.append(("head", "final_conv"))
        return g, pairs

    @classmethod
    def from_graph(cls, g: UNetGraph) -> _BasicUNet:
        enc, up1 = _block(g, "enc0", ConvBlock), _block(g, "up1", Up)
        return cls(
            spatial_dims=g["x"].type.dims,
            in_channels=g["x"].type.channels,
            out_channels=g["head"].type.channels,
            features=(*(g[n].type.channels for n in ("enc0", "enc1", "enc2", "enc3", "mid")), g["dec0"].type.channels),
            norm=enc.norm,
            groups=enc.groups,
            act=enc.act,
            bias=enc.has_bias,
            dropout=enc.dropout,
            order=enc.order,
            upsample="deconv" if up1.mode == "transpose" else "nontrainable",
        )

    def kwargs(self) -> dict[str, Any]:
        if self.order != "NDA":
            raise GraphError(f"enc0: BasicUNet orders norm, dropout and act as 'NDA', not {self.order!r}", node="enc0")
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "features": self.features,
            "act": _act_to_monai(self.act, "enc0", set(self.features)),
            "norm": _norm_to_monai(self.norm, self.groups, "enc0"),
            "bias": self.bias,
            "dropout": self.dropout,
            "upsample": self.upsample,
        }


@dataclass(frozen=True)
class _Levels:
    """The level structure MONAI's ``UNet`` and ``AttentionUnet`` share, as their attributes."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    channels: tuple[int, ...]
    strides: tuple[Axes, ...]
    kernel_size: Axes
    up_kernel_size: Axes

    @staticmethod
    def read(model: Any, name: str) -> dict[str, Any]:
        dims, channels = int(model.dimensions), tuple(int(c) for c in model.channels)
        return {
            "spatial_dims": dims,
            "in_channels": int(model.in_channels),
            "out_channels": int(model.out_channels),
            "channels": channels,
            "strides": tuple(_field_axes(f"{name}.strides", s, dims) for s in model.strides[: len(channels) - 1]),
            "kernel_size": _field_axes(f"{name}.kernel_size", model.kernel_size, dims),
            "up_kernel_size": _field_axes(f"{name}.up_kernel_size", model.up_kernel_size, dims),
        }

    def level_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(_Levels)}


@dataclass(frozen=True)
class _UNet(_Levels):
    """``monai.networks.nets.UNet``: strided convolutions (or residual units) down, a skip
    concatenation, then a transposed convolution (plus a residual unit) up, at every level."""

    num_res_units: int
    norm: str
    groups: int
    act: str
    dropout: float
    bias: bool
    adn_ordering: str

    @classmethod
    def from_model(cls, model: Any) -> _UNet:
        first = model.model[0]
        unit = first.conv.unit0 if model.num_res_units > 0 else first
        field = f"UNet(act={model.act!r}, norm={model.norm!r})"
        order, norm, act, dropout, groups = _adn(unit, field, str(model.adn_ordering))
        return cls(
            **cls.read(model, "UNet"),
            num_res_units=int(model.num_res_units),
            norm=norm,
            groups=groups,
            act=act,
            dropout=dropout,
            bias=bool(model.bias),
            adn_ordering=order,
        )

    def _conv(self, channels: int, stride: Axes) -> BlockSpec:
        if self.num_res_units > 0:
            return ResidualUnit(
                channels=channels,
                kernel=self.kernel_size,
                stride=stride,
                subunits=self.num_res_units,
                norm=self.norm,
                groups=self.groups,
                act=self.act,
                dropout=self.dropout,
                order=self.adn_ordering,
                bias=self.bias,
            )
        return ConvBlock(
            channels=channels,
            convs=1,
            kernel=self.kernel_size,
            stride=stride,
            norm=self.norm,
            groups=self.groups,
            act=self.act,
            dropout=self.dropout,
            order=self.adn_ordering,
            bias=self.bias,
        )

    def _up(self, channels: int, stride: Axes, top: bool) -> BlockSpec:
        dims = self.spatial_dims
        k = self.up_kernel_size
        conv_only = top and self.num_res_units == 0
        up = Up(
            "transpose",
            factor=stride,
            channels=channels,
            kernel=k,
            padding=_map(lambda v: (v - 1) // 2, k, dims),
            output_padding=_map(lambda s: s - 1, stride, dims),
            bias=self.bias,
            norm="none" if conv_only else self.norm,
            groups=self.groups,
            act="none" if conv_only else self.act,
            dropout=0.0 if conv_only else self.dropout,
            order=self.adn_ordering,
        )
        if self.num_res_units == 0:
            return up
        unit = ResidualUnit(
            channels=channels,
            kernel=self.kernel_size,
            subunits=1,
            norm=self.norm,
            groups=self.groups,
            act=self.act,
            dropout=self.dropout,
            order=self.adn_ordering,
            bias=self.bias,
            last_conv_only=top,
        )
        return Chain(up, unit)

    def graph(self) -> tuple[UNetGraph, Pairs]:
        c, s, depth = self.channels, self.strides, len(self.channels)
        b = GraphBuilder("UNet")
        h = b.input("x", channels=self.in_channels, dims=self.spatial_dims)
        prefixes = ["model"]
        pairs: Pairs = []
        for i in range(depth - 1):
            h = b.add(f"enc{i}", self._conv(c[i], s[i]), Role.ENCODER, i + 1, [h])
            prefixes.append(f"{prefixes[-1]}.1.submodule")
        h = b.add("mid", self._conv(c[-1], 1), Role.BOTTLENECK, depth - 1, [h])
        for i in reversed(range(depth - 1)):
            h = b.add(f"merge{i}", Merge("concat"), Role.MERGE, i + 1, [In(f"enc{i}", EdgeKind.SKIP), h])
            out = self.out_channels if i == 0 else c[i - 1]
            h = b.add(f"up{i}", self._up(out, s[i], top=i == 0), Role.UP, i, [h])
        g = b.build(outputs=["up0"])
        for i in range(depth - 1):
            pairs += self._node_pairs(g, f"enc{i}", f"{prefixes[i]}.0")
            pairs += self._node_pairs(g, f"up{i}", f"{prefixes[i]}.2")
        pairs += self._node_pairs(g, "mid", prefixes[depth - 1])
        return g, pairs

    def _node_pairs(self, g: UNetGraph, node: str, theirs: str) -> Pairs:
        spec = g[node].block
        if isinstance(spec, Chain):  # an up-convolution, then a residual unit
            up, unit = cast(tuple[Up, ResidualUnit], spec.blocks)
            return _up_pairs(f"{node}.up0", up, f"{theirs}.0") + _residual_unit_pairs(
                f"{node}.residualunit1", unit, f"{theirs}.1"
            )
        if isinstance(spec, Up):
            return _up_pairs(node, spec, theirs)
        if isinstance(spec, ResidualUnit):
            return _residual_unit_pairs(node, spec, theirs)
        return _conv_block_pairs(node, [theirs])

    @classmethod
    def from_graph(cls, g: UNetGraph) -> _UNet:
        encoders = _encoders(g)
        first = _block(g, "enc0", (ConvBlock, ResidualUnit))
        dims = g["x"].type.dims
        top = _block(g, "up0", (Up, Chain))
        up = top.blocks[0] if isinstance(top, Chain) and top.blocks else top
        if not isinstance(up, Up):
            raise GraphError(f"up0 ({top.label()}): MONAI's UNet layout starts it with an Up", node="up0")
        return cls(
            spatial_dims=dims,
            in_channels=g["x"].type.channels,
            out_channels=g["up0"].type.channels,
            channels=(*(g[n].type.channels for n in encoders), g["mid"].type.channels),
            strides=tuple(_block(g, n, (ConvBlock, ResidualUnit)).stride for n in encoders),
            kernel_size=first.kernel,
            up_kernel_size=up.kernel if up.kernel is not None else up.factor,
            num_res_units=first.subunits if isinstance(first, ResidualUnit) else 0,
            norm=first.norm,
            groups=first.groups,
            act=first.act,
            dropout=first.dropout,
            bias=first.bias if isinstance(first, ResidualUnit) else first.has_bias,
            adn_ordering=first.order,
        )

    def kwargs(self) -> dict[str, Any]:
        # the widths the activation acts on: every level's, and the top up-sampling's with residual units
        widths = set(self.channels) | ({self.out_channels} if self.num_res_units > 0 else set())
        return {
            **self.level_kwargs(),
            "num_res_units": self.num_res_units,
            "act": _act_to_monai(self.act, "enc0", widths),
            "norm": _norm_to_monai(self.norm, self.groups, "enc0"),
            "dropout": self.dropout,
            "bias": self.bias,
            "adn_ordering": self.adn_ordering,
        }


@dataclass(frozen=True)
class _AttentionUnet(_Levels):
    """``monai.networks.nets.AttentionUnet``: two-convolution blocks, strided down, attention-gated
    skips, a transposed convolution up and one convolution after each merge."""

    dropout: float
    merge_norm: str
    merge_act: str

    @classmethod
    def from_model(cls, model: Any) -> _AttentionUnet:
        if any(int(c) < 2 for c in model.channels):
            raise SpecError(f"AttentionUnet.channels={model.channels!r}: its attention gates need 2 channels or more")
        merge = model.model[1].merge
        _, merge_norm, merge_act, _, _ = _adn(merge, "AttentionUnet merge convolution")
        _field(
            "AttentionUnet.dropout", model.dropout, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        return cls(
            **cls.read(model, "AttentionUnet"),
            dropout=float(model.dropout),
            merge_norm=merge_norm,
            merge_act=merge_act,
        )

    def graph(self) -> tuple[UNetGraph, Pairs]:
        c, s, dims, depth = self.channels, self.strides, self.spatial_dims, len(self.channels)
        conv = ConvBlock(
            norm="batch", act="relu", dropout=self.dropout, bias=True, order="NDA", kernel=self.kernel_size
        )
        ups = [
            Up(
                "transpose",
                factor=s[i],
                channels=c[i],
                kernel=self.up_kernel_size,
                padding=_map(lambda v: (v - 1) // 2, self.up_kernel_size, dims),
                output_padding=_map(lambda v: v - 1, s[i], dims),
                norm="batch",
                act="relu",
                dropout=self.dropout,
                order="NDA",
            )
            for i in range(depth - 1)
        ]
        g = unet(
            self.in_channels,
            self.out_channels,
            c,
            dims=dims,
            encoder_block=[conv.with_(stride=1 if i == 0 else s[i - 1]) for i in range(depth - 1)],
            bottleneck_block=conv.with_(stride=s[-1]),
            decoder_block=ConvBlock(
                convs=1, norm=self.merge_norm, act=self.merge_act, dropout=self.dropout, bias=True, order="NDA"
            ),
            down=None,
            up=ups,
            gate=AttentionGate(norm="batch"),
            name="AttentionUnet",
        )
        pairs: Pairs = []
        layer = "model.1"
        pairs += _conv_block_pairs("enc0", ["model.0.conv.0", "model.0.conv.1"])
        for i in range(depth - 1):
            bottom = i == depth - 2
            inner = f"{layer}.submodule" if bottom else f"{layer}.submodule.0"
            pairs += _conv_block_pairs("mid" if bottom else f"enc{i + 1}", [f"{inner}.conv.0", f"{inner}.conv.1"])
            pairs += _up_pairs(f"up{i}", _block(g, f"up{i}", Up), f"{layer}.upconv.up")
            pairs += _conv_block_pairs(f"dec{i}", [f"{layer}.merge"])
            gate, att = f"gate{i}", f"{layer}.attention"
            for branch in ("W_g", "W_x"):
                pairs += [
                    (f"{gate}.{branch}.conv", f"{att}.{branch}.0.conv"),
                    (f"{gate}.{branch}.norm", f"{att}.{branch}.1"),
                ]
            pairs += [(f"{gate}.psi.conv", f"{att}.psi.0.conv"), (f"{gate}.psi.norm", f"{att}.psi.1")]
            layer = f"{layer}.submodule.1"
        pairs.append(("head", "model.2.conv"))
        return g, pairs

    @classmethod
    def from_graph(cls, g: UNetGraph) -> _AttentionUnet:
        encoders = _encoders(g)
        dec, up = _block(g, "dec0", ConvBlock), _block(g, "up0", Up)
        return cls(
            spatial_dims=g["x"].type.dims,
            in_channels=g["x"].type.channels,
            out_channels=g["head"].type.channels,
            channels=(*(g[n].type.channels for n in encoders), g["mid"].type.channels),
            strides=tuple(_block(g, n, ConvBlock).stride for n in [*encoders[1:], "mid"]),
            kernel_size=_block(g, "enc0", ConvBlock).kernel,
            up_kernel_size=up.kernel if up.kernel is not None else up.factor,
            dropout=dec.dropout,
            merge_norm=dec.norm,
            merge_act=dec.act,
        )

    def kwargs(self) -> dict[str, Any]:
        if (self.merge_norm, self.merge_act) != ("instance(affine=False)", "prelu"):
            raise GraphError(
                f"dec0: AttentionUnet's merge convolutions are instance(affine=False) → prelu, "
                f"not {self.merge_norm} → {self.merge_act}",
                node="dec0",
            )
        return {**self.level_kwargs(), "dropout": self.dropout}


@dataclass(frozen=True)
class _DynUNet:
    """``monai.networks.nets.DynUNet``: nnU-Net's network, with residual blocks and deep supervision."""

    spatial_dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[Axes, ...]
    strides: tuple[Axes, ...]
    upsample_kernel_size: tuple[Axes, ...]
    filters: tuple[int, ...]
    dropout: float
    norm: str
    groups: int
    act: str
    deep_supervision: bool
    deep_supr_num: int
    res_block: bool
    trans_bias: bool

    @classmethod
    def from_model(cls, model: Any) -> _DynUNet:
        dims = model.spatial_dims
        depth = len(model.strides)
        first = model.input_block
        field = f"DynUNet(norm_name={model.norm_name!r}, act_name={model.act_name!r})"
        norm, groups = _norm_of(first.norm1, field)
        act = _act_of(first.lrelu, field, first.conv1.conv.out_channels)
        if any(p.numel() for p in first.lrelu.parameters()):
            raise SpecError(
                f"DynUNet.act_name={model.act_name!r}: DynUNet's blocks apply one activation layer after both "
                "convolutions, so its parameters are shared; unetgraph's ConvBlock has one per convolution "
                "(not supported)"
            )
        dropout = model.dropout
        if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))):
            raise SpecError(f"DynUNet.dropout={dropout!r} is not supported: give a probability or None")
        kernels = tuple(_field_axes(f"DynUNet.kernel_size[{i}]", k, dims) for i, k in enumerate(model.kernel_size))
        strides = tuple(_field_axes(f"DynUNet.strides[{i}]", s, dims) for i, s in enumerate(model.strides))
        for i, (k, st) in enumerate(zip(kernels, strides)):
            for kk, ss in zip(_per_axis(k, dims), _per_axis(st, dims)):
                if kk % 2 == 0 or (kk - ss + 1) // 2 != kk // 2:
                    raise SpecError(
                        f"DynUNet.kernel_size[{i}]={model.kernel_size[i]!r} with strides[{i}]={model.strides[i]!r}: "
                        f"MONAI pads kernel {kk} at stride {ss} by {(kk - ss + 1) // 2}, unetgraph's blocks by "
                        f"{kk // 2} (odd kernels with strides 1 or 2 are supported)"
                    )
        ups = list(reversed(model.upsamples))  # shallowest first
        up_kernels = []
        for i, up in enumerate(ups):
            conv = up.transp_conv.conv
            if tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or any(conv.output_padding):
                raise SpecError(f"DynUNet.upsample_kernel_size: level {i}'s {conv} is not supported")
            up_kernels.append(_axes(tuple(conv.kernel_size), dims))
        return cls(
            spatial_dims=dims,
            in_channels=int(model.in_channels),
            out_channels=int(model.out_channels),
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=tuple(up_kernels),
            filters=tuple(int(f) for f in model.filters[:depth]),
            dropout=0.0 if dropout is None else float(dropout),
            norm=norm,
            groups=groups,
            act=act,
            deep_supervision=bool(model.deep_supervision),
            deep_supr_num=int(model.deep_supr_num) if model.deep_supervision else 0,
            res_block=type(first).__name__ == "UnetResBlock",
            trans_bias=bool(model.trans_bias),
        )

    def _block(self, kernel: Axes, stride: Axes, res: bool) -> BlockSpec:
        if res:
            return BasicResBlock(
                kernel=kernel,
                stride=stride,
                norm=self.norm,
                groups=self.groups,
                act=self.act,
                dropout=self.dropout,
                bias=False,
            )
        return ConvBlock(
            convs=2,
            kernel=kernel,
            stride=stride,
            norm=self.norm,
            groups=self.groups,
            act=self.act,
            dropout=self.dropout,
            bias=False,
            order="DNA",
        )

    def graph(self) -> tuple[UNetGraph, Pairs]:
        k, s, f, depth = self.kernel_size, self.strides, self.filters, len(self.filters)
        res = self.res_block
        g = unet(
            self.in_channels,
            self.out_channels,
            f,
            dims=self.spatial_dims,
            encoder_block=[self._block(k[i], s[i], res) for i in range(depth - 1)],
            bottleneck_block=self._block(k[-1], s[-1], res),
            decoder_block=[self._block(k[i + 1], 1, False) for i in range(depth - 1)],
            down=None,
            up=[
                Up("transpose", factor=u, kernel=u, bias=self.trans_bias, dropout=self.dropout, order="NDA")
                for u in self.upsample_kernel_size
            ],
            skip_first=False,
            head=Head(dropout=self.dropout),
            deep_supervision=self.deep_supr_num if self.deep_supervision else 0,
            name="DynUNet",
        )
        pairs: Pairs = []
        theirs = ["input_block", *(f"downsamples.{i}" for i in range(depth - 2)), "bottleneck"]
        ours = [*(f"enc{i}" for i in range(depth - 1)), "mid"]
        for node, path in zip(ours, theirs):
            pairs += self._block_pairs(node, path, res)
        for i in range(depth - 1):
            up = f"upsamples.{depth - 2 - i}"
            pairs += _up_pairs(f"up{i}", _block(g, f"up{i}", Up), f"{up}.transp_conv")
            pairs += self._block_pairs(f"dec{i}", f"{up}.conv_block", False)
        pairs += _head_pairs("head", _block(g, "head", Head), "output_block.conv.conv")
        for i in range(1, self.deep_supr_num + 1 if self.deep_supervision else 1):
            pairs += _head_pairs(f"head{i}", _block(g, f"head{i}", Head), f"deep_supervision_heads.{i - 1}.conv.conv")
        return g, pairs

    @staticmethod
    def _block_pairs(node: str, theirs: str, res: bool) -> Pairs:
        if res:
            return [
                (f"{node}.conv1", f"{theirs}.conv1.conv"),
                (f"{node}.norm1", f"{theirs}.norm1"),
                (f"{node}.conv2", f"{theirs}.conv2.conv"),
                (f"{node}.norm2", f"{theirs}.norm2"),
                (f"{node}.shortcut.conv", f"{theirs}.conv3.conv"),
                (f"{node}.shortcut.norm", f"{theirs}.norm3"),
                (f"{node}.act", f"{theirs}.lrelu"),
            ]
        return [
            (f"{node}.conv0", f"{theirs}.conv1.conv"),
            (f"{node}.norm0", f"{theirs}.norm1"),
            (f"{node}.conv1", f"{theirs}.conv2.conv"),
            (f"{node}.norm1", f"{theirs}.norm2"),
        ]

    @classmethod
    def from_graph(cls, g: UNetGraph) -> _DynUNet:
        levels = len(_encoders(g))
        blocks = [_block(g, n, (ConvBlock, BasicResBlock)) for n in [*_encoders(g), "mid"]]
        heads = sorted(n for n in g.outputs if n != "head")
        first = blocks[0]
        return cls(
            spatial_dims=g["x"].type.dims,
            in_channels=g["x"].type.channels,
            out_channels=g["head"].type.channels,
            kernel_size=tuple(b.kernel for b in blocks),
            strides=tuple(b.stride for b in blocks),
            upsample_kernel_size=tuple(_block(g, f"up{i}", Up).factor for i in range(levels)),
            filters=tuple(g[n].type.channels for n in [*_encoders(g), "mid"]),
            dropout=first.dropout,
            norm=first.norm,
            groups=first.groups,
            act=first.act,
            deep_supervision=bool(heads),
            deep_supr_num=len(heads),
            res_block=isinstance(first, BasicResBlock),
            trans_bias=_block(g, "up0", Up).bias,
        )

    def kwargs(self) -> dict[str, Any]:
        norm = _norm_to_monai(self.norm, self.groups, "enc0")
        act = _act_to_monai(self.act, "enc0", set(self.filters))
        if norm is None or act is None:
            raise GraphError("enc0: DynUNet needs a norm and an activation", node="enc0")
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "upsample_kernel_size": self.upsample_kernel_size,
            "filters": self.filters,
            "dropout": self.dropout or None,
            "norm_name": norm,
            "act_name": act,
            "deep_supervision": self.deep_supervision,
            "deep_supr_num": max(1, self.deep_supr_num),
            "res_block": self.res_block,
            "trans_bias": self.trans_bias,
        }


_KINDS: dict[str, Any] = {
    "BasicUNet": _BasicUNet,
    "UNet": _UNet,
    "AttentionUnet": _AttentionUnet,
    "DynUNet": _DynUNet,
}


# -- helpers --------------------------------------------------------------------------------


def _field(name: str, value: Any, ok: Callable[[Any], bool]) -> None:
    if not ok(value):
        raise SpecError(f"{name}={value!r} is not supported")


def _field_axes(name: str, value: Any, dims: int) -> Axes:
    try:
        return _axes(value, dims)
    except SpecError as e:
        raise SpecError(f"{name}={value!r}: {e.message}") from None


def _block(g: UNetGraph, node: str, kinds: type | tuple[type, ...]) -> Any:
    """The spec of ``node``, which MONAI's layout needs to be one of ``kinds``."""
    if node not in g:
        raise GraphError(f"MONAI's {g.name} layout needs a node {node!r}, which graph {g.name} lacks", node=node)
    spec = g[node].block
    if not isinstance(spec, kinds):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise GraphError(
            f"{node} ({spec.label()}): MONAI's {g.name} layout has a {names} there, not a {spec.type_name}", node=node
        )
    return spec


def _encoders(g: UNetGraph) -> list[str]:
    """``enc0``, ``enc1``, … as far as the graph has them (at least ``enc0``)."""
    names = ["enc0"]
    while f"enc{len(names)}" in g:
        names.append(f"enc{len(names)}")
    return names


def _model_class(model: nn.Module) -> str:
    import monai.networks.nets as nets

    for name in MONAI_MODELS:
        if type(model) is getattr(nets, name):
            return name
    kind = type(model)
    raise SpecError(
        f"from_monai: {kind.__module__}.{kind.__qualname__} is not supported; it imports "
        f"monai.networks.nets.{', '.join(MONAI_MODELS)} (exactly these classes, not subclasses)"
    )


def _copy(ours: nn.Module, theirs: nn.Module, pairs: Pairs, *, into_ours: bool) -> None:
    """Copy every tensor of ``theirs`` into ``ours`` (or back) along ``pairs``; every persistent
    tensor on both sides must be covered exactly by the pairs, with equal names and shapes."""
    covered_ours: set[int] = set()
    covered_theirs: set[int] = set()
    with torch.no_grad():
        for mine, peer in pairs:
            a, b = _submodule(ours, mine), _submodule(theirs, peer)
            sa = {} if a is None else a.state_dict(keep_vars=True)
            sb = {} if b is None else b.state_dict(keep_vars=True)
            if not sa and not sb:
                continue
            if a is None or b is None or type(a) is not type(b) or sa.keys() != sb.keys():
                raise LoweringError(
                    f"{mine} ({type(a).__name__ if a is not None else 'missing'}: {sorted(sa)}) does not match "
                    f"MONAI's {peer} ({type(b).__name__ if b is not None else 'missing'}: {sorted(sb)})",
                    node=mine.split(".")[0],
                )
            for key, ta in sa.items():
                tb = sb[key]
                if ta.shape != tb.shape:
                    raise LoweringError(
                        f"{mine}.{key} has shape {tuple(ta.shape)}, MONAI's {peer}.{key} {tuple(tb.shape)}",
                        node=mine.split(".")[0],
                    )
                (ta if into_ours else tb).copy_(tb if into_ours else ta)
                covered_ours.add(id(ta))
                covered_theirs.add(id(tb))
    for side, module, covered, where in (
        ("the graph's module", ours, covered_ours, "ours"),
        ("the MONAI model", theirs, covered_theirs, "MONAI's"),
    ):
        left = [k for k, t in module.state_dict(keep_vars=True).items() if id(t) not in covered]
        if left:
            raise LoweringError(
                f"{len(left)} tensors of {side} have no counterpart ({where} {', '.join(left[:5])}"
                f"{', …' if len(left) > 5 else ''})"
            )


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


# -- the public functions -----------------------------------------------------------------


def from_monai(model: nn.Module) -> tuple[UNetGraph, fx.GraphModule]:
    """The graph of a MONAI U-Net and its lowered module carrying the model's weights.

    Supports ``monai.networks.nets.BasicUNet`` (``upsample`` ``"deconv"`` or
    ``"nontrainable"``), ``UNet`` (any ``num_res_units``, strides, kernel sizes, norms,
    activations, dropout, ``adn_ordering``, bias), ``AttentionUnet`` and ``DynUNet``
    (``res_block``, deep supervision: the extra heads are extra outputs ``head1`` …), in
    1D, 2D and 3D. The configuration is read from the model's attributes and layers; the
    model is never traced. The lowered module is on the model's device and dtype, in its
    training mode, and gives MONAI's outputs at every size the graph accepts
    (``g.valid_sizes()``); sizes at which MONAI pads or crops implicitly, or fails, are
    refused before anything runs.

    Args:
        model: the MONAI model (its class exactly, not a subclass).

    Returns:
        ``(graph, module)``: the graph (named after the MONAI class) and ``graph.lower()``
        with every parameter and buffer copied from ``model``.

    Raises:
        SpecError: a configuration the block library cannot express; the message names the
            field and its value (e.g. ``UNet(act='elu', ...)``).

    Example:
        >>> import torch, unetgraph as ug
        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
        >>> g, gm = ug.interop.from_monai(net)
        >>> x = torch.randn(1, 1, 32, 32)
        >>> bool(torch.allclose(gm.eval()(x), net(x), atol=1e-5))
        True
    """
    kind = _model_class(model)
    config = _KINDS[kind].from_model(model)
    g, pairs = config.graph()
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else None
    dtype = reference.dtype if reference is not None else None
    gm = g.lower(device=device, dtype=dtype)
    _copy(gm, model, pairs, into_ours=True)
    gm.train(model.training)
    return g, gm


def to_monai(
    source: fx.GraphModule | tuple[UNetGraph, nn.Module], *, state_dict: bool = False
) -> nn.Module | dict[str, torch.Tensor]:
    """The MONAI model (or its ``state_dict``) that a graph imported by :func:`from_monai` still is.

    The MONAI configuration is read from the graph, the graph that configuration imports to
    is rebuilt, and it must equal the given graph node by node: an edit that leaves MONAI's
    layout (a node added or removed, a block or a field MONAI cannot express) raises
    :class:`~unetgraph.GraphError` naming the node. The weights are copied along the same map
    as on import, so ``to_monai(from_monai(m))`` has ``m``'s ``state_dict``.

    Args:
        source: a module lowered from the graph (``ug.lowered_record`` gives its graph), or
            ``(graph, module)``.
        state_dict: return the model's ``state_dict`` instead of the model.

    Returns:
        A ``monai.networks.nets`` model on the module's device and dtype, in its training mode.

    Raises:
        GraphError: the graph does not fit the MONAI layout its name says (``g.name`` is one of
            ``BasicUNet``, ``UNet``, ``AttentionUnet``, ``DynUNet``).
        LoweringError: the module's tensors do not match the graph (e.g. ``optimize()``
            folded its batch norms).
    """
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], UNetGraph):
        g, module = source
    elif isinstance(source, nn.Module):
        from ..record import lowered_record

        g, module = lowered_record(source).graph, source
    else:
        raise SpecError(f"to_monai: expected a lowered module or (graph, module), got {type(source).__name__}")
    if g.name not in _KINDS:
        raise GraphError(
            f"to_monai: graph {g.name!r} is not named after a MONAI model ({', '.join(MONAI_MODELS)}); "
            "from_monai names the graphs it imports so"
        )
    kind = _KINDS[g.name]
    try:
        config = kind.from_graph(g)
        expected, pairs = config.graph()
    except GraphError:
        raise
    except UNetGraphError as e:  # the configuration read from the graph does not build
        raise GraphError(f"graph {g.name} does not fit MONAI's {g.name} layout: {e.message}", node=e.node) from e
    _same_layout(g, expected)
    import monai.networks.nets as nets

    peer = getattr(nets, g.name)(**config.kwargs())
    reference = next(iter(module.parameters()), None)
    if reference is not None:
        peer = peer.to(device=reference.device, dtype=reference.dtype)
    _copy(module, peer, pairs, into_ours=False)
    peer.train(module.training)
    return peer.state_dict() if state_dict else peer


def _same_layout(g: UNetGraph, expected: UNetGraph) -> None:
    """Raise :class:`GraphError` at the first node where ``g`` differs from ``expected``."""
    extra = [n for n in list(g) if n not in expected]
    if extra:
        raise GraphError(f"{extra[0]}: MONAI's {g.name} layout has no node {extra[0]!r}", node=extra[0])
    for name in list(expected):
        if name not in g:
            raise GraphError(f"{name}: MONAI's {g.name} layout needs node {name!r}, which the graph lacks", node=name)
        mine, theirs = g[name], expected[name]
        if mine.block != theirs.block:
            raise GraphError(f"{name}: {_spec_difference(mine.block, theirs.block, g.name)}", node=name)
        if [(e.src, e.kind, e.port) for e in g.in_edges(name)] != [
            (e.src, e.kind, e.port) for e in expected.in_edges(name)
        ]:
            got = ", ".join(e.describe() for e in g.in_edges(name))
            want = ", ".join(e.describe() for e in expected.in_edges(name))
            raise GraphError(f"{name}: takes {got}; MONAI's {g.name} layout feeds it {want}", node=name)
    if g.outputs != expected.outputs:
        raise GraphError(f"graph outputs {', '.join(g.outputs)}; MONAI's {g.name} gives {', '.join(expected.outputs)}")


def _spec_difference(mine: BlockSpec, theirs: BlockSpec, model: str) -> str:
    if type(mine) is not type(theirs):
        return (
            f"a {mine.type_name} ({mine.label()}) where MONAI's {model} layout has a "
            f"{theirs.type_name} ({theirs.label()})"
        )
    changed = [
        f"{f.name}={getattr(mine, f.name)!r} (MONAI's {model}: {getattr(theirs, f.name)!r})"
        for f in fields(mine)
        if getattr(mine, f.name) != getattr(theirs, f.name)
    ]
    return f"{mine.type_name} {', '.join(changed)} does not fit MONAI's {model} layout"
