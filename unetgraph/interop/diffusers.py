"""diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` in and out, from their configuration.

diffusers' U-Nets do not trace with ``torch.fx``, so the graph is built from the model's
configuration, with the ordinary blocks of the library (``ResBlock``, ``SelfAttention``,
``Transformer``, ``Down``, ``Up``, ``TimestepEmbedding``, ...) through
:func:`~unetgraph.diffusion_unet`, and the weights follow one key map
(:func:`diffusers_keys`). A configuration the blocks cannot reproduce exactly is refused with
a :class:`~unetgraph.SpecError` naming the field and its value, never imported as a different
model. :func:`to_diffusers` reads a configuration back off a graph, rebuilds the graph it
describes, and refuses (naming the node) a graph that no longer matches it.

diffusers is imported only when a function here is called (``pip install 'unetgraph[diffusers]'``).
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Iterable, Mapping

from torch import fx, nn

from ..blocks import (
    Affine,
    BlockSpec,
    ClassEmbedding,
    ConvBlock,
    Down,
    Head,
    ResBlock,
    ScaleBy,
    SelfAttention,
    TimestepEmbedding,
    Transformer,
    Up,
)
from ..build import diffusion_unet
from ..diff import diff
from ..errors import SpecError, UNetGraphError
from ..graph import UNetGraph
from ..passes.merge_siblings import separate
from ..passes.pipeline import plain
from ..record import find_record

__all__ = ["from_diffusers", "to_diffusers", "graph_from_diffusers_config", "diffusers_keys"]

KINDS = ("UNet2DModel", "UNet2DConditionModel")
# diffusers' activation names -> ours (ACTS); the way back writes the first diffusers name
_ACTS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu"}
_ACT_BACK = {"silu": "silu", "relu": "relu", "gelu": "gelu"}
# block types each model kind can be rebuilt from, per position
_DOWN = {
    "UNet2DModel": ("DownBlock2D", "AttnDownBlock2D"),
    "UNet2DConditionModel": ("DownBlock2D", "CrossAttnDownBlock2D"),
}
_UP = {"UNet2DModel": ("UpBlock2D", "AttnUpBlock2D"), "UNet2DConditionModel": ("UpBlock2D", "CrossAttnUpBlock2D")}
_MID = {
    "UNet2DModel": (None, "UNetMidBlock2D"),
    "UNet2DConditionModel": (None, "UNetMidBlock2D", "UNetMidBlock2DCrossAttn"),
}


# -- configuration -> graph -----------------------------------------------------------------------
def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - diffusers is installed wherever the tests run
        raise SpecError("unetgraph.interop needs diffusers: pip install 'unetgraph[diffusers]'") from e
    return diffusers


def _defaults(kind: str) -> dict[str, Any]:
    """The keyword defaults of ``kind``'s constructor: a partial configuration means them."""
    cls = getattr(_diffusers(), kind)
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}


