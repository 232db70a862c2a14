"""``unet(...)``: the standard U-Net as one call with every part replaceable."""

from __future__ import annotations

from dataclasses import fields
from fractions import Fraction
from itertools import pairwise
from typing import Callable, Sequence, Union

from .blocks import (
    Affine,
    BlockSpec,
    ClassEmbedding,
    ConvBlock,
    CrossAttention,
    Down,
    Head,
    Merge,
    ResBlock,
    SelfAttention,
    TimestepEmbedding,
    Up,
    create_block,
)
from .errors import SpecError
from .graph import GraphBuilder, In, UNetGraph
from .types import EdgeKind, Role, TensorType

__all__ = ["unet", "diffusion_unet", "nested_unet"]

# A part is a spec, a mode name ("maxpool"), one of those per level, or a function of the level.
Part = Union[str, BlockSpec, Sequence[Union[str, BlockSpec]], Callable[[int], Union[str, BlockSpec]]]
# An optional spec, one per level, or a function of the level (None: no block there).
LevelPart = Union[BlockSpec, None, Sequence[Union[BlockSpec, None]], Callable[[int], Union[BlockSpec, None]]]


def unet(
    in_channels: int,
    out_channels: int,
    widths: Sequence[int] = (64, 128, 256, 512, 1024),
    *,
    dims: int = 2,
    block: Part = ConvBlock(),
    encoder_block: Part | None = None,
    bottleneck_block: Part | None = None,
    decoder_block: Part | None = None,
    decoder_widths: Sequence[int] | None = None,
    down: Part | None = "maxpool",
    up: Part = "transpose",
    merge: Part = "concat",
    head: BlockSpec | None = None,
    skip_first: bool = True,
    gate: BlockSpec | None = None,
    deep_supervision: int = 0,
    encoder: BlockSpec | None = None,
    decoder_channels: Sequence[int] | None = None,
    name: str = "UNet",
) -> UNetGraph:
    """Build the standard U-Net graph: ``len(widths)`` levels, one skip per level.

    Nodes are named by level ``i``: ``enc{i}`` and ``down{i+1}`` descend, ``mid`` is the
    bottleneck, ``up{i}``, ``merge{i}`` (fed by the skip ``enc{i}→merge{i}`` then ``up{i}``)
    and ``dec{i}`` ascend, ``head`` projects to ``out_channels``.

    Args:
        in_channels: channels of the input ``x``.
        out_channels: channels of the output (classes, or the predicted noise's channels).
        widths: channels per level, shallow to deep; the last is the bottleneck's.
        dims: spatial dimensions, 1, 2 or 3.
        block: the block of every encoder, bottleneck and decoder node; its ``channels``
            is set per level.
        encoder_block, bottleneck_block, decoder_block: override ``block`` for one role.
        decoder_widths: channels of the decoder block per level, shallow to deep (one fewer
            than ``widths``; ``None``: ``widths[:-1]``), e.g. MONAI's ``BasicUNet``, whose last
            decoder block has its own width.
        down: ``"maxpool"``, ``"avgpool"``, ``"conv"``, ``"pixel_unshuffle"`` or a
            :class:`~unetgraph.Down`; ``None`` adds no down nodes: the encoder block of each
            deeper level downsamples itself (give it a ``stride``, as nnU-Net does).
        up: ``"transpose"``, ``"nearest"``, ``"bilinear"``, ``"pixel_shuffle"`` or an
            :class:`~unetgraph.Up`; mode names take the factor that restores the skip's
            scale. An ``Up`` whose ``channels`` is ``None`` gets the level's width.
        merge: ``"concat"``, ``"add"`` or a :class:`~unetgraph.Merge`.
        head: the output block (default: a 1×1 :class:`~unetgraph.Head`).
        skip_first: the merge takes the skip then the decoder path (Ronneberger's order);
            ``False`` takes the decoder path first (nnU-Net's and diffusers' concat order).
        gate: a two-input block (e.g. :class:`~unetgraph.AttentionGate`) that weighs each skip
            by the decoder path before the merge: ``gate{i}`` takes the skip ``enc{i}→gate{i}``
            and ``up{i}``; ``merge{i}`` then takes ``gate{i}`` and ``up{i}`` (Attention U-Net).
        deep_supervision: extra heads ``head1`` … ``head{k}`` on the decoder levels 1 … k
            (copies of ``head``); the model then returns a dict ``{"head": …, "head1": …}``.
        encoder: a block with one output per scale, e.g. a pretrained :class:`~unetgraph.Backbone`,
            in place of the encoder levels: one node ``encoder`` whose outputs feed the merges as
            skips (``encoder[k]→merge{i}``; each output's level is its number of halvings) and whose
            deepest output feeds the decoder (or ``mid``, with a ``bottleneck_block``). The decoder
            has a level for every halving down to the deepest output; a level without a feature
            (level 0, or 1 below a stride-4 stem) has no merge. ``widths``, ``down`` and
            ``encoder_block`` are then not used.
        decoder_channels: with ``encoder``, the decoder's channels from deep to shallow, one per
            decoder level (smp's order); default the first of ``(256, 128, 64, 32, 16)``.
        name: the model name (the lowered class's name).

    Every part may also be a list with one entry per level (``down``, ``up``: per
    transition, deepest last) or a function of the level returning one, so per-level
    choices (e.g. anisotropic ``Down(factor=(1, 2, 2))``) need no special argument.

    Shape:
        ``x: (N, in_channels, *S) → (N, out_channels, *S)`` for padded blocks; see
        :meth:`UNetGraph.valid_sizes` for which ``S`` fit.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.unet(1, 2, widths=(16, 32, 64), block=ug.ConvBlock(norm="group", groups=8))
        >>> [n.name for n in g.nodes(role="encoder")]
        ['enc0', 'enc1']
        >>> str(g.valid_sizes())
        'H and W must be multiples of 4, at least 4'
    """
    if encoder is not None:
        return _encoder_unet(
            in_channels,
            out_channels,
            encoder,
            decoder_channels,
            dims=dims,
            block=block,
            encoder_block=encoder_block,
            bottleneck_block=bottleneck_block,
            decoder_block=decoder_block,
            up=up,
            merge=merge,
            head=head,
            skip_first=skip_first,
            gate=gate,
            deep_supervision=deep_supervision,
            name=name,
        )
    if decoder_channels is not None:
        raise SpecError("decoder_channels: give it with encoder=...; without one, widths sets every level's channels")
    _check_common(in_channels, out_channels, widths, dims)
    depth = len(widths)
    if decoder_widths is None:
        decoder_widths = widths[:-1]
    elif isinstance(decoder_widths, (str, bytes)) or not isinstance(decoder_widths, Sequence):
        raise SpecError(f"decoder_widths: expected {depth - 1} channel counts, got {decoder_widths!r}")
    if len(decoder_widths) != depth - 1:
        raise SpecError(
            f"decoder_widths: expected {depth - 1} channel counts (one per decoder level), got {len(decoder_widths)}"
        )
    for i, w in enumerate(decoder_widths):
        _positive(f"decoder_widths[{i}]", w)
    most = max(0, depth - 2)
    if not isinstance(deep_supervision, int) or isinstance(deep_supervision, bool) or not 0 <= deep_supervision <= most:
        raise SpecError(
            f"deep_supervision: expected 0 … {most} extra heads for {depth} levels, got {deep_supervision!r}"
        )
    if not skip_first and _any_crop(merge, depth):
        raise SpecError(
            "skip_first=False with a cropping Merge: the merge crops to its last input, which must be the up path"
        )
    b = GraphBuilder(name)
    x = b.input("x", channels=in_channels, dims=dims)
    h = x
    skips = []
    for i in range(depth - 1):
        h = b.add(f"enc{i}", _block(encoder_block or block, i, widths[i], "encoder_block"), Role.ENCODER, i, [h])
        skips.append(h)
        if down is not None:
            h = b.add(f"down{i + 1}", _part(down, i, Down, "down"), Role.DOWN, i + 1, [h])
    h = b.add(
        "mid",
        _block(bottleneck_block or block, depth - 1, widths[-1], "bottleneck_block"),
        Role.BOTTLENECK,
        depth - 1,
        [h],
    )
    for i in reversed(range(depth - 1)):
        up_i = _part(up, i, Up, "up")
        if isinstance(up, str):
            up_i = up_i.with_(factor=_factor(b.type_of(skips[i]), b.type_of(h)))
        if getattr(up_i, "conv", True) and _unset(up_i, "channels"):
            up_i = up_i.with_(channels=widths[i])
        h = b.add(f"up{i}", up_i, Role.UP, i, [h])
        skip: str | In = In(skips[i], EdgeKind.SKIP)
        if gate is not None:
            skip = b.add(f"gate{i}", gate, Role.MERGE, i, [skip, h])
        pair = [skip, h] if skip_first else [h, skip]
        h = b.add(f"merge{i}", _part(merge, i, Merge, "merge"), Role.MERGE, i, pair)
        h = b.add(
            f"dec{i}", _block(decoder_block or block, i, decoder_widths[i], "decoder_block"), Role.DECODER, i, [h]
        )
    head = _head(head, out_channels)
    outputs = [b.add("head", head, Role.HEAD, 0, [h])]
    outputs += [b.add(f"head{i}", head, Role.HEAD, i, [f"dec{i}"]) for i in range(1, deep_supervision + 1)]
    return b.build(outputs=outputs)


