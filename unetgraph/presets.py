"""Famous U-Nets as ordinary graphs: each is editable, checkable and lowerable like any other.

Every preset cites its source and the parameter count the tests assert; where the source
states no count, the docstring says so and the tests assert the structure instead.
"""

from __future__ import annotations

from typing import Sequence

from .blocks import AttentionGate, ConvBlock, Down, Head, Merge, ResBlock, SelfAttention, TimestepEmbedding, Up
from .build import diffusion_unet, nested_unet, unet
from .errors import SpecError
from .graph import UNetGraph

__all__ = ["classic_unet", "ddpm_unet", "attention_unet", "unet3d", "unet_plus_plus", "nnunet_plain", "residual_unet"]


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
        up=lambda level: Up("transpose", factor=strides[level + 1], bias=conv_bias),
        skip_first=False,
        deep_supervision=stages - 2 if deep_supervision else 0,
        name="PlainConvUNet",
    )


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