class _Config:
    """A diffusers configuration being read: every error names the model kind, the field and its value."""

    def __init__(self, kind: str, config: Mapping[str, Any]) -> None:
        if kind not in KINDS:
            raise SpecError(f"diffusers model {kind!r} is not supported; unetgraph rebuilds {', '.join(KINDS)}")
        self.kind = kind
        defaults = _defaults(kind)
        unknown = sorted(k for k in config if not k.startswith("_") and k not in defaults)
        if unknown:
            raise SpecError(f"{kind} config has unknown field {unknown[0]!r} (diffusers {_diffusers().__version__})")
        self.values = {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def __getitem__(self, field: str) -> Any:
        return self.values[field]

    def refuse(self, field: str, why: str, value: Any = None, *, at: str | None = None) -> SpecError:
        value = self.values[field] if value is None and at is None else value
        return SpecError(f"{self.kind} config {at or field}={value!r}: {why}")

    def allow(self, field: str, *allowed: Any, why: str = "") -> Any:
        value = self.values[field]
        if value not in allowed:
            raise self.refuse(field, why or f"unetgraph rebuilds {' or '.join(map(repr, allowed))} only")
        return value

    def per_level(self, field: str, depth: int) -> list[Any]:
        """A field given once or once per level, as one value per level."""
        value = self.values[field]
        if isinstance(value, (list, tuple)):
            if len(value) != depth:
                raise self.refuse(field, f"expected one value per level ({depth})")
            return list(value)
        return [value] * depth


def graph_from_diffusers_config(config: Mapping[str, Any], kind: str = "UNet2DModel") -> UNetGraph:
    """The graph that a diffusers ``kind`` with this configuration computes.

    Args:
        config: the model's configuration (``model.config``; missing fields take diffusers'
            defaults, fields starting with ``_`` are ignored).
        kind: ``"UNet2DModel"`` or ``"UNet2DConditionModel"``.

    Raises:
        SpecError: a field whose value the blocks cannot reproduce exactly, naming it and the value.
    """
    c = _Config(kind, config)
    try:
        return _graph(c, kind)
    except UNetGraphError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:  # a field of the wrong type, e.g. a string for a tuple
        raise SpecError(f"{kind} config cannot be read: {type(e).__name__}: {e}") from e


def _graph(c: _Config, kind: str) -> UNetGraph:
    widths = c["block_out_channels"]
    if not isinstance(widths, (list, tuple)) or not widths or not all(_count(w) for w in widths):
        raise c.refuse("block_out_channels", "expected a sequence of positive channel counts")
    widths = tuple(widths)
    depth = len(widths)
    for field in ("down_block_types", "up_block_types"):
        if len(c[field]) != depth:
            raise c.refuse(field, f"expected one block type per entry of block_out_channels ({depth})")
    down_types = [_block_type(c, "down_block_types", i, _DOWN[kind]) for i in range(depth)]
    up_types = [_block_type(c, "up_block_types", i, _UP[kind]) for i in range(depth)]
    mid_type = c.allow("mid_block_type", *_MID[kind])
    act = _ACTS.get(c["act_fn"])
    if act is None:
        raise c.refuse("act_fn", f"unetgraph rebuilds {', '.join(map(repr, _ACTS))}")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int):
        raise c.refuse("norm_num_groups", "the residual blocks need a group count")
    eps = float(c["norm_eps"])
    shift = c.allow("resnet_time_scale_shift", "default", "scale_shift")
    resblock = ResBlock(
        groups=groups,
        eps=eps,
        act=act,
        dropout=float(c["dropout"]),
        cond="add" if shift == "default" else "scale_shift",
    )
    c.allow("time_embedding_type", "positional", "fourier")
    encoder_attention = [i for i, t in enumerate(down_types) if t != "DownBlock2D"]
    decoder_attention = [depth - 1 - k for k, t in enumerate(up_types) if t != "UpBlock2D"]
    options: dict[str, Any] = dict(
        layers_per_block=_layers_per_block(c, depth),
        attention_levels=encoder_attention,
        decoder_attention_levels=decoder_attention,
        resblock=resblock,
        down=[_downsampler(c, down_types[i], resblock) for i in range(depth - 1)],
        up=[_upsampler(c, up_types[depth - 1 - i], resblock) for i in range(depth - 1)],
        preprocess=Affine(2.0, -1.0) if c["center_input_sample"] else None,
        name=kind,
    )
    if kind == "UNet2DModel":
        options.update(_unet2d_parts(c, widths, resblock, mid_type))
    else:
        options.update(_condition_parts(c, widths, resblock, mid_type, encoder_attention + decoder_attention))
    return diffusion_unet(c["in_channels"], c["out_channels"], widths, **options)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _block_type(c: _Config, field: str, i: int, allowed: tuple[str, ...]) -> str:
    name = c[field][i]
    name = name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name
    if name not in allowed:
        raise c.refuse(field, f"unetgraph rebuilds {' and '.join(allowed)} in a {c.kind}", name, at=f"{field}[{i}]")
    return name