_SMP_DECODER = (256, 128, 64, 32, 16)


def _encoder_unet(
    in_channels: int,
    out_channels: int,
    encoder: BlockSpec,
    decoder_channels: Sequence[int] | None,
    *,
    dims: int,
    block: Part,
    encoder_block: Part | None,
    bottleneck_block: Part | None,
    decoder_block: Part | None,
    up: Part,
    merge: Part,
    head: BlockSpec | None,
    skip_first: bool,
    gate: BlockSpec | None,
    deep_supervision: int,
    name: str,
) -> UNetGraph:
    """:func:`unet` around a multi-output ``encoder`` (a backbone): its outputs are the skips."""
    if not isinstance(encoder, BlockSpec):
        raise SpecError(f"encoder: expected a block spec such as ug.Backbone('resnet34'), got {encoder!r}")
    if encoder_block is not None:
        raise SpecError("encoder_block: the encoder= block is the whole encoder; give one or the other")
    _positive("in_channels", in_channels)
    _positive("out_channels", out_channels)
    b = GraphBuilder(name)
    x = b.input("x", channels=in_channels, dims=dims)
    b.add("encoder", encoder, Role.ENCODER, 0, [x])
    enc = b.node("encoder")
    if len(enc.outputs) < 2:
        raise SpecError(f"encoder: {encoder.label()} has one output; a U-Net encoder needs one per scale")
    levels = [lv for lv in enc.levels if lv is not None and lv >= 1]
    if len(levels) < len(enc.levels) or any(a >= b_ for a, b_ in pairwise(levels)):
        scales = ", ".join(str(t.scale[0]) for t in enc.outputs)
        raise SpecError(
            f"encoder: {encoder.label()}'s outputs are at scales {scales}; the decoder needs one output per "
            "halving, each smaller than the one before and below the input's scale"
        )
    deepest = levels[-1]
    if decoder_channels is None:
        if deepest > len(_SMP_DECODER):
            raise SpecError(f"decoder_channels: the encoder goes down {deepest} levels; give {deepest} channel counts")
        decoder_channels = _SMP_DECODER[:deepest]
    if isinstance(decoder_channels, (str, bytes)) or not isinstance(decoder_channels, Sequence):
        raise SpecError(f"decoder_channels: expected a sequence of channel counts, got {decoder_channels!r}")
    if len(decoder_channels) != deepest:
        raise SpecError(
            f"decoder_channels: the encoder's deepest output is {deepest} halvings down, so the decoder has "
            f"{deepest} levels; got {len(decoder_channels)} channel counts {tuple(decoder_channels)}"
        )
    for i, w in enumerate(decoder_channels):
        _positive(f"decoder_channels[{i}]", w)
    most = max(0, deepest - 1)
    if not isinstance(deep_supervision, int) or isinstance(deep_supervision, bool) or not 0 <= deep_supervision <= most:
        raise SpecError(f"deep_supervision: expected 0 … {most} extra heads, got {deep_supervision!r}")
    at = {lv: k for k, lv in enumerate(levels)}
    h: str | In = In("encoder", EdgeKind.DATA, len(levels) - 1)
    if bottleneck_block is not None:
        channels = enc.outputs[-1].channels
        h = b.add("mid", _block(bottleneck_block, deepest, channels, "bottleneck_block"), Role.BOTTLENECK, deepest, [h])
    for i, level in enumerate(reversed(range(deepest))):
        width = decoder_channels[i]
        below = b.type_of(h) if isinstance(h, str) else b.type_of(h.src, h.out)
        up_i = _part(up, level, Up, "up")
        if isinstance(up, str):
            up_i = up_i.with_(factor=_factor(below.rescaled((Fraction(2),) * below.dims), below))
        if getattr(up_i, "conv", True) and _unset(up_i, "channels"):
            up_i = up_i.with_(channels=width)
        h = b.add(f"up{level}", up_i, Role.UP, level, [h])
        if level in at:
            skip: str | In = In("encoder", EdgeKind.SKIP, at[level])
            if gate is not None:
                skip = b.add(f"gate{level}", gate, Role.MERGE, level, [skip, h])
            pair = [skip, h] if skip_first else [h, skip]
            h = b.add(f"merge{level}", _part(merge, level, Merge, "merge"), Role.MERGE, level, pair)
        dec = _block(decoder_block or block, level, width, "decoder_block")
        h = b.add(f"dec{level}", dec, Role.DECODER, level, [h])
    head = _head(head, out_channels)
    outputs = [b.add("head", head, Role.HEAD, 0, [h])]
    outputs += [b.add(f"head{i}", head, Role.HEAD, i, [f"dec{i}"]) for i in range(1, deep_supervision + 1)]
    return b.build(outputs=outputs)


