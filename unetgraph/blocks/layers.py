"""Small ``nn.Module`` layers the built-in blocks are made of, and per-dimension lookups.

Norm and activation tables are plain dicts: add an entry to offer a new ``norm=`` or
``act=`` name to :class:`~unetgraph.blocks.conv.ConvBlock` and friends. A block stores a
norm or an activation as plain text, ``"name"`` or ``"name(option=value, ...)"``
(``"leaky_relu(negative_slope=0.1)"``, ``"instance(affine=False)"``), so documents keep it
as a string; ``(name, {option: value})`` pairs (MONAI's convention) are accepted and stored
in that form.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import fields
from functools import lru_cache, partial
from math import prod
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError, SpecError
from .base import BlockSpec, leaf_module

__all__ = [
    "axes_text",
    "conv_label",
    "validate_norm_act",
    "norm_notes",
    "NORMS",
    "ACTS",
    "NormKind",
    "ActKind",
    "STATS",
    "parse_layer",
    "canonical_norm",
    "canonical_act",
    "norm_kind",
    "act_kind",
    "norm_params",
    "act_params",
    "groups_apply",
    "make_act",
    "post_conv_layers",
    "conv_cls",
    "conv_transpose_cls",
    "make_norm",
    "NORM_TYPES",
    "ChannelLayerNorm",
    "Concat",
    "Add",
    "center_crop",
]


def conv_cls(dims: int) -> type[nn.Module]:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]


def conv_transpose_cls(dims: int) -> type[nn.Module]:
    return (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]


@leaf_module
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis at every position (ConvNeXt's "LayerNorm2d")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


# every normalization layer a block makes: they take low-precision inputs with float32 weights
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, ChannelLayerNorm)

Option = Union[bool, int, float]

# what one statistic of a norm is computed over (NormKind.stats)
STATS = ("batch", "instance", "group", "layer", "none")


class NormKind(NamedTuple):
    """A ``ug.NORMS`` entry: how to build a norm layer, and what it does with its input.

    Attributes:
        make: ``make(channels, dims, groups, **options)`` → the layer.
        per_channel: learnable parameters per channel; an ``affine=False`` option drops them.
        stats: what each mean and variance is taken over, which decides the smallest input the
            layer takes (:func:`norm_notes`): ``"batch"`` (per channel, over the batch and every
            position: BatchNorm), ``"instance"`` (per sample and channel, over positions:
            InstanceNorm), ``"group"`` (per sample and group of ``groups`` channels, over the
            group's channels and positions: GroupNorm), ``"layer"`` (per sample and position,
            over channels), ``"none"`` (no statistics).
        running_stats: in eval mode the layer normalises with running statistics (BatchNorm's
            default), so a too-small input raises only in training; a ``track_running_stats``
            option overrides it.
        options: the options ``norm="name(option=value, ...)"`` may set, with their defaults.
    """

    make: Callable[..., nn.Module]
    per_channel: int
    stats: str
    running_stats: bool = False
    options: tuple[tuple[str, Option], ...] = ()


class ActKind(NamedTuple):
    """A ``ug.ACTS`` entry: how to build an activation, and how many parameters it learns.

    Attributes:
        make: ``make(channels, **options)`` → the layer (``channels``: of the tensor it acts on).
        options: the options ``act="name(option=value, ...)"`` may set, with their defaults.
        params: ``params(channels, **options)`` → learnable parameters; ``None``: none.
    """

    make: Callable[..., nn.Module]
    options: tuple[tuple[str, Option], ...] = ()
    params: Callable[..., int] | None = None


def _batch(channels: int, dims: int, groups: int, **options: Any) -> nn.Module:
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](channels, **options)


def _instance(channels: int, dims: int, groups: int, **options: Any) -> nn.Module:
    return (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1](channels, **options)


_BATCH_OPTIONS = (("eps", 1e-5), ("momentum", 0.1), ("affine", True), ("track_running_stats", True))

# name -> NormKind; a plain ``(make(channels, dims, groups), per_channel)`` pair is accepted too,
# its statistics read from the class of the layer it builds (torch's norms)
NORMS: dict[str, Any] = {
    "batch": NormKind(_batch, 2, "batch", True, _BATCH_OPTIONS),
    # statistics only, no scale/shift (Caffe's BatchNorm layer)
    "batch_noaffine": NormKind(partial(_batch, affine=False), 0, "batch", True, _BATCH_OPTIONS[:2]),
    # affine by default (torch's and MONAI's default is instance(affine=False))
    "instance": NormKind(
        _instance,
        2,
        "instance",
        False,
        (("eps", 1e-5), ("momentum", 0.1), ("affine", True), ("track_running_stats", False)),
    ),
    "group": NormKind(
        lambda c, d, g, **o: nn.GroupNorm(g, c, **o), 2, "group", False, (("eps", 1e-5), ("affine", True))
    ),
    "layer": NormKind(lambda c, d, g, **o: ChannelLayerNorm(c, **o), 2, "layer", False, (("eps", 1e-6),)),
}


def _prelu(channels: int, channelwise: bool, init: float) -> nn.Module:
    return nn.PReLU(channels if channelwise else 1, init)


# name -> ActKind; a plain callable returning the layer (``nn.Mish``) is accepted too
ACTS: dict[str, Any] = {
    "relu": ActKind(lambda c: nn.ReLU()),
    "leaky_relu": ActKind(lambda c, **o: nn.LeakyReLU(**o), (("negative_slope", 0.01),)),
    "prelu": ActKind(
        _prelu, (("channelwise", False), ("init", 0.25)), lambda c, channelwise, init: c if channelwise else 1
    ),
    "silu": ActKind(lambda c: nn.SiLU()),
    "gelu": ActKind(lambda c: nn.GELU()),
    "elu": ActKind(lambda c, **o: nn.ELU(**o), (("alpha", 1.0),)),
    "celu": ActKind(lambda c, **o: nn.CELU(**o), (("alpha", 1.0),)),
    "selu": ActKind(lambda c: nn.SELU()),
    "relu6": ActKind(lambda c: nn.ReLU6()),
    "tanh": ActKind(lambda c: nn.Tanh()),
    "sigmoid": ActKind(lambda c: nn.Sigmoid()),
    "mish": ActKind(lambda c: nn.Mish()),
}

# -- "name(option=value, ...)": a norm or activation with options, as plain data ---------

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*\Z", re.S)
_ARG = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+?)\s*\Z")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")
_MAX_TEXT = 400


def _literal(text: str) -> Option | None:
    """``True``/``False``/an int/a finite float from ``text``; ``None`` for anything else (never evaluated)."""
    if text in ("True", "False"):
        return text == "True"
    if not _NUMBER.match(text):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else None


@lru_cache(maxsize=1024)
def parse_layer(text: str) -> tuple[str, tuple[tuple[str, Option], ...]]:
    """``"leaky_relu(negative_slope=0.1)"`` → ``("leaky_relu", (("negative_slope", 0.1),))``.

    Values are ``True``, ``False``, integers and finite floats; nothing is evaluated.

    Raises:
        SpecError: the text is not ``name`` or ``name(option=value, ...)``.
    """
    match = _NAME.match(text) if isinstance(text, str) and len(text) <= _MAX_TEXT else None
    if match is None:
        raise SpecError(f"expected a name or 'name(option=value, ...)', got {text!r}")
    name, body = match.group(1), match.group(2)
    options: dict[str, Option] = {}
    for part in [] if body is None or not body.strip() else body.split(","):
        arg = _ARG.match(part)
        value = _literal(arg.group(2)) if arg else None
        if arg is None or value is None:
            raise SpecError(f"{text!r}: expected option=value with True, False or a number, got {part.strip()!r}")
        if arg.group(1) in options:
            raise SpecError(f"{text!r}: option {arg.group(1)!r} is given twice")
        options[arg.group(1)] = value
    return name, tuple(options.items())


def _format(value: Option) -> str:
    return repr(value) if isinstance(value, (bool, float)) else str(value)


def _canonical(
    value: Any, table: Mapping[str, Any], what: str, defaults: Callable[[str], tuple[tuple[str, Option], ...]]
) -> str:
    """The stored form of a norm or activation: ``name`` or ``name(option=value, ...)`` with
    the options that differ from their defaults, sorted. ``value`` is that text or a
    ``(name, {option: value})`` pair (MONAI's convention)."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], Mapping):
        name, given = value[0], dict(value[1])
        if not isinstance(name, str):
            raise SpecError(f"expected a {what} name, got {name!r}")
        for key, v in given.items():
            if not isinstance(key, str) or not isinstance(v, (bool, int, float)):
                raise SpecError(f"{name}: option {key!r}={v!r} is not True, False or a number")
    elif isinstance(value, str):
        name, pairs = parse_layer(value)
        given = dict(pairs)
    else:
        raise SpecError(
            f"expected a {what} name, 'name(option=value, ...)' or (name, {{option: value}}), got {value!r}"
        )
    if name == "none" and not given:
        return "none"
    if name not in table:
        hint = difflib.get_close_matches(name, table, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SpecError(f"expected one of {', '.join(map(repr, [*table, 'none']))}, got {name!r}{extra}")
    allowed = dict(defaults(name))
    kept = []
    for key in sorted(given):
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise SpecError(f"{name} takes no option {key!r}; its options: {known}")
        v, default = given[key], allowed[key]
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            v = float(v) if ok else v
        if not ok:
            expects = {bool: "True or False", int: "an integer", float: "a number"}[type(default)]
            raise SpecError(f"{name}: option {key} expects {expects}, got {v!r}")
        if v != default or type(v) is not type(default):
            kept.append(f"{key}={_format(v)}")
    return f"{name}({', '.join(kept)})" if kept else name


def _norm_entry(entry: Any) -> NormKind:
    """A ``NORMS`` value as a :class:`NormKind` (a plain pair is read from the layer it builds)."""
    if isinstance(entry, NormKind):
        if entry.stats not in STATS:
            raise SpecError(f"a NormKind's stats must be one of {', '.join(STATS)}, got {entry.stats!r}")
        return entry
    if not isinstance(entry, tuple) or len(entry) != 2:
        raise SpecError(f"a NORMS entry must be a ug.NormKind or a (make, per_channel) pair, got {entry!r}")
    return _read_norm_pair(*entry)


@lru_cache(maxsize=256)
def _read_norm_pair(make: Any, per_channel: Any) -> NormKind:
    """The :class:`NormKind` of a plain ``(make, per_channel)`` entry: statistics from its layer's class."""
    try:
        probe = make(8, 2, 4)
    except (TypeError, ValueError) as e:
        raise SpecError(f"a NORMS entry's make(channels, dims, groups) fails: {type(e).__name__}: {e}") from None
    for cls, stats in (
        (nn.modules.batchnorm._BatchNorm, "batch"),
        (nn.modules.instancenorm._InstanceNorm, "instance"),
        (nn.GroupNorm, "group"),
        ((nn.LayerNorm, ChannelLayerNorm), "layer"),
    ):
        if isinstance(probe, cls):
            running = bool(getattr(probe, "track_running_stats", False))
            return NormKind(make, per_channel, stats, running)
    raise SpecError(
        f"a NORMS entry builds a {type(probe).__name__}, whose statistics unetgraph cannot tell: "
        f"give a ug.NormKind(make, per_channel, stats=one of {', '.join(STATS)})"
    )


@lru_cache(maxsize=256)
def _act_entry(entry: Any) -> ActKind:
    """An ``ACTS`` value as an :class:`ActKind` (a plain callable builds the layer with no arguments)."""
    if isinstance(entry, ActKind):
        return entry
    if not callable(entry):
        raise SpecError(f"an ACTS entry must be a ug.ActKind or a callable returning the layer, got {entry!r}")
    count = sum(p.numel() for p in entry().parameters())
    return ActKind(lambda channels: entry(), (), (lambda channels: count) if count else None)


def norm_kind(norm: str) -> tuple[NormKind, dict[str, Option]]:
    """The entry of a stored ``norm`` value (not ``"none"``) and its options, defaults filled in."""
    name, options = parse_layer(norm)
    if name not in NORMS:
        raise SpecError(f"norm {name!r} is not in ug.NORMS (any more); known: {', '.join(NORMS)}")
    kind = _norm_entry(NORMS[name])
    return kind, {**dict(kind.options), **dict(options)}


def act_kind(act: str) -> tuple[ActKind, dict[str, Option]]:
    """The entry of a stored ``act`` value (not ``"none"``) and its options, defaults filled in."""
    name, options = parse_layer(act)
    if name not in ACTS:
        raise SpecError(f"activation {name!r} is not in ug.ACTS (any more); known: {', '.join(ACTS)}")
    kind = _act_entry(ACTS[name])
    return kind, {**dict(kind.options), **dict(options)}


def canonical_norm(value: Any) -> str:
    """The stored form of a ``norm`` field value (see :func:`parse_layer`); raises :class:`SpecError`."""
    return _canonical(value, NORMS, "norm", lambda name: _norm_entry(NORMS[name]).options)


def canonical_act(value: Any) -> str:
    """The stored form of an ``act`` field value (see :func:`parse_layer`); raises :class:`SpecError`."""
    return _canonical(value, ACTS, "activation", lambda name: _act_entry(ACTS[name]).options)


def axes_text(value: int | tuple[int, ...]) -> str:
    """A per-axis field for labels: ``3`` or ``1×3×3``."""
    return "×".join(map(str, value)) if isinstance(value, tuple) else str(value)


def conv_label(spec: BlockSpec, head: str) -> str:
    """``head`` then the stride, norm, activation and dropout a conv-like spec has, in a few words."""
    parts = [head]
    if getattr(spec, "stride", 1) != 1:
        parts.append(f"stride {spec.stride}")  # type: ignore[attr-defined]
    parts += [p for p in (getattr(spec, "norm", "none"), getattr(spec, "act", "none")) if p != "none"]
    if getattr(spec, "dropout", 0):
        parts.append(f"drop {spec.dropout:g}")  # type: ignore[attr-defined]
    return " ".join(parts)


def validate_norm_act(spec: BlockSpec) -> None:
    """Check whichever of the fields ``norm``, ``groups``, ``eps``, ``act``, ``order`` a spec has,
    the same way for every block: a table name (or ``"none"``) with known options, stored as
    ``name(option=value, ...)``; positive groups; a positive ``eps`` given once; an ``order``
    of the letters N, A and optionally D."""
    names = {f.name for f in fields(spec)}
    for field, canonical in (("norm", canonical_norm), ("act", canonical_act)):
        if field in names:
            try:
                spec._set(field, canonical(getattr(spec, field)))
            except SpecError as e:
                raise SpecError(f"{spec.type_name}.{field}: {e.message}") from None
    if "groups" in names:
        spec._positive_int("groups")
    if "eps" in names:
        eps = spec.eps  # type: ignore[attr-defined]
        spec._require(eps is None or (isinstance(eps, float) and eps > 0), "eps", "a positive float")
        if eps is not None and "norm" in names and spec.norm != "none" and "eps" in dict(parse_layer(spec.norm)[1]):  # type: ignore[attr-defined]
            raise SpecError(f"{spec.type_name}.eps: the norm {spec.norm!r} sets eps already; give it once")  # type: ignore[attr-defined]
    if "order" in names:
        order = spec.order  # type: ignore[attr-defined]
        spec._require(
            isinstance(order, str) and sorted(order) in (["A", "N"], ["A", "D", "N"]),
            "order",
            "the letters N (norm), A (activation) and optionally D (dropout) in the order they follow "
            "each convolution, e.g. 'NA', 'NDA', 'ADN'",
        )


def norm_params(norm: str, channels: int) -> int:
    """Learnable parameters of a ``norm`` layer over ``channels`` (0 for ``"none"``)."""
    if norm == "none":
        return 0
    kind, options = norm_kind(norm)
    return 0 if options.get("affine", True) is False else kind.per_channel * channels


def act_params(act: str, channels: int) -> int:
    """Learnable parameters of an ``act`` layer on ``channels`` channels (PReLU's slopes; 0 for ``"none"``)."""
    if act == "none":
        return 0
    kind, options = act_kind(act)
    return 0 if kind.params is None else kind.params(channels, **options)


def groups_apply(norm: str) -> bool:
    """Whether ``norm`` normalises over groups of channels (the ``groups`` field matters)."""
    return norm != "none" and norm_kind(norm)[0].stats == "group"


def norm_notes(norm: str, groups: int, shape: Sequence[int]) -> list[str]:
    """What a ``norm`` layer does with too few values at ``shape`` ``(N, C, *S)``, from what its
    statistics are taken over (:attr:`NormKind.stats`) and torch's own rules: raise
    :class:`ShapeError` where torch would raise in every mode, return a note where it raises
    only in training or its output is constant."""
    if norm == "none":
        return []
    kind, options = norm_kind(norm)
    n, c, positions = shape[0], shape[1], prod(shape[2:])
    at = "×".join(map(str, shape[2:])) or "1"
    name = parse_layer(norm)[0]
    running = bool(options.get("track_running_stats", kind.running_stats))
    if kind.stats == "group":
        who = "GroupNorm" if name == "group" else f"norm {name!r} (statistics per group of channels)"
        per_group = c // groups * positions
        if n * per_group == 1:  # F.group_norm refuses a single value, in every mode
            raise ShapeError(f"{who} sees one value per group ({c} channels in {groups} groups at {at})")
        return [f"{who} sees one value per group at {at}: its output is constant"] if per_group == 1 else []
    if kind.stats == "instance" and positions == 1:  # per sample and channel, over positions
        who = "InstanceNorm" if name == "instance" else f"norm {name!r} (statistics per sample and channel)"
        if not running:  # input statistics in every mode
            raise ShapeError(f"{who} needs more than one position, gets {at}")
        return [f"{who} sees one position at {at}: it raises in training mode"]
    if kind.stats == "batch" and n * positions == 1:
        who = "batch norm" if name.startswith("batch") else f"norm {name!r} (statistics per channel over the batch)"
        if not running:
            raise ShapeError(
                f"{who} without running statistics needs more than one value per channel, gets {tuple(shape)}"
            )
        return [f"{who} sees one value per channel at {tuple(shape)}: it raises in training mode"]
    return []


def make_norm(norm: str, channels: int, dims: int, groups: int, eps: float | None = None) -> nn.Module:
    """The ``norm`` layer (not ``"none"``) for ``channels``, with its ``eps`` set when given."""
    kind, options = norm_kind(norm)
    layer = kind.make(channels, dims, groups, **options)
    if eps is not None:
        layer.eps = eps  # type: ignore[assignment]  # a float attribute of torch's norms
    return layer


def make_act(act: str, channels: int) -> nn.Module:
    """The ``act`` layer (not ``"none"``) for a tensor of ``channels`` channels."""
    kind, options = act_kind(act)
    return kind.make(channels, **options)


def post_conv_layers(
    order: str, norm: str, act: str, dropout: float, channels: int, dims: int, groups: int, suffix: str = ""
) -> list[tuple[str, nn.Module]]:
    """The layers that follow a convolution, in ``order`` (``"NDA"``: norm, dropout, act):
    ``norm{suffix}``, ``drop{suffix}``, ``act{suffix}``; ``"none"`` norms/acts and zero dropout leave theirs out."""
    layers: list[tuple[str, nn.Module]] = []
    for letter in order:
        if letter == "N" and norm != "none":
            layers.append((f"norm{suffix}", make_norm(norm, channels, dims, groups)))
        elif letter == "A" and act != "none":
            layers.append((f"act{suffix}", make_act(act, channels)))
        elif letter == "D" and dropout:
            layers.append((f"drop{suffix}", nn.Dropout(dropout)))
    return layers


class Concat(nn.Module):
    """Concatenate inputs along channels, after centre-cropping them to the smallest when ``crop``."""

    def __init__(self, crop: bool = False) -> None:
        super().__init__()
        self.crop = crop

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.crop:
            xs = center_crop(xs)
        return torch.cat(xs, dim=1)


class Add(nn.Module):
    """Sum inputs, after centre-cropping them to the smallest when ``crop``."""

    def __init__(self, crop: bool = False) -> None:
        super().__init__()
        self.crop = crop

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.crop:
            xs = center_crop(xs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@leaf_module
class CenterCrop(nn.Module):
    """Crop the first input's spatial axes, centred, to the sizes of the second."""

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        for axis in range(2, x.dim()):
            start = (x.shape[axis] - like.shape[axis]) // 2
            x = x.narrow(axis, start, like.shape[axis])
        return x


def center_crop(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Centre-crop every tensor to the smallest spatial size among them."""
    dims = xs[0].dim()
    target = [min(x.shape[a] for x in xs) for a in range(2, dims)]
    out = []
    for x in xs:
        for a, size in zip(range(2, dims), target):
            x = x.narrow(a, (x.shape[a] - size) // 2, size)
        out.append(x)
    return tuple(out)