def _layers_per_block(c: _Config, depth: int) -> int:
    layers = set(c.per_level("layers_per_block", depth))
    if len(layers) != 1:
        raise c.refuse("layers_per_block", "unetgraph rebuilds the same number of layers at every level")
    return layers.pop()


def _downsampler(c: _Config, block_type: str, resblock: ResBlock) -> BlockSpec:
    """diffusers' Attn* blocks resample as ``downsample_type`` says; the others always by a conv."""
    kind = c.allow("downsample_type", "conv", "resnet") if c.kind == "UNet2DModel" else "conv"
    if block_type == "AttnDownBlock2D" and kind == "resnet":
        return resblock.with_(resample="avgpool")
    padding = c["downsample_padding"]
    return Down("conv", kernel=3, padding=padding, pad_end=1 if padding == 0 else 0)


def _upsampler(c: _Config, block_type: str, resblock: ResBlock) -> BlockSpec:
    kind = c.allow("upsample_type", "conv", "resnet") if c.kind == "UNet2DModel" else "conv"
    if block_type == "AttnUpBlock2D" and kind == "resnet":
        return resblock.with_(resample="nearest")
    return Up("nearest", kernel=3)


def _unet2d_parts(c: _Config, widths: tuple[int, ...], resblock: ResBlock, mid_type: str | None) -> dict[str, Any]:
    head_dim = c["attention_head_dim"]
    levels = [i for i, t in enumerate(c["down_block_types"]) if "Attn" in t]
    levels += [len(widths) - 1 - k for k, t in enumerate(c["up_block_types"]) if "Attn" in t]
    mid_attention = mid_type is not None and c["add_attention"]
    for i in sorted(set(levels)) + ([len(widths) - 1] if mid_attention else []):
        if head_dim is not None and widths[i] % head_dim:
            raise c.refuse("attention_head_dim", f"does not divide the {widths[i]} channels of level {i}")
    attention = SelfAttention(head_dim=head_dim, groups=resblock.groups, eps=resblock.eps)
    scale = float(c["mid_block_scale_factor"])
    mid_groups = c["attn_norm_num_groups"]
    if mid_groups is None and resblock.cond == "add":
        mid_groups = resblock.groups
    mid = attention.with_(
        norm="group" if mid_groups is not None else "none", groups=mid_groups or 32, output_scale=scale
    )
    fourier = c["time_embedding_type"] == "fourier"
    width = widths[0]
    if fourier:
        time = TimestepEmbedding(encoding="fourier", dim=2 * width, scale=16.0, log=True, flip_sin_to_cos=False)
    else:
        time = TimestepEmbedding(dim=width, flip_sin_to_cos=c["flip_sin_to_cos"], freq_shift=float(c["freq_shift"]))
    time = time.with_(channels=c["time_embedding_dim"] or 4 * width, act="silu")
    return dict(
        attention=attention,
        mid_attention=mid if mid_attention else False,
        mid_layers=None if mid_type is None else 1,
        mid_resblock=resblock.with_(output_scale=scale),
        time_embedding=time,
        **_class_parts(c, time, fourier),
        head=Head(kernel=3, norm="group", groups=resblock.groups, eps=resblock.eps, act="silu"),
        postprocess=ScaleBy("divide") if fourier else None,
    )


def _class_parts(c: _Config, time: TimestepEmbedding, fourier: bool) -> dict[str, Any]:
    kind = c.allow("class_embed_type", None, "timestep")
    if kind == "timestep":
        if fourier:
            raise c.refuse("class_embed_type", "with time_embedding_type='fourier' the labels share its frequencies")
        return dict(class_embedding=time)
    if c["num_class_embeds"] is not None:
        return dict(class_embedding=ClassEmbedding(c["num_class_embeds"], time.channels))
    return {}