def diffusion_unet(
    in_channels: int = 3,
    out_channels: int | None = None,
    widths: Sequence[int] = (128, 256, 256, 256),
    *,
    layers_per_block: int = 2,
    attention_levels: Sequence[int] = (1,),
    mid_attention: bool | BlockSpec = True,
    dims: int = 2,
    resblock: ResBlock = ResBlock(),
    attention: LevelPart = SelfAttention(),
    time_embedding: TimestepEmbedding | None = TimestepEmbedding(),
    num_classes: int | None = None,
    context_channels: int | None = None,
    cross_attention: CrossAttention | None = CrossAttention(),
    down: Part = Down("conv", kernel=3, padding=1),
    up: Part = Up("nearest"),
    head: Head | None = None,
    name: str = "DiffusionUNet",
    decoder_attention_levels: Sequence[int] | None = None,
    mid_layers: int | None = 1,
    mid_resblock: ResBlock | None = None,
    class_embedding: BlockSpec | None = None,
    stem: BlockSpec | None = None,
    preprocess: BlockSpec | None = None,
    postprocess: BlockSpec | None = None,
) -> UNetGraph:
    """The DDPM U-Net topology (Ho et al. 2020; diffusers' ``UNet2DModel``), conditioned on a timestep.

    A stem convolution ``conv_in``; per level ``i``, ``layers_per_block`` residual blocks
    ``enc{i}_{j}`` (each followed by ``enc{i}_{j}_attn`` at ``attention_levels``) and, except
    at the deepest level, a downsampler ``down{i+1}``; a middle ``mid_res0 → mid_attn →
    mid_res1``; per level, ``layers_per_block + 1`` decoder blocks ``dec{i}_{j}``, each after a
    concat ``merge{i}_{j}`` of the decoder path and one skip, and an upsampler ``up{i-1}``.
    Every encoder output is a skip (the stem or downsampler output, then each block's),
    consumed in reverse order by the decoder blocks of its level. The output is
    ``GroupNorm → act → conv3×3`` (``head``).

    The timestep ``t`` (N,) goes through ``time_embedding`` (sinusoidal + MLP); with
    ``num_classes`` a label input ``y`` adds a learned class vector (``emb = time + class``).
    The embedding reaches every :class:`~unetgraph.ResBlock` through a ``cond`` edge. With
    ``context_channels`` a context input ``(N, L, context_channels)`` feeds a
    :class:`~unetgraph.CrossAttention` after each attention block. The lowered module is
    called as ``forward(x, t)``, ``forward(x, t, y)`` or ``forward(x, t, context)``.

    Args:
        in_channels, out_channels: image channels in and out (``out_channels=None``: the same).
        widths: channels per level (diffusers' ``block_out_channels``).
        layers_per_block: residual blocks per encoder level (the decoder has one more).
        attention_levels: levels whose encoder blocks are followed by ``attention`` (and decoder
            blocks too, unless ``decoder_attention_levels`` says otherwise).
        mid_attention: the attention in the middle block: ``True`` (the ``attention`` of the
            deepest level), ``False``, or a spec of its own.
        dims: spatial dimensions.
        resblock: the template of every residual block (norm, groups, eps, act, dropout,
            ``cond``: ``"add"`` or ``"scale_shift"``); channels are set per level.
        attention: the template of the attention blocks (``SelfAttention``, ``LinearAttention``,
            ``Transformer``), one per level as a list, or a function of the level; ``None`` for no
            self-attention (cross-attention to a context stays). A block that takes conditioning
            (``Transformer``) receives the context on a ``cond`` edge.
        time_embedding: the timestep embedding; its ``dim`` (if ``None``) becomes
            ``widths[0]``, and its ``channels`` default to ``4 * dim``. ``None`` builds an unconditioned model
            without a ``t`` input.
        num_classes: adds the label input ``y`` and a class embedding.
        context_channels: adds the ``context`` input and cross-attention.
        cross_attention: the template of the cross-attention blocks ``{base}_xattn`` after each
            attention; ``None`` for none (e.g. when ``attention`` attends to the context itself).
        down: the downsampler (diffusers: a 3×3 stride-2 conv; ``Down(..., pad_end=1,
            padding=0)`` for the DDPM checkpoints' ``downsample_padding=0``); a block that takes
            conditioning (a ``ResBlock(resample="avgpool")``) receives the embedding.
        up: the upsampler (nearest ×2 then a 3×3 conv); its channels are kept. Conditioned like ``down``.
        head: the output block (default: ``GroupNorm → act → conv3×3`` with the residual
            blocks' norm, groups, eps and act).
        name: the model name.
        decoder_attention_levels: levels whose decoder blocks are followed by attention
            (``None``: ``attention_levels``).
        mid_layers: the middle block is ``mid_res0`` then ``mid_layers`` × (attention,
            ``mid_res{j}``); ``0`` keeps one residual block, ``None`` leaves an identity node ``mid``
            (diffusers' ``mid_block_type=None``).
        mid_resblock: the template of the middle residual blocks (``None``: ``resblock``).
        class_embedding: the class embedding (``None``: ``ClassEmbedding(num_classes)`` when
            ``num_classes`` is given); a ``TimestepEmbedding`` here encodes a real-valued label
            ``y`` like a timestep (diffusers' ``class_embed_type="timestep"``).
        stem: the first block ``conv_in`` (``None``: a 3×3 convolution); its channels are set to ``widths[0]``.
        preprocess: a block ``preprocess`` applied to ``x`` before the stem (e.g.
            ``Affine(2, -1)``: diffusers' ``center_input_sample``).
        postprocess: a block ``postprocess`` after the head, the model's output; one that takes
            conditioning receives ``t`` (``ScaleBy("divide")``: a score model's output ÷ σ).

    Shape:
        ``x: (N, in_channels, *S)``, ``t: (N,)`` → ``(N, out_channels, *S)``, ``S`` a
        multiple of ``2^(len(widths)-1)``.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.diffusion_unet(3, widths=(32, 64), layers_per_block=1, attention_levels=(1,),
        ...                       resblock=ug.ResBlock(groups=8), attention=ug.SelfAttention(groups=8))
        >>> g.inputs
        ('x', 't')
        >>> [e.name for e in g.skips if e.dst.startswith("merge0")]
        ['enc0_0→merge0_0', 'conv_in→merge0_1']
    """
    out_channels = in_channels if out_channels is None else out_channels
    _check_common(in_channels, out_channels, widths, dims)
    _positive("layers_per_block", layers_per_block)
    depth = len(widths)
    bad = [a for a in attention_levels if not (isinstance(a, int) and 0 <= a < depth)]
    if bad:
        raise SpecError(f"attention_levels: {bad} are not levels of {depth} (0 … {depth - 1})")
    decoder_levels = attention_levels if decoder_attention_levels is None else decoder_attention_levels
    bad = [a for a in decoder_levels if not (isinstance(a, int) and 0 <= a < depth)]
    if bad:
        raise SpecError(f"decoder_attention_levels: {bad} are not levels of {depth} (0 … {depth - 1})")
    if mid_layers is not None:
        _positive("mid_layers", mid_layers, zero=True)
    mid_resblock = resblock if mid_resblock is None else mid_resblock
    checks: list[tuple[str, BlockSpec, type[BlockSpec]]] = [
        ("resblock", resblock, ResBlock),
        ("mid_resblock", mid_resblock, ResBlock),
    ]
    if cross_attention is not None:
        checks.append(("cross_attention", cross_attention, CrossAttention))
    for arg, spec, cls in checks:
        if not isinstance(spec, cls):
            raise SpecError(f"{arg}: expected a {cls.__name__} spec, got {spec!r}")
    for arg, part in (("class_embedding", class_embedding), ("stem", stem), ("preprocess", preprocess)):
        if part is not None and not isinstance(part, BlockSpec):
            raise SpecError(f"{arg}: expected a block spec, got {part!r}")
    if postprocess is not None and not isinstance(postprocess, BlockSpec):
        raise SpecError(f"postprocess: expected a block spec, got {postprocess!r}")
    b = GraphBuilder(name)
    b.input("x", channels=in_channels, dims=dims)
    cond: list[In] = []
    if time_embedding is not None:
        b.input("t", kind="timestep")
    labels = num_classes is not None or class_embedding is not None
    if labels:
        if time_embedding is None:
            raise SpecError("num_classes: a class embedding is added to the time embedding; give time_embedding")
        b.input("y", kind="timestep" if isinstance(class_embedding, TimestepEmbedding) else "label")
    if context_channels is not None:
        b.input("context", channels=context_channels, kind="context")
    h = "x"
    if preprocess is not None:
        h = b.add("preprocess", preprocess, Role.STEM, 0, [h])
    stem = ConvBlock(convs=1, norm="none", act="none") if stem is None else stem
    h = b.add("conv_in", stem.with_(channels=widths[0]) if _has_field(stem, "channels") else stem, Role.STEM, 0, [h])
    if time_embedding is not None:
        if time_embedding.dim is None:
            time_embedding = time_embedding.with_(dim=widths[0])
        temb = b.add("time_embedding", time_embedding, Role.EMBEDDING, None, ["t"])
        if labels:
            width = b.type_of(temb).channels
            if class_embedding is None:
                class_embedding = ClassEmbedding(num_classes, width)  # type: ignore[arg-type]
            if isinstance(class_embedding, TimestepEmbedding) and class_embedding.dim is None:
                class_embedding = class_embedding.with_(dim=widths[0])
            if _unset(class_embedding, "channels"):
                class_embedding = class_embedding.with_(channels=width)
            b.add("class_embedding", class_embedding, Role.EMBEDDING, None, ["y"])
            temb = b.add("emb", Merge("add"), Role.EMBEDDING, None, [temb, "class_embedding"])
        cond = [In(temb, EdgeKind.COND)]

    def attention_at(level: int) -> BlockSpec | None:
        spec = attention(level) if callable(attention) and not isinstance(attention, BlockSpec) else attention
        if isinstance(spec, Sequence) and not isinstance(spec, str):
            if level >= len(spec):
                raise SpecError(f"attention: {len(spec)} entries given, level {level} needs one")
            spec = spec[level]
        if spec is not None and not isinstance(spec, BlockSpec):
            raise SpecError(f"attention: expected a block spec or None, got {spec!r} for level {level}")
        return spec

    def attend(base: str, src: str, role: Role, level: int, spec: BlockSpec | None) -> str:
        """``{base}_attn`` after ``src`` (given the context if it takes conditioning), then
        ``{base}_xattn`` to the context if there is one and a cross-attention template."""
        h = src
        if spec is not None:
            ins: list[str | In] = [src]
            if context_channels is not None and spec.max_cond > 0:
                ins.append(In("context", EdgeKind.COND))
            h = b.add(f"{base}_attn", spec, role, level, ins)
        if context_channels is not None and cross_attention is not None:
            h = b.add(f"{base}_xattn", cross_attention, role, level, [h, In("context", EdgeKind.COND)])
        return h

    def conditioned(spec: BlockSpec, src: str) -> list[str | In]:
        return [src, *cond] if spec.max_cond > 0 else [src]

    skips: list[list[str]] = [[h]]
    for i in range(depth):
        for j in range(layers_per_block):
            h = b.add(f"enc{i}_{j}", resblock.with_(channels=widths[i]), Role.ENCODER, i, [h, *cond])
            if i in attention_levels:
                h = attend(h, h, Role.ENCODER, i, attention_at(i))
            skips[i].append(h)
        if i < depth - 1:
            down_i = _part(down, i, Down, "down")
            h = b.add(f"down{i + 1}", down_i, Role.DOWN, i + 1, conditioned(down_i, h))
            skips.append([h])
    last = depth - 1
    if mid_layers is None:  # an identity: the decoder's first merge takes it and the skip of the same tensor
        h = b.add("mid", Affine(), Role.BOTTLENECK, last, [h])
    else:
        h = b.add("mid_res0", mid_resblock.with_(channels=widths[-1]), Role.BOTTLENECK, last, [h, *cond])
        for j in range(mid_layers):
            if mid_attention is not False:
                mid_spec = attention_at(last) if mid_attention is True else mid_attention
                h = attend("mid" if j == 0 else f"mid{j}", h, Role.BOTTLENECK, last, mid_spec)
            res = mid_resblock.with_(channels=widths[-1])
            h = b.add(f"mid_res{j + 1}", res, Role.BOTTLENECK, last, [h, *cond])
    for i in reversed(range(depth)):
        for j, skip in enumerate(reversed(skips[i])):
            h = b.add(f"merge{i}_{j}", Merge("concat"), Role.MERGE, i, [h, In(skip, EdgeKind.SKIP)])
            h = b.add(f"dec{i}_{j}", resblock.with_(channels=widths[i]), Role.DECODER, i, [h, *cond])
            if i in decoder_levels:
                h = attend(h, h, Role.DECODER, i, attention_at(i))
        if i > 0:
            up_i = _part(up, i - 1, Up, "up")
            if isinstance(up, str):
                up_i = up_i.with_(factor=_factor(b.type_of(skips[i - 1][-1]), b.type_of(h)))
            h = b.add(f"up{i - 1}", up_i, Role.UP, i - 1, conditioned(up_i, h))
    if head is None:
        r = resblock
        head = Head(kernel=3, norm=r.norm, groups=r.groups, eps=r.eps, act=r.act)
    out = b.add("head", _head(head, out_channels), Role.HEAD, 0, [h])
    if postprocess is not None:
        ins: list[str | In] = [out]
        if postprocess.max_cond > 0:
            if time_embedding is None:
                raise SpecError(f"postprocess: {postprocess.type_name} takes t on a cond edge; give time_embedding")
            ins.append(In("t", EdgeKind.COND))
        out = b.add("postprocess", postprocess, Role.HEAD, 0, ins)
    return b.build(outputs=[out])


