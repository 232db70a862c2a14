"""segmentation_models_pytorch's ``Unet`` as a graph with its weights (:func:`from_smp`), and the
graph back as an smp ``Unet`` (:func:`to_smp`).

Import reads the configuration smp records on the model (its constructor's arguments), checks
that the model still has the layers that configuration builds (an smp ``Unet`` of the same
configuration on the meta device, compared layer by layer), builds the graph with
:func:`~unetgraph.presets.smp_unet`, lowers it and loads the model's tensors through the
preset's key map (:func:`~unetgraph.presets.smp_keys`). The model is never traced. An option
the preset does not match is a :class:`~unetgraph.SpecError` naming the field and its value.

The way back reads the configuration off the graph (the encoder node's backbone, the decoder's
widths, norm, upsampling and attention, the input and head channels), rebuilds the graph that
configuration gives and requires it to equal the given graph, so an edit that leaves smp's layout
is a :class:`~unetgraph.GraphError` naming the node; then it builds the smp model and copies the
tensors back along the same key map.

smp keeps weights it never uses (the deeper stages of its own ResNets at ``encoder_depth < 5``,
``attention1`` of the last decoder block, which has no skip): they have no node, are not imported, and a
model made by :func:`to_smp` has smp's fresh initialisation there.

``segmentation_models_pytorch`` is imported when these functions run, never at ``import unetgraph``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Mapping

import torch
from torch import fx, nn

from ..blocks import Backbone
from ..diff import diff
from ..errors import GraphError, LoweringError, SpecError, UNetGraphError
from ..graph import UNetGraph
from ..presets import smp_keys, smp_tensor, smp_unet
from ..record import find_record

__all__ = ["from_smp", "to_smp"]

# smp.Unet's norms and upsampling modes as the graph has them -> the name to_smp writes
_NORM_BACK = {"batch": "batchnorm", "none": "identity"}
_UP_BACK = {"nearest": "nearest", "linear": "bilinear"}


def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:  # pragma: no cover - smp is installed wherever the tests run
        raise SpecError("unetgraph.interop needs segmentation_models_pytorch: pip install 'unetgraph[smp]'") from e
    return smp


# -- model -> configuration -> graph ---------------------------------------------------------------


def _fields() -> dict[str, Any]:
    """smp ``Unet``'s named constructor arguments and their defaults."""
    params = inspect.signature(_smp().Unet.__init__).parameters
    return {n: p.default for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"}


def _config(model: nn.Module) -> dict[str, Any]:
    """The arguments ``model`` was built with, complete, with smp's deprecated spelling resolved."""
    smp = _smp()
    kind = type(model)
    if kind is not smp.Unet:
        raise SpecError(
            f"from_smp: {kind.__module__}.{kind.__qualname__} is not supported; it imports "
            "segmentation_models_pytorch.Unet (that class exactly: not Unet++, FPN, other architectures or subclasses)"
        )
    recorded = getattr(model, "_hub_mixin_config", None)
    if not isinstance(recorded, Mapping):
        raise SpecError("from_smp: the model has no recorded configuration (smp's _hub_mixin_config)")
    defaults = _fields()
    config = {**defaults, **{k: v for k, v in recorded.items() if not k.startswith("_")}}
    batchnorm = config.pop("decoder_use_batchnorm", None)  # smp <0.5's name; smp 0.6 lets it win
    if batchnorm is not None:
        config["decoder_use_norm"] = batchnorm
    for key in config:
        if key not in defaults:
            raise SpecError(
                f"from_smp: Unet config {key}={config[key]!r}: an encoder keyword argument; unetgraph imports Unets "
                "built without them"
            )
    return config


def _graph(config: Mapping[str, Any], what: str) -> UNetGraph:
    """The preset's graph of ``config`` (no weights: they come from the model)."""
    try:
        return smp_unet(**{**config, "encoder_weights": None})
    except SpecError as e:
        raise SpecError(f"{what}: {e.message}", node=e.node) from e


def _same_layers(model: nn.Module, config: Mapping[str, Any]) -> None:
    """``model`` has the layers and tensor shapes an smp ``Unet`` of ``config`` has (built on the meta device)."""
    with torch.device("meta"):
        fresh = _smp().Unet(**{**config, "encoder_weights": None})
    have = {n: type(m) for n, m in model.named_modules()}
    want = {n: type(m) for n, m in fresh.named_modules()}
    for name in [*want, *have]:
        if have.get(name) is not want.get(name):
            mine = have[name].__name__ if name in have else "nothing"
            theirs = want[name].__name__ if name in want else "nothing"
            raise SpecError(
                f"from_smp: the model's {name!r} is {mine} where smp's Unet of its configuration has {theirs}: "
                "the model was changed after it was built"
            )
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    for key, value in model.state_dict().items():
        if shapes.get(key) != tuple(value.shape):
            raise SpecError(
                f"from_smp: the model's {key} has shape {tuple(value.shape)} where smp's Unet of its "
                f"configuration has {shapes.get(key)}: the model was changed after it was built"
            )


def _unused_by_smp(ours: str, g: UNetGraph) -> bool:
    """Whether ``ours`` (a key :func:`smp_keys` gave) belongs to weights smp keeps but never runs."""
    attention = re.match(r"(dec\d+_att1)\.", ours)
    if attention:  # attention1 of the block without a skip
        return attention.group(1) not in g
    encoder = g["encoder"].block if "encoder" in g else None
    stage = re.match(r"encoder\.(layer\d)\.", ours)
    if stage and isinstance(encoder, Backbone) and encoder.source == "torchvision":
        return stage.group(1) not in (encoder.stages or ())  # smp's ResNet's stages below its depth
    return False


def from_smp(model: nn.Module) -> tuple[UNetGraph, fx.GraphModule]:
    """The graph of a segmentation_models_pytorch ``Unet`` and its lowered module with the model's weights.

    Supported: smp's own ResNet/ResNeXt encoders (``"resnet18"`` … ``"resnext101_32x8d"``) and
    ``"tu-"`` timm encoders whose features start at 1/2 or 1/4 and halve per stage (smp's
    ``"timm-"`` aliases of those too), ``encoder_depth`` 1–5, any ``decoder_channels``,
    ``decoder_use_norm`` ``"batchnorm"``/``"identity"``/``True``/``False`` (and the deprecated
    ``decoder_use_batchnorm``), ``decoder_attention_type`` ``None`` or ``"scse"``,
    ``decoder_interpolation`` ``"nearest"``/``"bilinear"``, any ``in_channels`` and ``classes``.
    The configuration is read from what smp records on the model (``model.config``), the model
    is checked to still have that configuration's layers, and is never traced. The module is on
    the model's device and dtype, in its training mode, and gives the model's outputs at every
    size the graph accepts (multiples of ``2**encoder_depth``; lower the graph with ``pad="auto"``
    for others, where smp interpolates).

    Args:
        model: a ``segmentation_models_pytorch.Unet`` (that class exactly).

    Returns:
        ``(graph, module)``: :func:`~unetgraph.presets.smp_unet`'s graph of the configuration and
        ``graph.lower()`` with every tensor of the model that smp uses (the weights smp keeps but
        never runs have no counterpart; see :func:`~unetgraph.presets.smp_unet`).

    Raises:
        SpecError: another class, an option the graph does not match (the message names the
            field and its value: ``activation``, ``aux_params``, ``decoder_use_norm="layernorm"``,
            encoder keyword arguments, smp's own non-ResNet encoders, ...), or a model whose
            layers no longer match its configuration.

    Example:
        >>> import torch, unetgraph as ug, segmentation_models_pytorch as smp
        >>> net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8)).eval()
        >>> g, gm = ug.interop.from_smp(net)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> bool(torch.allclose(gm.eval()(x), net(x), atol=1e-5))
        True
    """
    config = _config(model)
    g = _graph(config, "from_smp")
    _same_layers(model, config)
    theirs = model.state_dict()
    reference = next(iter(theirs.values()), None)
    device = reference.device if reference is not None else None
    dtype = next((p.dtype for p in model.parameters()), None)
    gm = g.lower(device=device, dtype=dtype)
    ours = gm.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, mine in smp_keys(theirs).items():
        if mine not in ours:
            if _unused_by_smp(mine, g):
                continue
            raise SpecError(f"from_smp: smp's {key} has no counterpart in the graph (as {mine})")
        value = smp_tensor(mine, theirs[key])
        if value.shape != ours[mine].shape:
            raise SpecError(
                f"from_smp: smp's {key} has shape {tuple(value.shape)}, the graph's {mine} {ours[mine].shape}"
            )
        loaded[mine] = value
    missing = [k for k in ours if k not in loaded]
    if missing:
        raise SpecError(f"from_smp: the graph's {', '.join(missing[:3])} have no tensor in the model")
    gm.load_state_dict(loaded, strict=True)
    gm.train(model.training)
    return g, gm


# -- graph -> configuration -> model ----------------------------------------------------------------


def _config_from_graph(g: UNetGraph) -> dict[str, Any]:
    """smp ``Unet``'s arguments for ``g``, read from the nodes smp's layout has; whether ``g`` is that
    layout everywhere is for :func:`to_smp` to check (it rebuilds and compares)."""
    for name in ("encoder", "dec0", "up0", "head"):
        if name not in g:
            raise GraphError(f"{name}: smp's Unet layout needs a node {name!r}, which the graph lacks", node=name)
    encoder = g["encoder"].block
    if not isinstance(encoder, Backbone) or encoder.source not in ("timm", "torchvision"):
        raise GraphError(
            f"encoder: a {encoder.type_name} ({encoder.label()}) where smp's Unet has a timm or torchvision Backbone",
            node="encoder",
        )
    weights: str | bool | None
    if encoder.source == "timm":
        name, depth, weights = f"tu-{encoder.name}", encoder.depth, True if encoder.pretrained else None
    else:
        depth = len(encoder.stages or ())
        name, weights = encoder.name, "imagenet" if encoder.pretrained else None
    levels = range((depth or 0) - 1, -1, -1)
    missing = next((f"dec{i}" for i in levels if f"dec{i}" not in g), None)
    if missing is not None:
        raise GraphError(f"{missing}: smp's Unet of depth {depth} needs a node {missing!r}", node=missing)
    if len(g.inputs) != 1:
        raise GraphError(f"inputs {', '.join(g.inputs)}: smp's Unet takes one image")
    return {
        "encoder_name": name,
        "encoder_depth": depth,
        "encoder_weights": weights,
        "decoder_use_norm": _NORM_BACK.get(str(getattr(g["dec0"].block, "norm", "")), "batchnorm"),
        "decoder_channels": tuple(g[f"dec{i}"].type.channels for i in levels),
        "decoder_attention_type": "scse" if "dec0_att2" in g else None,
        "decoder_interpolation": _UP_BACK.get(str(getattr(g["up0"].block, "mode", "")), "nearest"),
        "in_channels": g[g.inputs[0]].type.channels,
        "classes": g["head"].type.channels,
    }


def _source(source: Any) -> tuple[UNetGraph, nn.Module]:
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], UNetGraph):
        return source[0], source[1]
    record = find_record(source)
    if record is None:
        raise SpecError(f"to_smp: expected a module made by unetgraph.lower or (graph, module), got {source!r:.80}")
    return record.graph, getattr(source, "_orig_mod", source)  # torch.compile's wrapper: its module