def _condition_parts(
    c: _Config, widths: tuple[int, ...], resblock: ResBlock, mid_type: str | None, levels: list[int]
) -> dict[str, Any]:
    depth = len(widths)
    for field, value in (
        ("encoder_hid_dim", None),
        ("encoder_hid_dim_type", None),
        ("addition_embed_type", None),
        ("time_cond_proj_dim", None),
        ("timestep_post_act", None),
        ("time_embedding_act_fn", None),
        ("projection_class_embeddings_input_dim", None),
        ("num_attention_heads", None),
        ("reverse_transformer_layers_per_block", None),
        ("cross_attention_norm", None),
        ("class_embeddings_concat", False),
        ("dual_cross_attention", False),
        ("attention_type", "default"),
    ):
        c.allow(field, value, why=f"unetgraph rebuilds {field}={value!r} only")
    context = set(c.per_level("cross_attention_dim", depth))
    if len(context) != 1 or not isinstance(next(iter(context)), int):
        raise c.refuse("cross_attention_dim", "unetgraph rebuilds one context width for every level")
    heads = c.per_level("attention_head_dim", depth)  # diffusers' name for the number of heads
    layers = c.per_level("transformer_layers_per_block", depth)
    only_cross = c.per_level("only_cross_attention", depth)
    for n in layers:
        if not isinstance(n, int) or n < 1:
            raise c.refuse("transformer_layers_per_block", "expected a positive count per level (not per layer)")
    for i in sorted(set(levels)) + ([depth - 1] if mid_type == "UNetMidBlock2DCrossAttn" else []):
        if widths[i] % heads[i]:
            raise c.refuse(
                "attention_head_dim", f"{heads[i]} heads do not divide the {widths[i]} channels of level {i}"
            )
    kernel_in, kernel_out = c["conv_in_kernel"], c["conv_out_kernel"]
    for field, k in (("conv_in_kernel", kernel_in), ("conv_out_kernel", kernel_out)):
        if not isinstance(k, int) or k % 2 == 0:
            raise c.refuse(field, "expected an odd kernel (an even one shifts the output)")
    transformer = Transformer(groups=resblock.groups, linear_projection=bool(c["use_linear_projection"]))

    def attention_at(level: int) -> Transformer:
        return transformer.with_(heads=heads[level], layers=layers[level], only_cross_attention=only_cross[level])

    width = widths[0]
    time_type = c["time_embedding_type"]
    if time_type == "fourier":
        dim = c["time_embedding_dim"] or 2 * width
        if dim % 2:
            raise c.refuse("time_embedding_dim", "fourier needs an even width")
        time = TimestepEmbedding(
            encoding="fourier", dim=dim, channels=dim, scale=1.0, log=False, flip_sin_to_cos=c["flip_sin_to_cos"]
        )
    else:
        time = TimestepEmbedding(
            dim=width,
            channels=c["time_embedding_dim"] or 4 * width,
            flip_sin_to_cos=c["flip_sin_to_cos"],
            freq_shift=float(c["freq_shift"]),
        )
    time = time.with_(act=resblock.act)
    scale = float(c["mid_block_scale_factor"])
    return dict(
        attention=attention_at,
        cross_attention=None,
        context_channels=next(iter(context)),
        mid_attention=attention_at(depth - 1).with_(only_cross_attention=False),
        mid_layers={None: None, "UNetMidBlock2D": 0, "UNetMidBlock2DCrossAttn": 1}[mid_type],
        mid_resblock=resblock.with_(output_scale=scale),
        time_embedding=time,
        **_class_parts(c, time, time_type == "fourier"),
        stem=ConvBlock(convs=1, kernel=kernel_in, norm="none", act="none"),
        head=Head(kernel=kernel_out, norm="group", groups=resblock.groups, eps=resblock.eps, act=resblock.act),
    )