def nested_unet(
    in_channels: int,
    out_channels: int,
    widths: Sequence[int] = (32, 64, 128, 256, 512),
    *,
    dims: int = 2,
    block: Part = ConvBlock(),
    down: Part = "maxpool",
    up: Part = "transpose",
    head: BlockSpec | None = None,
    deep_supervision: bool = False,
    name: str = "NestedUNet",
) -> UNetGraph:
    """UNet++ (Zhou et al. 2018): nested, dense skip pathways between encoder and decoder.

    Node ``x{i}_{j}`` (level ``i``, column ``j``) is a block: ``x{i}_0`` is the backbone
    encoder (``down{i}`` pools into it), and for ``j ≥ 1`` it reads ``merge{i}_{j}``, the
    concat of every earlier node of its level ``x{i}_0 … x{i}_{j-1}`` (each a skip edge)
    and ``up{i}_{j}``, the up-sampled ``x{i+1}_{j-1}``.

    Args:
        in_channels, out_channels: input channels and classes.
        widths: channels per level (the paper: 32, 64, 128, 256, 512).
        dims: spatial dimensions.
        block: the block of every node; channels set per level.
        down, up: as in :func:`unet` (``up`` channels default to the level's width).
        head: the output block (default: a 1×1 :class:`~unetgraph.Head`).
        deep_supervision: a head on every top node ``x0_1 … x0_{n-1}`` (outputs ``head1`` …),
            otherwise one ``head`` on ``x0_{n-1}``.
        name: the model name.

    Example:
        >>> import unetgraph as ug
        >>> g = ug.nested_unet(1, 1, widths=(8, 16, 32))
        >>> [e.src for e in g.in_edges("merge0_2")]
        ['x0_0', 'x0_1', 'up0_2']
    """
    _check_common(in_channels, out_channels, widths, dims)
    depth = len(widths)
    b = GraphBuilder(name)
    h = b.input("x", channels=in_channels, dims=dims)
    for i in range(depth):
        if i > 0:
            h = b.add(f"down{i}", _part(down, i - 1, Down, "down"), Role.DOWN, i, [h])
        role = Role.BOTTLENECK if i == depth - 1 else Role.ENCODER
        h = b.add(f"x{i}_0", _block(block, i, widths[i], "block"), role, i, [h])
    for j in range(1, depth):
        for i in range(depth - j):
            up_i = _part(up, i, Up, "up")
            below = f"x{i + 1}_{j - 1}"
            if isinstance(up, str):
                up_i = up_i.with_(factor=_factor(b.type_of(f"x{i}_0"), b.type_of(below)))
            if getattr(up_i, "conv", True) and _unset(up_i, "channels"):
                up_i = up_i.with_(channels=widths[i])
            u = b.add(f"up{i}_{j}", up_i, Role.UP, i, [below])
            skips = [In(f"x{i}_{k}", EdgeKind.SKIP) for k in range(j)]
            m = b.add(f"merge{i}_{j}", Merge("concat"), Role.MERGE, i, [*skips, u])
            b.add(f"x{i}_{j}", _block(block, i, widths[i], "block"), Role.DECODER, i, [m])
    head = _head(head, out_channels)
    if deep_supervision:
        outputs = [b.add(f"head{j}", head, Role.HEAD, 0, [f"x0_{j}"]) for j in range(1, depth)]
    else:
        outputs = [b.add("head", head, Role.HEAD, 0, [f"x0_{depth - 1}"])]
    return b.build(outputs=outputs)


