"""``Backbone``: a pretrained feature extractor (timm, torchvision, your own module) as one node.

A backbone node has one output per feature map, shallow to deep: ``encoder`` with outputs at
1/2, 1/4, … 1/32 of the input. Skips name the output they take (``Edge.out``), so they stay
named, typed edges like every other skip, while the backbone's layers stay under one node:
the lowered module's ``state_dict`` keys are the extractor's own under the node's name
(``encoder.layer1.0.conv1.weight``), and pretrained weights load with ``strict=True``.

The spec is plain data (source, name, keyword arguments, which features): a document stores
it and loading it never imports code of its own; a user's class is found in the registry of
:func:`~unetgraph.blocks.backbone_sources.register_backbone`. A spec made from a module
instance (:meth:`Backbone.from_module`) holds that module and cannot be saved.

>>> import unetgraph as ug
>>> g = ug.unet(3, 2, encoder=ug.Backbone("resnet18", source="torchvision", depth=4), decoder_channels=(64, 32, 16, 8))
>>> [str(t) for t in g["encoder"].outputs]
['64ch@1/2 (2D)', '64ch@1/4 (2D)', '128ch@1/8 (2D)', '256ch@1/16 (2D)']
>>> str(g.valid_sizes())
'H and W must be multiples of 16, at least 16'
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

from torch import nn

from ..errors import ShapeError, SpecError
from ..sizes import Scale, SizeOp
from ..types import TensorType
from .backbone_sources import (
    RESERVED_KWARGS,
    SOURCES,
    Features,
    create,
    find_features,
    import_path,
    inline_graph,
    probe,
)
from .base import BlockSpec, register_block

__all__ = ["Backbone"]

_PLAIN = (type(None), bool, int, float, str)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple) and all(_plain(v) for v in value)


@register_block
@dataclass(frozen=True)
class Backbone(BlockSpec):
    """A feature extractor whose feature maps are this node's outputs, shallow to deep.

    Args:
        name: the model: a timm name (``"resnet34"``, ``"convnext_atto"``, ``"resnet34.a1_in1k"``),
            a torchvision classification model (``"resnet34"``), or, for ``source="module"``, the
            registered name of your class (its import path ``"package.module:Class"``).
        source: ``"timm"`` (``timm.create_model(name, features_only=True)``), ``"torchvision"``
            (``create_feature_extractor`` on the classifier's stages) or ``"module"``.
        depth: keep the features down to ``1/2**depth`` (smp's ``encoder_depth``); ``None``: all.
        stages: which features, before ``depth``: timm ``out_indices`` or module names, torchvision
            node names (default: the last output at each scale), a module's list positions or dict keys.
        pretrained: load pretrained weights with the source's own code: timm ``pretrained=True``;
            torchvision ``True`` (its default weights) or a weights name (``"IMAGENET1K_V1"``).
            Weights are loaded when the graph is lowered, never when it is built or loaded.
        weights: a local weights file (a state dict, ``.pth``/``.pt`` read with ``weights_only=True``,
            or ``.safetensors``): timm loads it itself (``pretrained_cfg_overlay=dict(file=...)``).
        kwargs: keyword arguments of the model as plain data (numbers, strings, booleans, tuples):
            ``{"drop_path_rate": 0.1}``; stored sorted as ``(key, value)`` pairs.
        features: ``((channels, reduction), ...)`` per feature, declared instead of probed
            (``source="module"``); the spec's own probe fills it for a module instance.
        inline: lower the extractor's layers as fx nodes of the graph (passes such as batch-norm
            folding then reach them) when it traces the same in training and evaluation mode;
            ``False`` keeps it one call.
        module: a module instance (see :meth:`from_module`); not data, so a graph holding one
            cannot be saved.

    Shape:
        ``(N, C, H, W) → ((N, C_1, H/r_1, W/r_1), …)``; ``H`` and ``W`` must be multiples of
        every reduction ``r_k`` (of 32 for the usual five features).
    """

    name: str
    source: str = "timm"
    depth: int | None = None
    stages: tuple[int | str, ...] | None = None
    pretrained: bool | str = False
    weights: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()
    features: tuple[tuple[int, int], ...] | None = None
    inline: bool = True
    module: nn.Module | None = None

    def validate(self) -> None:
        self._require(isinstance(self.name, str) and bool(self.name), "name", "a model name")
        self._choice("source", list(SOURCES))
        self._positive_int("depth", optional=True)
        if self.stages is not None:
            stages = tuple(self.stages) if isinstance(self.stages, (list, tuple)) else self.stages
            self._set("stages", stages)
            self._require(
                isinstance(stages, tuple) and len(stages) > 0 and all(_stage(s) for s in stages),
                "stages",
                "a non-empty tuple of feature indices or names",
            )
        self._require(
            isinstance(self.pretrained, bool) or (isinstance(self.pretrained, str) and self.source == "torchvision"),
            "pretrained",
            "True or False (a weights name such as 'IMAGENET1K_V1' with source='torchvision')",
        )
        self._require(
            self.weights is None or (isinstance(self.weights, str) and bool(self.weights)), "weights", "a path or None"
        )
        self._set("kwargs", self._normal_kwargs())
        if self.features is not None:
            feats = tuple(tuple(f) if isinstance(f, (list, tuple)) else f for f in self.features)
            self._set("features", feats)
            ok = len(feats) > 0 and all(
                isinstance(f, tuple)
                and len(f) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in f)
                for f in feats
            )
            self._require(ok, "features", "((channels, reduction), ...) with positive integers")
        self._require(isinstance(self.inline, bool), "inline", "True or False")
        if self.module is not None:
            self._require(isinstance(self.module, nn.Module), "module", "an nn.Module or None")
            self._require(self.source == "module", "source", "'module' for a module instance")
        if self.source == "module" and self.module is None and ":" not in self.name:
            raise SpecError(
                f"Backbone.name: a module backbone is named by its registered import path 'package.module:Class', "
                f"got {self.name!r}"
            )

    def _normal_kwargs(self) -> tuple[tuple[str, Any], ...]:
        raw = self.kwargs
        if isinstance(raw, Mapping):
            items = list(raw.items())
        elif isinstance(raw, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
            items = [tuple(p) for p in raw]
        else:
            raise SpecError(f"Backbone.kwargs: expected a mapping of keyword arguments, got {raw!r}")
        out = []
        for key, value in items:
            if not isinstance(key, str) or not key.isidentifier():
                raise SpecError(f"Backbone.kwargs: keys are argument names, got {key!r}")
            value = _tuples(value)
            if not _plain(value):
                raise SpecError(
                    f"Backbone.kwargs.{key}: a {type(value).__name__} is not plain data "
                    "(numbers, strings, booleans, None and tuples of them)"
                )
            if key in RESERVED_KWARGS[self.source]:
                raise SpecError(
                    f"Backbone.kwargs.{key}: set by the Backbone itself (fields name, depth, stages, pretrained, "
                    "weights; input channels come from the graph)"
                )
            out.append((key, value))
        return tuple(sorted(out))

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        in_channels: int = 3,
        stages: Sequence[int | str] | None = None,
        depth: int | None = None,
        features: Sequence[tuple[int, int]] | None = None,
        inline: bool = True,
    ) -> Backbone:
        """A backbone from a module instance that returns a list, tuple or dict of feature maps.

        Its features are found once, here, by running it on meta tensors (nothing computed, the
        module's weights and mode untouched); a module that cannot run there (it reads a tensor's
        value) declares them: ``features=((channels, reduction), ...)`` for the outputs ``stages``
        names (its dict keys or list positions). Each lowering starts from a copy of the module,
        with its current weights. Such a spec cannot be saved in a document: register the class
        (``@ug.register_backbone``) and use ``Backbone("pkg.mod:Class", source="module", kwargs=...)``.
        """
        if not isinstance(module, nn.Module):
            raise SpecError(f"Backbone.from_module: expected an nn.Module, got {module!r}")
        draft = cls(
            import_path(type(module)),
            source="module",
            stages=None if stages is None else tuple(stages),
            depth=depth,
            features=None if features is None else tuple(features),
            inline=inline,
        )
        if features is not None:
            return draft.with_(module=module)
        found = find_features(module, in_channels, draft)
        return cls(
            import_path(type(module)),
            source="module",
            stages=found.keys,
            features=tuple(zip(found.channels, found.reductions)),
            inline=inline,
            module=module,
        )

    # -- the features -------------------------------------------------------------------------
    def found(self, in_channels: int) -> Features:
        """The features this backbone returns for ``in_channels`` input channels."""
        return probe(self, in_channels)

    def _input(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        if x.dims != 2 or x.form != "dense":
            raise ShapeError(f"Backbone {self.name!r} takes a 2D image (N, C, H, W), got {x}")
        return x

    def infer_outputs(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> tuple[TensorType, ...]:
        x = self._input(inputs)
        feats = self.found(x.channels)
        pairs = zip(feats.channels, feats.reductions)
        return tuple(TensorType(c, x.scale).rescaled((Fraction(1, r),) * x.dims) for c, r in pairs)

    def infer(self, inputs: Sequence[TensorType], sources: Sequence[str] = ()) -> TensorType:
        return self.infer_outputs(inputs, sources)[-1]

    def output_size_ops(self, inputs: Sequence[TensorType], dims: int, axis: int) -> tuple[tuple[SizeOp, ...], ...]:
        """Each feature is exactly ``1/r`` of the input: a size that ``r`` does not divide is refused
        (the decoder's ×2 upsamplings could not meet the skips)."""
        feats = self.found(self._input(inputs).channels)
        return tuple((Scale(Fraction(1, r), exact=True),) for r in feats.reductions)

    def output_names(self, inputs: Sequence[TensorType]) -> tuple[str, ...]:
        return self.found(self._input(inputs).channels).names

    def output_keys(self, inputs: Sequence[TensorType]) -> tuple[int | str, ...]:
        return self.found(self._input(inputs).channels).keys

    # -- building ---------------------------------------------------------------------------
    def build(self, inputs: Sequence[TensorType], output: TensorType) -> nn.Module:
        """The extractor with its weights; for ``inline=True`` a GraphModule returning a tuple
        (its layers become fx nodes of the lowered graph) when it traces the same in both modes."""
        x = self._input(inputs)
        model, feats = create(self, x.channels)
        if self.inline:
            traced = inline_graph(model, feats.keys)
            if traced is not None:
                return traced
        return model

    def params(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return self.found(self._input(inputs).channels).params

    def flops(self, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        """The extractor run on meta tensors under ``FlopCounterMode`` (no weights, nothing computed)."""
        return _flops(self, tuple(inputs[0]))

    def label(self) -> str:
        return f"{self.name} ({self.source})" if self.source != "module" else self.name.rsplit(":", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        if self.module is not None:
            raise SpecError(
                f"Backbone: a backbone made from a module instance ({type(self.module).__qualname__}) is not data "
                "and cannot be saved; register the class (@ug.register_backbone) and use "
                f"Backbone({import_path(type(self.module))!r}, source='module', kwargs=...) instead"
            )
        return super().to_dict()


@functools.lru_cache(maxsize=256)
def _flops(spec: Backbone, shape: tuple[int, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, _ = create(spec, shape[1], load=False)
        x = torch.empty(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _stage(s: object) -> bool:
    """A feature index (``int ≥ 0``) or name."""
    return isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool) and s >= 0)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