# -- the key map -------------------------------------------------------------------------------
def _block_rules(block: BlockSpec) -> list[tuple[str, str]]:
    """(pattern, replacement) pairs that turn a key inside a node into the key inside diffusers' module."""
    if isinstance(block, ResBlock):
        return [(r"cond_proj\.(linear\.)?", "time_emb_proj."), (r"shortcut\.", "conv_shortcut.")]
    if isinstance(block, SelfAttention):
        return [(r"^norm\.", "group_norm."), (r"to_out\.", "to_out.0.")]
    if isinstance(block, Transformer):
        return [
            (r"^transformer_blocks\.layer(\d+)\.", r"transformer_blocks.\1."),
            (r"to_out\.", "to_out.0."),
            (r"\.ff\.proj\.", ".ff.net.0.proj."),
            (r"\.ff\.out\.", ".ff.net.2."),
        ]
    if isinstance(block, TimestepEmbedding):
        return [(r"^linear(\d)\.", r"linear_\1.")]
    if isinstance(block, (Down, Up)):
        return [(r"^(conv\.)?", "conv.")]
    if isinstance(block, ConvBlock):
        return [(r"^conv0\.", "")]
    return []


def _node_prefix(graph: UNetGraph, node: str) -> str | None:
    """The module of diffusers' model that holds ``node``'s weights (``None``: it has none)."""
    depth = len([n for n in list(graph) if re.fullmatch(r"enc\d+_0", n)])
    fixed = {"conv_in": "conv_in", "time_embedding": "time_embedding", "class_embedding": "class_embedding"}
    if node in fixed:
        return fixed[node]
    for pattern, prefix in (
        (r"enc(\d+)_(\d+)_attn", lambda m: f"down_blocks.{m[1]}.attentions.{m[2]}"),
        (r"enc(\d+)_(\d+)", lambda m: f"down_blocks.{m[1]}.resnets.{m[2]}"),
        (r"down(\d+)", lambda m: f"down_blocks.{int(m[1]) - 1}.downsamplers.0"),
        (r"mid_res(\d+)", lambda m: f"mid_block.resnets.{m[1]}"),
        (r"mid(\d*)_attn", lambda m: f"mid_block.attentions.{m[1] or 0}"),
        (r"dec(\d+)_(\d+)_attn", lambda m: f"up_blocks.{depth - 1 - int(m[1])}.attentions.{m[2]}"),
        (r"dec(\d+)_(\d+)", lambda m: f"up_blocks.{depth - 1 - int(m[1])}.resnets.{m[2]}"),
        (r"up(\d+)", lambda m: f"up_blocks.{depth - 2 - int(m[1])}.upsamplers.0"),
    ):
        match = re.fullmatch(pattern, node)
        if match:
            return prefix(match)
    return None


def diffusers_keys(graph: UNetGraph, keys: Iterable[str]) -> dict[str, str]:
    """Our state-dict keys (of ``graph`` lowered) → the keys of the same tensors in diffusers' model.

    The one key map between the two (the importer, the exporter, the benchmarks and the tests use
    it). Keys of nodes without a diffusers counterpart (buffers that passes add) are left out.
    """
    out = {}
    names = set(graph)
    for key in keys:
        node, _, rest = key.partition(".")
        if node not in names:
            continue
        block = graph[node].block
        if node == "head":
            rest = rest if rest.startswith(("norm.", "conv.")) else f"conv.{rest}"
            out[key] = rest.replace("norm.", "conv_norm_out.", 1).replace("conv.", "conv_out.", 1)
            continue
        if isinstance(block, TimestepEmbedding) and rest.startswith("encode."):
            out[key] = "time_proj." + rest.removeprefix("encode.")  # the Fourier frequencies
            continue
        prefix = _node_prefix(graph, node)
        if prefix is None:
            continue
        for pattern, replacement in _block_rules(block):
            rest = re.sub(pattern, replacement, rest)
        out[key] = f"{prefix}.{rest}"
    return out


# -- in and out --------------------------------------------------------------------------------
def _kind_of(model: Any) -> str:
    d = _diffusers()
    for kind in KINDS:
        if isinstance(model, getattr(d, kind)):
            return kind
    raise SpecError(f"from_diffusers takes a {' or '.join(KINDS)}, got a {type(model).__name__}")