def _check_common(in_channels: int, out_channels: int, widths: Sequence[int], dims: int) -> None:
    _positive("in_channels", in_channels)
    _positive("out_channels", out_channels)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise SpecError(f"widths: expected a non-empty sequence of channel counts, got {widths!r}")
    for i, w in enumerate(widths):
        _positive(f"widths[{i}]", w)
    if dims not in (1, 2, 3):
        raise SpecError(f"dims: expected 1, 2 or 3 spatial dimensions, got {dims!r}")


def _factor(skip: TensorType, below: TensorType) -> int | tuple[int, ...]:
    """The up-sampling factor per axis that takes ``below`` back to the scale of ``skip``."""
    ratios = [s / t for s, t in zip(skip.scale, below.scale)]
    if any(r.denominator != 1 for r in ratios):
        raise SpecError(f"cannot up-sample from scale {below.scale} to {skip.scale} by an integer factor")
    factors = tuple(int(r) for r in ratios)
    return factors[0] if len(set(factors)) == 1 else factors


def _head(head: BlockSpec | None, out_channels: int) -> BlockSpec:
    head = head if head is not None else Head()
    if not isinstance(head, BlockSpec):
        raise SpecError(f"head: expected a block spec such as ug.Head(), got {head!r}")
    return head.with_(channels=out_channels) if _has_field(head, "channels") else head


