"""Famous U-Nets as ordinary graphs: each is editable, checkable and lowerable like any other.

Every preset cites its source and the parameter count the tests assert; where the source
states no count, the docstring says so and the tests assert the structure instead.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .blocks import (
    AttentionGate,
    Backbone,
    ConvBlock,
    Down,
    Head,
    Merge,
    ResBlock,
    SelfAttention,
    SqueezeExcitation,
    TimestepEmbedding,
    Up,
)
from .build import diffusion_unet, nested_unet, unet
from .errors import SpecError
from .graph import UNetGraph

__all__ = [
    "classic_unet",
    "ddpm_unet",
    "attention_unet",
    "unet3d",
    "unet_plus_plus",
    "nnunet_plain",
    "residual_unet",
    "smp_unet",
    "smp_state_dict",
]
# smp_keys and smp_tensor are smp_unet's key map, used by smp_state_dict and ug.interop.from_smp / to_smp


def classic_unet(in_channels: int = 1, num_classes: int = 2, *, padded: bool = False) -> UNetGraph:
    """The U-Net of Ronneberger, Fischer & Brox, MICCAI 2015 (arXiv:1505.04597).

    ``padded=False`` is the paper's network (Fig. 1): five levels of 64–1024 channels, two
    valid (unpadded) 3×3 convolutions + ReLU per level, 2×2 max pooling, 2×2 up-convolutions
    that halve the channels, concatenation with the centre-cropped encoder features, and a
    1×1 output convolution: 23 convolutional layers in total. A 572×572 tile gives a
    388×388 map; valid tile sizes are 188 + 16k. With 1 input channel and 2 classes it has
    31,030,658 parameters (the paper states none; this is that architecture's exact count).

    ``padded=True`` is the variant most PyTorch code uses (milesial/Pytorch-UNet's
    ``UNet(n_channels, n_classes, bilinear=False)``): padded convolutions without bias,
    each followed by batch norm, so the output has the input's size; 31,037,698 parameters
    for 3 input channels and 2 classes, equal to that implementation.

    Shape:
        ``(N, in_channels, H, W) → (N, num_classes, H - 184, W - 184)`` (valid), or
        ``(N, num_classes, H, W)`` (padded); see ``valid_sizes()``.
    """
    if padded:
        return unet(in_channels, num_classes, block=ConvBlock(norm="batch"), name="ClassicUNetPadded")
    return unet(
        in_channels,
        num_classes,
        block=ConvBlock(padding="valid", norm="none"),
        merge=Merge("concat", crop=True),
        name="ClassicUNet",
    )


# resolution -> (widths, attention levels, dropout) of the models in Ho et al. 2020, Appendix B
_DDPM = {
    32: ((128, 256, 256, 256), (1,), 0.1),
    256: ((128, 128, 256, 256, 512, 512), (4,), 0.0),
}


def ddpm_unet(
    resolution: int = 32, *, in_channels: int = 3, out_channels: int | None = None, head_dim: int | None = None
) -> UNetGraph:
    """The denoising U-Net of Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models",
    NeurIPS 2020 (arXiv:2006.11239), Appendix B.

    A PixelCNN++-style U-Net of Wide ResNet blocks: two residual blocks per resolution
    (GroupNorm with 32 groups, SiLU, the timestep's sinusoidal embedding added after the
    first convolution), self-attention at the 16×16 resolution, a 3×3 stride-2 convolution
    down and nearest ×2 + 3×3 convolution up, skips from every encoder block.

    - ``resolution=32``: the CIFAR-10 model, widths 128, 256, 256, 256, dropout 0.1. The paper:
      "Our CIFAR10 model has 35.7 million parameters"; exactly 35,746,307, equal to
      diffusers' ``UNet2DModel`` with the ``google/ddpm-cifar10-32`` configuration.
    - ``resolution=256``: the LSUN / CelebA-HQ model, widths 128, 128, 256, 256, 512, 512,
      attention at 16×16. The paper: "our LSUN and CelebA-HQ models have 114 million
      parameters"; exactly 113,673,219, equal to ``UNet2DModel`` with the
      ``google/ddpm-church-256`` configuration.

    Node and layer order follow diffusers (concat order ``[h, skip]``, ``downsample_padding=0``:
    one zero row and column appended before each stride-2 convolution, GroupNorm eps 1e-6),
    so a ``UNet2DModel``'s weights map one to one and give equal outputs (tests/test_presets.py).

    ``head_dim=None`` is the paper's single-head attention. diffusers' ``UNet2DModel`` defaults
    ``attention_head_dim`` to 8 when a configuration omits it, as the ``google/ddpm-*`` ones
    do, so loading those checkpoints there runs 32 heads of width 8 at 256 channels: pass
    ``head_dim=8`` for that behaviour (same parameters, different attention).

    Shape:
        ``x: (N, 3, H, W)``, ``t: (N,)`` → ``(N, 3, H, W)``, ``H, W`` multiples of 8 (32) or 32 (256).
    """
    if resolution not in _DDPM:
        raise SpecError(
            f"ddpm_unet: resolution must be one of {sorted(_DDPM)} (the paper's models), got {resolution!r}"
        )
    widths, attention_levels, dropout = _DDPM[resolution]
    return diffusion_unet(
        in_channels,
        out_channels,
        widths,
        layers_per_block=2,
        attention_levels=attention_levels,
        resblock=ResBlock(groups=32, eps=1e-6, act="silu", dropout=dropout),
        attention=SelfAttention(head_dim=head_dim, groups=32, eps=1e-6),
        time_embedding=TimestepEmbedding(flip_sin_to_cos=False, freq_shift=1),
        down=Down("conv", kernel=3, padding=0, pad_end=1),
        up=Up("nearest"),
        name=f"DDPM{resolution}",
    )


def attention_unet(in_channels: int = 3, num_classes: int = 1) -> UNetGraph:
    """Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the
    Pancreas", MIDL 2018, arXiv:1804.03999) in the 2D layout of its most used PyTorch
    implementation (LeeJunHyun/Image_Segmentation ``AttU_Net``).

    The classic padded U-Net (widths 64–1024, two conv3×3 + batch norm + ReLU per level,
    convolutions with bias, 2×2 max pooling); up-sampling is nearest ×2 → conv3×3 → batch
    norm → ReLU to the level's width; before each merge an additive attention gate
    (``W_g``, ``W_x``: 1×1 conv + batch norm to half the width; ReLU; ``ψ``: 1×1 conv +
    batch norm + sigmoid) scales the skip by coefficients computed from it and the
    up-sampled decoder features. 34,878,573 parameters for 3 input channels and 1 class,
    equal to that implementation. The paper reports counts only for its 3D CT models, whose
    gates take the gating signal from the coarser scale; this preset is the 2D reference.

    Shape:
        ``(N, in_channels, H, W) → (N, num_classes, H, W)``, ``H, W`` multiples of 16.
    """
    return unet(
        in_channels,
        num_classes,
        block=ConvBlock(norm="batch", bias=True),
        up=Up("nearest", kernel=3, norm="batch", act="relu"),
        gate=AttentionGate(norm="batch"),
        name="AttentionUNet",
    )


def unet3d(in_channels: int = 3, num_classes: int = 3) -> UNetGraph:
    """The 3D U-Net of Çiçek et al., "3D U-Net: Learning Dense Volumetric Segmentation from
    Sparse Annotation", MICCAI 2016 (arXiv:1606.06650), Fig. 1.

    Four levels of valid 3×3×3 convolutions, each followed by batch normalisation and ReLU;
    the analysis path doubles the channels in the second convolution of each level (32→64,
    64→128, 128→256, 256→512); 2×2×2 max pooling; 2×2×2 up-convolutions that keep the
    channels (512, 256, 128); concatenation with the centre-cropped analysis features; a
    1×1×1 convolution to 3 labels. A 132×132×116 tile with 3 channels gives a 44×44×28 map.

    The paper: "The architecture has 19069955 parameters in total." That count is reproduced
    to the unit when the batch normalisation holds no learnable scale and shift (statistics
    only, as Caffe's ``BatchNorm`` layer without a ``Scale`` layer) and the up-convolutions
    have no bias, which is what this preset builds (``norm="batch_noaffine"``).

    Shape:
        ``(N, in_channels, D, H, W) → (N, num_classes, D - 88, H - 88, W - 88)``.
    """
    widths = (64, 128, 256, 512)

    def encoder(level: int) -> ConvBlock:
        return ConvBlock(padding="valid", norm="batch_noaffine", bias=True, mid_channels=widths[level] // 2)

    return unet(
        in_channels,
        num_classes,
        widths,
        dims=3,
        encoder_block=encoder,
        bottleneck_block=encoder,
        decoder_block=ConvBlock(padding="valid", norm="batch_noaffine", bias=True),
        up=lambda level: Up("transpose", channels=widths[level + 1], bias=False),
        merge=Merge("concat", crop=True),
        name="UNet3D",
    )


def unet_plus_plus(in_channels: int = 1, num_classes: int = 1, *, deep_supervision: bool = False) -> UNetGraph:
    """UNet++ of Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation", DLMIA 2018 (arXiv:1807.10165), in the layout of the authors' Keras code
    (MrGiovanni/UNetPlusPlus ``Nest_Net``).

    Backbone widths 32, 64, 128, 256, 512; every node is two 3×3 convolutions with bias and
    ReLU, with dropout 0.5; 2×2 max pooling; 2×2 stride-2 transposed convolutions; nested,
    dense skips (node ``x{i}_{j}`` concatenates ``x{i}_0 … x{i}_{j-1}`` and the up-sampled
    ``x{i+1}_{j-1}``); 1×1 output convolutions. ``deep_supervision=True`` puts a head on each
    of ``x0_1 … x0_4`` (outputs ``head1`` … ``head4``).

    The paper's Table 2 lists 9.04M parameters for UNet++ with and without deep supervision
    (7.76M for its U-Net); this preset has 9,041,601 without and 9,041,700 with (1 input
    channel, 1 class). The reference applies dropout after each of the two convolutions; here
    it follows the second only (identical in evaluation mode).

    Shape:
        ``(N, in_channels, H, W) → (N, num_classes, H, W)``, ``H, W`` multiples of 16.
    """
    return nested_unet(
        in_channels,
        num_classes,
        (32, 64, 128, 256, 512),
        block=ConvBlock(norm="none", act="relu", dropout=0.5),
        deep_supervision=deep_supervision,
        name="UNetPlusPlus",
    )


def nnunet_plain(
    in_channels: int,
    num_classes: int,
    features: Sequence[int] = (32, 64, 128, 256, 320, 320),
    kernels: Sequence[int | Sequence[int]] = (3, 3, 3, 3, 3, 3),
    strides: Sequence[int | Sequence[int]] = (1, 2, 2, 2, 2, 2),
    *,
    dims: int | None = None,
    n_conv: int = 2,
    n_conv_decoder: int = 2,
    conv_bias: bool = True,
    deep_supervision: bool = False,
) -> UNetGraph:
    """nnU-Net v2's ``PlainConvUNet`` (Isensee et al., Nature Methods 2021;
    dynamic_network_architectures) for a plan of features, kernels and strides per stage.

    Stage ``s`` is ``n_conv`` × (conv → instance norm (affine, eps 1e-5) → leaky ReLU 0.01),
    its first convolution strided by ``strides[s]`` (no pooling); the decoder up-samples with
    a transposed convolution (kernel = stride), concatenates ``[up, skip]`` and runs
    ``n_conv_decoder`` convolutions of the skip's kernel; 1×1 segmentation heads with bias.
    Kernels and strides may be anisotropic (``(1, 3, 3)``, ``(1, 2, 2)``). ``conv_bias``
    follows the plans (``True`` in nnU-Net v2's default plans; ``False`` is the class default).

    nnU-Net publishes no fixed count: it depends on the plan. The reference builds a
    segmentation layer for every decoder stage even without deep supervision (to load
    checkpoints either way); a graph has no unused nodes, so ``deep_supervision=False`` has
    the reference's count minus the unused heads, and ``deep_supervision=True`` (outputs
    ``head``, ``head1`` … highest resolution first) has exactly the reference's count. The
    tests check it against MONAI's ``DynUNet``, an independent implementation of the same
    network.

    Args:
        dims: spatial dimensions; ``None`` takes them from tuple kernels/strides, else 3.

    Shape:
        ``(N, in_channels, *S) → (N, num_classes, *S)``, ``S`` divisible by the product of strides.
    """
    stages = len(features)
    if not (len(kernels) == len(strides) == stages):
        raise SpecError(
            f"nnunet_plain: features, kernels and strides need one entry per stage, got "
            f"{len(features)}, {len(kernels)}, {len(strides)}"
        )
    if dims is None:
        dims = next((len(v) for v in (*kernels, *strides) if isinstance(v, (tuple, list))), 3)
    block = ConvBlock(convs=n_conv, norm="instance", act="leaky_relu", bias=conv_bias)

    def encoder(level: int) -> ConvBlock:
        return block.with_(kernel=kernels[level], stride=strides[level])

    return unet(
        in_channels,
        num_classes,
        tuple(features),
        dims=dims,
        encoder_block=encoder,
        bottleneck_block=encoder,
        decoder_block=lambda level: block.with_(kernel=kernels[level], convs=n_conv_decoder),
        down=None,
        up=lambda level: Up("transpose", factor=_int_or_tuple(strides[level + 1]), bias=conv_bias),
        skip_first=False,
        deep_supervision=stages - 2 if deep_supervision else 0,
        name="PlainConvUNet",
    )


def _int_or_tuple(value: int | Sequence[int]) -> int | tuple[int, ...]:
    """A per-axis value as a spec field holds it (a sequence becomes a tuple)."""
    return value if isinstance(value, int) else tuple(value)


def residual_unet(in_channels: int = 3, num_classes: int = 1) -> UNetGraph:
    """ResUNet of Zhang, Liu & Wang, "Road Extraction by Deep Residual U-Net", IEEE GRSL 2018
    (arXiv:1711.10684), Table 1.

    Pre-activation residual units (batch norm → ReLU → conv3×3, twice, plus a shortcut) at
    widths 64, 128, 256 and a 512 bridge; the first unit of each deeper level has stride 2
    instead of pooling; the first unit of all starts with its convolution (its input is the
    image). The decoder up-samples (nearest, no parameters), concatenates the skip and runs
    one residual unit; a 1×1 convolution gives the output.

    The paper reports 7.8M parameters. Where channels or the stride change, a shortcut needs
    a projection; the paper does not describe it, and this preset uses a 1×1 convolution
    (with the unit's stride), giving 8,220,993 parameters for 3 input channels and 1 class;
    without the projections the count is 7,789,313 ≈ 7.8M, the paper's figure, so the
    paper's count evidently leaves them out (asserted in the tests).

    Shape:
        ``(N, in_channels, H, W) → (N, num_classes, H, W)``, ``H, W`` multiples of 8.
    """
    unit = ResBlock(norm="batch", act="relu")

    def encoder(level: int) -> ResBlock:
        return unit.with_(stride=1 if level == 0 else 2, pre_norm=level > 0)

    return unet(
        in_channels,
        num_classes,
        (64, 128, 256, 512),
        encoder_block=encoder,
        bottleneck_block=encoder,
        decoder_block=unit,
        down=None,
        up=Up("nearest", conv=False),
        head=Head(),
        name="ResUNet",
    )


# smp's own ResNet encoders that are torchvision's models of the same name (smp builds them from
# torchvision's ResNet class and keeps its keys: conv1, bn1, layer1 … layer4)
_SMP_TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d")
# smp's deprecated "timm-" names it turns into "tu-" ones (segmentation_models_pytorch.encoders.get_encoder)
_SMP_TIMM_ALIASES = ("timm-regnet", "timm-res2", "timm-resnest", "timm-mobilenetv3", "timm-gernet")
_SMP_NORMS = {"batchnorm": "batch", True: "batch", "identity": "none", False: "none"}
_SMP_UPS = {"nearest": "nearest", "bilinear": "linear"}
_SMP_ATTENTION: dict[Any, SqueezeExcitation | None] = {None: None, "scse": SqueezeExcitation("scse", reduction=16)}


def smp_unet(
    encoder_name: str = "resnet34",
    encoder_depth: int = 5,
    encoder_weights: str | bool | None = "imagenet",
    decoder_use_norm: bool | str = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
    in_channels: int = 3,
    classes: int = 1,
    activation: str | None = None,
    aux_params: Mapping[str, Any] | None = None,
) -> UNetGraph:
    """segmentation_models_pytorch's ``Unet`` (smp 0.5–0.6), with smp's argument names and defaults.

    The encoder is one :class:`~unetgraph.Backbone` node ``encoder`` whose features at 1/2 …
    1/2**depth feed the decoder as skips; smp's first "feature", the input itself, is not used by
    its decoder and is not one here. Per decoder level, deep to shallow: ``up{i}`` (nearest ×2,
    no weights), ``merge{i}`` (concat of the upsampled path, then the skip; levels without a
    feature, such as 1/2 below ConvNeXt's stride-4 stem, have none), ``dec{i}`` (two conv3×3 →
    batch norm → ReLU, smp's ``DecoderBlock``); then ``head`` (conv3×3 with bias, smp's
    ``SegmentationHead``). With ``decoder_attention_type="scse"`` a
    :class:`~unetgraph.SqueezeExcitation` node precedes each decoder block but level 0's
    (``dec{i}_att1``, smp's ``attention1``) and follows each (``dec{i}_att2``, ``attention2``). Equal to
    smp's ``Unet`` for the same encoder: the same parameter count, and equal outputs given the
    same weights (:func:`smp_state_dict` maps smp's keys), tested for ``"resnet18"``,
    ``"resnet34"`` and ``"tu-"`` encoders of the ResNet, MobileNetV3, RegNet, ConvNeXt, GhostNet
    and EfficientViT families (``tests/test_backbone.py``, ``tests/test_interop_smp.py``).

    Args:
        encoder_name: smp's own ``"resnet18"`` … ``"resnet152"``, ``"resnext50_32x4d"``,
            ``"resnext101_32x8d"`` (torchvision's models, as smp builds them), any
            ``"tu-<timm name>"`` whose features sit at 1/2, 1/4, … or 1/4, 1/8, … (ConvNeXt-like),
            or smp's ``"timm-regnet…"``-style aliases of those.
        encoder_depth: decoder levels (3–5 in smp), features down to ``1/2**depth``.
        encoder_weights: ``"imagenet"`` (smp's default; loaded when the graph is lowered, with
            timm's or torchvision's own loading) or ``None`` for random weights; ``True`` for ``"tu-"``.
        decoder_use_norm: ``"batchnorm"``/``True`` or ``"identity"``/``False``.
        decoder_channels: one per level, deep to shallow.
        decoder_attention_type: ``None`` or ``"scse"`` (every attention on at least 16 channels:
            smp's channel squeeze has ``channels // 16`` of them, and its model fails with none).
        decoder_interpolation: ``"nearest"`` or ``"bilinear"``.
        in_channels, classes: input channels and output channels.
        activation: ``None`` only (apply it to the output).
        aux_params: ``None`` only.

    Raises:
        SpecError: an option or encoder this preset cannot match, naming the argument, its value and why.

    smp keeps some weights it never uses, which have no node here: with smp's own ResNets at
    ``encoder_depth < 5`` the deeper stages, and with ``"scse"`` the ``attention1`` of the last
    decoder block (level 0, which has no skip). The parameter counts then differ by those; the outputs do not.

    Shape:
        ``(N, in_channels, H, W) → (N, classes, H, W)``, ``H`` and ``W`` multiples of ``2**depth``
        (smp interpolates other sizes; lower with ``pad="auto"`` to pad them).
    """
    if encoder_depth not in (1, 2, 3, 4, 5):
        raise SpecError(f"smp_unet encoder_depth={encoder_depth!r}: smp's Unet takes 1 … 5")
    if activation not in (None, "identity"):
        raise SpecError(f"smp_unet activation={activation!r}: only None is matched; apply the activation to the output")
    if aux_params is not None:
        raise SpecError(
            f"smp_unet aux_params={aux_params!r}: the auxiliary classification head is not matched; only None"
        )
    norm = _smp_choice("decoder_use_norm", decoder_use_norm, _SMP_NORMS)
    mode = _smp_choice("decoder_interpolation", decoder_interpolation, _SMP_UPS)
    attention = _smp_choice("decoder_attention_type", decoder_attention_type, _SMP_ATTENTION)
    encoder = _smp_encoder(encoder_name, encoder_depth, encoder_weights)
    name = re.sub(r"\W", "_", f"Unet_{encoder_name}")
    g = unet(
        in_channels,
        classes,
        encoder=encoder,
        decoder_channels=tuple(decoder_channels),
        block=ConvBlock(norm=norm, act="relu"),
        up=Up(mode, conv=False),
        merge="concat",
        skip_first=False,
        head=Head(kernel=3),
        name=name,
    )
    if attention is not None:
        g = _smp_attention(g, attention)
    return g


def _smp_attention(g: UNetGraph, attention: SqueezeExcitation) -> UNetGraph:
    """``g`` with smp's decoder attention: ``dec{i}_att1`` on each decoder block's input (smp's
    ``attention1``, on the merged features; on the upsampled ones where the skip has no channels,
    below a stride-4 stem), ``dec{i}_att2`` on its output (``attention2``). Level 0 has no skip and
    smp never calls its ``attention1``: it has no node."""
    decoders = [m for n in g.nodes(role="decoder") if (m := re.fullmatch(r"dec(\d+)", n.name))]
    for level in sorted((int(m.group(1)) for m in decoders), reverse=True):
        anchors = [(f"dec{level}", f"dec{level}_att2")]
        if level > 0:
            anchors.insert(0, (f"merge{level}" if f"merge{level}" in g else f"up{level}", f"dec{level}_att1"))
        for anchor, name in anchors:
            channels = g[anchor].type.channels
            if channels < attention.reduction:
                raise SpecError(
                    f"smp_unet decoder_attention_type='scse': {name} would take {channels} channels; smp's channel "
                    f"squeeze keeps channels // {attention.reduction} = 0 of them and its model cannot run"
                )
            g = g.insert_after(anchor, attention, name=name)
    return g


_K = TypeVar("_K")


def _smp_choice(arg: str, value: object, table: Mapping[Any, _K]) -> _K:
    if isinstance(value, str):
        value = value.lower()
    hashable = value is None or isinstance(value, (str, bool))  # smp also takes dicts: none is matched
    if not hashable or value not in table:
        known = ", ".join(repr(k) for k in table)
        raise SpecError(f"smp_unet {arg}={value!r}: not matched; choose from {known}")
    return table[value]


def _smp_encoder(encoder_name: str, depth: int, weights: str | bool | None) -> Backbone:
    name = encoder_name
    if any(name.startswith(p) for p in _SMP_TIMM_ALIASES):
        name = name.replace("timm-", "tu-tf_" if "mobilenetv3" in name else "tu-", 1)
    if name.startswith("tu-"):
        timm_name = name[3:]
        if "tresnet" in timm_name or timm_name.startswith("dla"):
            raise SpecError(
                f"smp_unet encoder_name: {encoder_name!r}: smp picks special stages for TResNet and DLA; not matched"
            )
        if weights not in (None, True, False, "imagenet"):
            raise SpecError(f"smp_unet encoder_weights: 'tu-' encoders take True or None, got {weights!r}")
        spec = Backbone(timm_name, source="timm", depth=depth, pretrained=weights not in (None, False))
        reductions = spec.with_(depth=None).found(3).reductions
        first = reductions[0] if reductions else None
        if first not in (2, 4) or list(reductions) != [first * 2**i for i in range(len(reductions))]:
            raise SpecError(
                f"smp_unet encoder_name: {encoder_name!r} has features at 1/{', 1/'.join(map(str, reductions))}; "
                "smp's Unet takes timm encoders whose features start at 1/2 or 1/4 and halve each stage"
            )
        return spec
    if name in _SMP_TORCHVISION:
        if weights not in (None, "imagenet"):
            raise SpecError(
                f"smp_unet encoder_weights: {weights!r} for {encoder_name!r}: only 'imagenet' (torchvision's "
                "IMAGENET1K_V1) or None are matched"
            )
        stages = ("relu", "layer1", "layer2", "layer3", "layer4")[:depth]
        pretrained: bool | str = "IMAGENET1K_V1" if weights == "imagenet" else False
        return Backbone(name, source="torchvision", stages=stages, pretrained=pretrained)
    raise SpecError(
        f"smp_unet encoder_name: {encoder_name!r} is one of smp's own encoder implementations, which this preset "
        f"does not rebuild; use its timm counterpart as 'tu-<timm name>', or one of {', '.join(_SMP_TORCHVISION)}"
    )


def smp_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An smp ``Unet``'s ``state_dict`` with the keys of :func:`smp_unet`'s lowered module (:func:`smp_keys`).

    Tensors are not copied; the 1×1 convolutions of smp's channel squeeze (``cSE``) become the
    matrices of the :class:`~unetgraph.SqueezeExcitation` block's linear layers (a view).

    Raises:
        SpecError: a key this mapping does not know (an smp option :func:`smp_unet` does not match).
    """
    return {ours: smp_tensor(ours, state_dict[key]) for key, ours in smp_keys(state_dict).items()}


def smp_keys(keys: Iterable[str]) -> dict[str, str]:
    """Each key of an smp ``Unet``'s ``state_dict`` → its key in :func:`smp_unet`'s lowered module.

    ``encoder.model.*`` (smp's timm wrapper) → ``encoder.*``; ``decoder.blocks.{i}.conv{1,2}.{0,1}``
    → ``dec{level}.conv{0,1}`` / ``norm{0,1}`` (block ``i`` is level ``depth - 1 - i``);
    ``decoder.blocks.{i}.attention{1,2}.attention.{cSE.1, cSE.3, sSE.0}`` →
    ``dec{level}_att{1,2}.{channel.fc1, channel.fc2, spatial.conv}``;
    ``segmentation_head.0`` → ``head``. Keys of weights smp keeps but never uses (see
    :func:`smp_unet`) map to names the graph's module does not have.

    Raises:
        SpecError: a key this mapping does not know (an smp option :func:`smp_unet` does not match).
    """
    keys = list(keys)
    depth = len({int(m.group(1)) for k in keys if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))})
    return {key: _smp_key(key, depth) for key in keys}


def smp_tensor(ours: str, value: Any) -> Any:
    """smp's tensor for our key ``ours`` in our shape: the channel squeeze's 1×1 convolution weights,
    ``(out, in, 1, 1)``, are our linear layers' ``(out, in)``; every other tensor is the same."""
    return value.flatten(1) if _SMP_FLATTENED.fullmatch(ours) else value


_SMP_SQUEEZE = {"cSE.1": "channel.fc1", "cSE.3": "channel.fc2", "sSE.0": "spatial.conv"}
_SMP_FLATTENED = re.compile(r"dec\d+_att[12]\.channel\.fc[12]\.weight")
_SMP_RULES: tuple[tuple[str, Callable[[re.Match[str], int], str]], ...] = (
    (r"encoder\.model\.(.+)", lambda m, d: f"encoder.{m.group(1)}"),
    (r"encoder\.(.+)", lambda m, d: f"encoder.{m.group(1)}"),
    (
        r"decoder\.blocks\.(\d+)\.conv([12])\.([01])\.(.+)",
        lambda m, d: (
            f"dec{d - 1 - int(m.group(1))}.{'conv' if m.group(3) == '0' else 'norm'}{int(m.group(2)) - 1}.{m.group(4)}"
        ),
    ),
    (
        r"decoder\.blocks\.(\d+)\.attention([12])\.attention\.(cSE\.1|cSE\.3|sSE\.0)\.(.+)",
        lambda m, d: f"dec{d - 1 - int(m.group(1))}_att{m.group(2)}.{_SMP_SQUEEZE[m.group(3)]}.{m.group(4)}",
    ),
    (r"segmentation_head\.0\.(.+)", lambda m, d: f"head.{m.group(1)}"),
)


def _smp_key(key: str, depth: int) -> str:
    for pattern, rewrite in _SMP_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return rewrite(m, depth)
    raise SpecError(f"smp_state_dict: no counterpart for smp's key {key!r} (an option smp_unet does not match)")