def from_diffusers(model: nn.Module) -> tuple[UNetGraph, fx.GraphModule]:
    """The graph of a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` and its lowered module
    with the model's weights, on the model's device, in its train/eval mode, in float32 (a
    half-precision model's weights are upcast; ``ug.optimize(gm, dtype=torch.bfloat16)`` gives
    reduced precision with the casts in the right places).

    The module computes what the model computes (``gm(x, t)``, ``gm(x, t, y)`` with class
    labels, ``gm(x, t, context)`` with ``encoder_hidden_states``) and returns the sample tensor.

    Raises:
        SpecError: the model is of another class, or its configuration has a field that the
            blocks cannot reproduce exactly (the message names the field and its value).
    """
    kind = _kind_of(model)
    graph = graph_from_diffusers_config(model.config, kind)  # type: ignore[arg-type]
    theirs = model.state_dict()
    gm = graph.lower()
    keys = diffusers_keys(graph, gm.state_dict())
    _check_one_to_one(kind, keys, theirs, gm.state_dict(), [n for n, _ in gm.named_parameters()])
    gm.load_state_dict({ours: theirs[k] for ours, k in keys.items()}, strict=False)  # copied, as float32
    first = next(iter(theirs.values()), None)
    if first is not None:
        gm.to(first.device)
    gm.train(model.training)
    return graph, gm


def _check_one_to_one(
    kind: str, keys: Mapping[str, str], theirs: Mapping[str, Any], ours: Mapping[str, Any], params: Iterable[str]
) -> None:
    """Every tensor of diffusers' model and every parameter of ours has exactly one counterpart of the same shape."""
    missing = sorted(set(theirs) - set(keys.values()))
    extra = sorted(k for k, v in keys.items() if v not in theirs) + sorted(set(params) - set(keys))
    if missing or extra:
        raise SpecError(
            f"{kind}: the weights do not map one to one (diffusers keys without a node: {missing[:3]}; "
            f"node keys without a diffusers tensor: {extra[:3]})"
        )
    for k, v in keys.items():
        if tuple(ours[k].shape) != tuple(theirs[v].shape):
            raise SpecError(f"{k} has shape {tuple(ours[k].shape)} but diffusers' {v} has {tuple(theirs[v].shape)}")


def to_diffusers(
    model: fx.GraphModule | tuple[UNetGraph, nn.Module], *, sample_size: int | tuple[int, int] | None = None
) -> nn.Module:
    """A diffusers ``UNet2DModel`` (or ``UNet2DConditionModel``, for graphs with a context) with
    the weights of ``model``: a module made by :func:`unetgraph.lower` (or ``optimize``), or a
    ``(graph, module)`` pair as :func:`from_diffusers` returns.

    The graph must still be one that a diffusers configuration describes: its configuration is
    read off the graph, rebuilt, and compared node by node.

    Args:
        sample_size: written into the configuration (the graph does not know it).

    Returns:
        the model, on the module's device and dtype, in its train/eval mode; for a graph that
        :func:`from_diffusers` made, its state dict equals the original's.

    Raises:
        SpecError: a node (named) that diffusers' layout has no place for, or that differs from
            the one the configuration read off the graph would build.
    """
    if isinstance(model, tuple):
        graph, module = model
    else:
        record = find_record(model)
        if record is None:
            raise SpecError(f"to_diffusers takes a module made by unetgraph.lower, got a {type(model).__name__}")
        graph, module = record.graph, getattr(model, "_orig_mod", model)  # torch.compile's wrapper: its module
    kind, config = config_from_graph(graph)
    expected = graph_from_diffusers_config(config, kind)
    first = diff(expected, graph).first_difference()
    if first is not None:
        node, words = first
        raise SpecError(f"{words}: the graph no longer fits diffusers' {kind} layout", node=node)
    peer = getattr(_diffusers(), kind)(**config, sample_size=sample_size)
    if isinstance(module, fx.GraphModule):
        # optimize()'s packed and merged Linears, back to diffusers' own layers (same parameters)
        module = separate(plain(module, unfold=False))
    ours = module.state_dict()
    keys = diffusers_keys(graph, ours)
    theirs = peer.state_dict()
    _check_one_to_one(kind, keys, theirs, ours, [n for n, _ in module.named_parameters()])
    peer.load_state_dict({v: ours[k] for k, v in keys.items()})
    first = next(iter(ours.values()), None)
    current = next(iter(theirs.values()), None)
    if first is not None and current is not None and (first.device, first.dtype) != (current.device, current.dtype):
        peer.to(device=first.device, dtype=first.dtype)
    peer.train(module.training)
    return peer