def _any_crop(merge: Part, depth: int) -> bool:
    return any(getattr(_part(merge, i, Merge, "merge"), "crop", False) for i in range(depth - 1))


def _positive(name: str, value: object, *, zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise SpecError(f"{name}: expected a {'non-negative' if zero else 'positive'} integer, got {value!r}")


def _has_field(spec: BlockSpec, name: str) -> bool:
    return any(f.name == name for f in fields(spec))


def _unset(spec: BlockSpec, name: str) -> bool:
    """Whether ``spec`` has the field ``name`` and leaves it ``None`` (for the builder to fill)."""
    return _has_field(spec, name) and getattr(spec, name) is None


def _part(value: Part, level: int, cls: type[BlockSpec], arg: str) -> BlockSpec:
    """Resolve a part for ``level``: a spec, a mode string, a per-level list, or a function."""
    if callable(value) and not isinstance(value, BlockSpec):
        value = value(level)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if level >= len(value):
            raise SpecError(f"{arg}: {len(value)} entries given, level {level} needs one")
        value = value[level]
    if isinstance(value, str):
        return cls(mode=value)  # type: ignore[call-arg]
    if not isinstance(value, BlockSpec):
        raise SpecError(f"{arg}: expected a block spec or a mode name, got {value!r} for level {level}")
    return value


def _block(value: Part, level: int, width: int, arg: str) -> BlockSpec:
    spec = create_block(value) if isinstance(value, str) else _part(value, level, ConvBlock, arg)
    return spec.with_(channels=width) if _has_field(spec, "channels") else spec