def to_smp(
    source: fx.GraphModule | tuple[UNetGraph, nn.Module], *, state_dict: bool = False
) -> nn.Module | dict[str, torch.Tensor]:
    """The segmentation_models_pytorch ``Unet`` (or its ``state_dict``) that a graph still is.

    The smp configuration is read off the graph, the graph that configuration gives
    (:func:`~unetgraph.presets.smp_unet`) is rebuilt and must equal the given one node by node
    and edge by edge; the tensors are copied along the same key map as on import, so
    ``to_smp(from_smp(m)[1])`` has ``m``'s ``state_dict`` (but for the weights smp keeps and never
    runs, which get smp's fresh initialisation). Any graph made by ``smp_unet`` goes back, edited
    or not, while it keeps that layout: ``g.set("dec2", channels=...)`` fits (it changes
    ``decoder_channels``); a new node, another block or a changed field smp has no argument for does not.

    Args:
        source: a module lowered from the graph (``ug.lowered_record`` gives its graph), or
            ``(graph, module)``.
        state_dict: return the model's ``state_dict`` instead of the model.

    Returns:
        An ``smp.Unet`` on the module's device and dtype, in its training mode. Its
        ``encoder_weights`` is ``None`` (the weights are the module's) and its ``config`` the
        configuration read off the graph.

    Raises:
        GraphError: a node (named) that smp's ``Unet`` layout has no place for, or that differs
            from what the configuration read off the graph builds.
        LoweringError: the module's tensors do not match the graph (e.g. ``optimize()`` folded
            its batch norms).
    """
    g, module = _source(source)
    config = _config_from_graph(g)
    try:
        expected = smp_unet(**config)
    except UNetGraphError as e:  # the configuration read off the graph is not one smp_unet matches
        raise GraphError(f"the graph does not fit smp's Unet: {e.message}", node=e.node) from e
    first = diff(expected, g).first_difference()
    if first is not None:
        node, words = first
        raise GraphError(f"{words}: the graph no longer fits smp's Unet layout", node=node)
    peer = _smp().Unet(**{**config, "encoder_weights": None})
    ours = module.state_dict()
    theirs = peer.state_dict()
    used: set[str] = set()
    for key, mine in smp_keys(theirs).items():
        if mine not in ours:
            if _unused_by_smp(mine, g):
                continue
            raise LoweringError(f"to_smp: the module has no tensor {mine} for smp's {key}", node=mine.split(".")[0])
        value = ours[mine]
        if value.numel() != theirs[key].numel() or value.shape != smp_tensor(mine, theirs[key]).shape:
            raise LoweringError(
                f"to_smp: the module's {mine} has shape {tuple(value.shape)}, smp's {key} {tuple(theirs[key].shape)}",
                node=mine.split(".")[0],
            )
        theirs[key] = value.reshape(theirs[key].shape)
        used.add(mine)
    left = [k for k in ours if k not in used]
    if left:
        raise LoweringError(
            f"to_smp: {len(left)} tensors of the module have no place in smp's Unet ({', '.join(left[:3])}); "
            "was it optimized?"
        )
    first_tensor = next(iter(ours.values()), None)
    if first_tensor is not None:
        peer.to(device=first_tensor.device, dtype=first_tensor.dtype)
    peer.load_state_dict(theirs, strict=True)
    peer.train(module.training)
    return peer.state_dict() if state_dict else peer