# -- graph -> configuration ----------------------------------------------------------------------
def _block(graph: UNetGraph, node: str, cls: type[BlockSpec], kind: str) -> Any:
    if node not in list(graph):
        raise SpecError(f"{kind} needs a node {node!r}; the graph has none", node=node)
    block = graph[node].block
    if not isinstance(block, cls):
        raise SpecError(f"{node}: a {block.type_name} where diffusers' {kind} has a {cls.__name__}", node=node)
    return block


def config_from_graph(graph: UNetGraph) -> tuple[str, dict[str, Any]]:
    """The diffusers model kind and configuration that describe ``graph``, in canonical form:
    fields that do not change the model keep diffusers' defaults. Whether the graph really is
    that model is for the caller to check (:func:`to_diffusers` rebuilds and compares)."""
    names = set(graph)
    kind = "UNet2DConditionModel" if "context" in graph.inputs else "UNet2DModel"
    depth = 0
    while f"enc{depth}_0" in names:
        depth += 1
    if depth == 0:
        raise SpecError(f"{kind} needs residual blocks enc0_0, enc1_0, …; the graph has none", node="enc0_0")
    layers = 0
    while f"enc0_{layers}" in names:
        layers += 1
    res = _block(graph, "enc0_0", ResBlock, kind)
    widths = [graph[f"enc{i}_0"].type.channels for i in range(depth)]
    time = _block(graph, "time_embedding", TimestepEmbedding, kind)
    head = _block(graph, "head", Head, kind)
    x = graph[graph.inputs[0]].type
    act = _ACT_BACK.get(res.act)
    if act is None:
        raise SpecError(f"enc0_0: act={res.act!r} has no diffusers act_fn", node="enc0_0")
    attn_down = "CrossAttnDownBlock2D" if kind == "UNet2DConditionModel" else "AttnDownBlock2D"
    attn_up = "CrossAttnUpBlock2D" if kind == "UNet2DConditionModel" else "AttnUpBlock2D"
    config: dict[str, Any] = dict(
        in_channels=x.channels,
        out_channels=graph["head"].type.channels,
        center_input_sample="preprocess" in names,
        down_block_types=tuple(attn_down if f"enc{i}_0_attn" in names else "DownBlock2D" for i in range(depth)),
        up_block_types=tuple(attn_up if f"dec{depth - 1 - k}_0_attn" in names else "UpBlock2D" for k in range(depth)),
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        dropout=float(res.dropout),
        act_fn=act,
        norm_num_groups=res.groups,
        norm_eps=1e-5 if res.eps is None else res.eps,
        resnet_time_scale_shift="default" if res.cond == "add" else "scale_shift",
    )
    defaults = _defaults(kind)
    if "mid_res0" not in names:
        config["mid_block_type"] = None
    mid = graph["mid_res0"].block if "mid_res0" in names else None
    config["mid_block_scale_factor"] = float(mid.output_scale) if isinstance(mid, ResBlock) else 1
    convs = [b for i in range(1, depth) if isinstance(b := graph[f"down{i}"].block, Down)]
    config["downsample_padding"] = (0 if convs[0].pad_end else convs[0].padding) if convs else 1
    fourier = time.encoding == "fourier"
    if not fourier:
        config.update(flip_sin_to_cos=time.flip_sin_to_cos, freq_shift=_number(time.freq_shift))
    if "class_embedding" in names:
        labels = graph["class_embedding"].block
        if isinstance(labels, TimestepEmbedding):
            config["class_embed_type"] = "timestep"
        else:
            config["num_class_embeds"] = getattr(labels, "num_classes", None)
    attentions = [graph[n].block for n in list(graph) if n.endswith("_attn")]
    if kind == "UNet2DModel":
        config["time_embedding_type"] = "fourier" if fourier else "positional"
        config["time_embedding_dim"] = None if time.channels == 4 * widths[0] else time.channels
        if "mid_res0" in names:
            config["add_attention"] = "mid_attn" in names
        if "mid_attn" in names:
            m = _block(graph, "mid_attn", SelfAttention, kind)
            groups = m.groups if m.norm == "group" else None
            default = res.groups if res.cond == "add" else None
            config["attn_norm_num_groups"] = None if groups == default else groups
        heads = [a for a in attentions if isinstance(a, SelfAttention)]
        if heads:
            config["attention_head_dim"] = heads[0].head_dim
        for field, resnet, i in (("downsample_type", "down", 1), ("upsample_type", "up", 0)):
            blocks = [graph[f"{resnet}{j}"].block for j in range(i, depth - 1 + i) if f"{resnet}{j}" in names]
            config[field] = "resnet" if any(isinstance(b, ResBlock) for b in blocks) else "conv"
    else:
        config.update(_condition_config(graph, depth, time, head, kind))
    return kind, {k: v for k, v in config.items() if k not in defaults or v != defaults[k] or k in _ALWAYS}


