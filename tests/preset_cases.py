"""One or more small, valid cases per preset: shared by the preset, cost and pass tests.

Every function in ``ug.presets.__all__`` must have a case (tests/test_presets.py checks).
"""

from functools import partial

import torch

import unetgraph as ug

P = ug.presets

# name -> (preset function, its arguments, input shapes)
_CASES = {
    "classic": (P.classic_unet, dict(in_channels=1, num_classes=2), {"x": (1, 1, 188, 188)}),
    "classic_padded": (P.classic_unet, dict(in_channels=3, num_classes=2, padded=True), {"x": (2, 3, 16, 16)}),
    "ddpm32": (P.ddpm_unet, dict(resolution=32), {"x": (1, 3, 8, 8), "t": (1,)}),
    "ddpm256": (P.ddpm_unet, dict(resolution=256), {"x": (1, 3, 32, 32), "t": (1,)}),
    "attention": (P.attention_unet, {}, {"x": (2, 3, 16, 16)}),
    "unet3d": (P.unet3d, dict(in_channels=1, num_classes=3), {"x": (1, 1, 92, 92, 92)}),
    "unet_pp_ds": (P.unet_plus_plus, dict(deep_supervision=True), {"x": (1, 1, 16, 16)}),
    "nnunet_3d_aniso": (
        P.nnunet_plain,
        dict(
            in_channels=1,
            num_classes=2,
            features=(8, 16, 32),
            kernels=[(1, 3, 3), 3, 3],
            strides=[1, (1, 2, 2), 2],
            deep_supervision=True,
        ),
        {"x": (1, 1, 4, 8, 8)},
    ),
    "residual": (P.residual_unet, {}, {"x": (2, 3, 8, 8)}),
    "smp_resnet18": (
        P.smp_unet,
        dict(encoder_name="resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8), classes=2),
        {"x": (2, 3, 32, 32)},
    ),
}

PRESET_CASES = {key: (partial(fn, **kwargs), shapes) for key, (fn, kwargs, shapes) in _CASES.items()}
# smp_state_dict is smp_unet's key map, not a preset of its own
COVERED = {fn.__name__ for fn, _, _ in _CASES.values()} | {"smp_state_dict"}


def inputs_for(g: ug.UNetGraph, shapes: dict[str, tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    """Random tensors for a case's input shapes, in the order ``forward`` takes them."""
    image = next((shapes[n] for n in g.inputs if g[n].type.dims), None)
    batch = next(iter(shapes.values()))[0]
    return tuple(ug.example_inputs(g, batch=batch, size=image[2:] if image else None).values())