# fields written even when they equal diffusers' default, so a configuration reads on its own
_ALWAYS = frozenset({"in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types"})


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _condition_config(graph: UNetGraph, depth: int, time: TimestepEmbedding, head: Head, kind: str) -> dict[str, Any]:
    names = set(graph)
    context = graph["context"].type.channels
    per_level: dict[str, list[Any]] = {"heads": [], "layers": [], "only": []}
    linear = False
    for i in range(depth):
        node = f"enc{i}_0_attn" if f"enc{i}_0_attn" in names else f"dec{i}_0_attn"
        if node not in names and i == depth - 1 and "mid_attn" in names:
            node = "mid_attn"
        if node in names:
            t = _block(graph, node, Transformer, kind)
            linear = t.linear_projection
            per_level["heads"].append(t.heads or 1)
            per_level["layers"].append(t.layers)
            per_level["only"].append(t.only_cross_attention if node != "mid_attn" else None)  # the middle's is fixed
        else:
            per_level["heads"].append(None)
            per_level["layers"].append(None)
            per_level["only"].append(None)

    def once(values: list[Any], default: Any) -> Any:
        """One value if the levels that have attention agree, else one per level (the others: ``default``)."""
        known = {v for v in values if v is not None}
        if len(known) <= 1:
            return known.pop() if known else default
        return tuple(default if v is None else v for v in values)

    stem = _block(graph, "conv_in", ConvBlock, kind)
    fourier = time.encoding == "fourier"
    config: dict[str, Any] = dict(
        cross_attention_dim=context,
        attention_head_dim=once(per_level["heads"], 8),
        transformer_layers_per_block=once(per_level["layers"], 1),
        only_cross_attention=once(per_level["only"], False),
        use_linear_projection=linear,
        conv_in_kernel=stem.kernel,
        conv_out_kernel=head.kernel,
        time_embedding_type="fourier" if fourier else "positional",
    )
    width = graph["conv_in"].type.channels
    config["time_embedding_dim"] = None if time.channels == (2 if fourier else 4) * width else time.channels
    if fourier:
        config["flip_sin_to_cos"] = time.flip_sin_to_cos
    if "mid_res0" in names:
        config["mid_block_type"] = "UNetMidBlock2DCrossAttn" if "mid_attn" in names else "UNetMidBlock2D"
    return config
