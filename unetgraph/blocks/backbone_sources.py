"""Where a backbone's layers come from: timm, torchvision, or a user's ``nn.Module``.

Each source answers two questions for :class:`~unetgraph.blocks.backbone.Backbone`:

* *which feature maps* (:func:`probe`): their names, channels and reductions, found without
  weights (timm's ``feature_info``; a torchvision classifier or a user's module run on the meta
  device, which allocates nothing and never changes the user's module);
* *the module* (:func:`create`): the feature extractor with its weights, loaded by timm's or
  torchvision's own code where asked, and, for lowering, :func:`inline_graph`: the same module
  traced by ``torch.fx`` into a ``GraphModule`` that returns one tensor per feature, with the
  extractor's own ``state_dict`` keys (``layer1.0.conv1.weight``).

timm and torchvision are imported only here and only when a backbone uses them (the
``unetgraph[timm]`` extra). Nothing here imports a module named in data: a user's class is
found in the registry filled by :func:`register_backbone`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import RegistryError, SpecError
from .tracing import ModuleTracer

if TYPE_CHECKING:
    from .backbone import Backbone

__all__ = [
    "Features",
    "register_backbone",
    "backbone_class",
    "probe",
    "create",
    "inline_graph",
    "replace_first_conv",
    "creation",
    "Creation",
    "keep_unused_state",
    "SOURCES",
]

SOURCES = ("timm", "torchvision", "module")

# keys of Backbone.kwargs that its own fields set
RESERVED_KWARGS = {
    "timm": ("features_only", "out_indices", "in_chans", "pretrained", "pretrained_cfg_overlay", "feature_cls"),
    "torchvision": ("weights", "progress"),
    "module": (),
}

_PROBE_SIZES = (256, 320)  # two sizes that every reduction up to 64 divides: reductions must agree at both
_TRACE_LOCK = threading.Lock()  # torch.fx's tracer patches nn.Module.__call__ process-wide while it runs
_MODULES: dict[str, type[nn.Module]] = {}
_MODULES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Features:
    """The feature maps a backbone returns, in output order.

    Attributes:
        names: what each is called (timm's module names ``"layer1"``, torchvision's node names,
            a module's dict keys or list positions).
        keys: how each is picked from what the extractor returns (``out[key]``): positions of a
            list, or keys of a dict.
        channels: channels of each.
        reductions: how many times smaller than the input each is, per spatial axis (``32``).
        params: parameter count of the extractor.
    """

    names: tuple[str, ...]
    keys: tuple[int | str, ...]
    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    params: int


# -- a user's modules: a registry, never an import ---------------------------------------------------


def import_path(cls: type) -> str:
    """``"package.module:Class"``: how documents name a user's backbone class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_backbone(cls: type[nn.Module] | None = None, *, name: str | None = None, replace: bool = False) -> Any:
    """Allow an ``nn.Module`` class as a backbone by name: ``Backbone("pkg.models:MyNet", source="module")``.

    Use as a decorator (``@ug.register_backbone``) or call it. The name defaults to the class's
    import path (``"package.module:Class"``). Loading a document never imports code: a backbone
    class named there must have been registered by the code that loads it (this is the opt-in).

    Raises:
        RegistryError: not an ``nn.Module`` class, or the name is taken by another class.
    """

    def deco(c: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(c, type) and issubclass(c, nn.Module)):
            raise RegistryError(f"register_backbone expects an nn.Module class, got {c!r}")
        key = name or import_path(c)
        with _MODULES_LOCK:
            old = _MODULES.get(key)
            if old is not None and old is not c and not replace and import_path(old) != import_path(c):
                raise RegistryError(
                    f"backbone name {key!r} is already registered by {import_path(old)}; pass replace=True"
                )
            _MODULES[key] = c
        return c

    return deco(cls) if cls is not None else deco


def backbone_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; an error saying how to register it otherwise."""
    with _MODULES_LOCK:
        found = _MODULES.get(name)
        known = sorted(_MODULES)
    if found is None:
        hint = difflib.get_close_matches(name, known, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise RegistryError(
            f"backbone module {name!r} is not registered{extra}: unetgraph never imports a module named in data; "
            "import your class and decorate it with @ug.register_backbone (or call ug.register_backbone(cls))"
        )
    return found


# -- probing: which features, without weights ----------------------------------------------------------


def probe(spec: Backbone, in_channels: int) -> Features:
    """The features ``spec`` returns for ``in_channels`` input channels (cached per spec).

    Raises:
        SpecError: the source is not installed, the model is unknown, or its features do not
            fit (a reduction that is not an integer, a selection that names no feature).
    """
    if spec.module is not None:  # an instance: features were found when the spec was made
        return _declared(spec, in_channels)
    return _probe_cached(spec, in_channels)


@functools.lru_cache(maxsize=128)
def _probe_cached(spec: Backbone, in_channels: int) -> Features:
    if spec.source == "timm":
        return _timm_features(spec, in_channels)
    if spec.source == "torchvision":
        return _select(spec, _torchvision_all(spec, in_channels))
    if spec.features is not None:
        return _declared(spec, in_channels)
    with torch.device("meta"):
        module = _module_from_registry(spec)
    return _select(spec, _run_probe(module, in_channels, spec))


def _declared(spec: Backbone, in_channels: int) -> Features:
    """Features declared on the spec (``features=((channels, reduction), ...)``, ``stages`` as keys)."""
    declared = spec.features or ()
    keys = spec.stages if spec.stages is not None else tuple(range(len(declared)))
    params = sum(p.numel() for p in spec.module.parameters()) if spec.module is not None else _declared_params(spec)
    return Features(
        tuple(str(k) for k in keys),
        tuple(keys),
        tuple(c for c, _ in declared),
        tuple(r for _, r in declared),
        params,
    )


def _declared_params(spec: Backbone) -> int:
    with torch.device("meta"):
        module = _module_from_registry(spec)
    return sum(p.numel() for p in module.parameters())


def find_features(module: nn.Module, in_channels: int, spec: Backbone) -> Features:
    """Run ``module`` on meta tensors (its own weights untouched) and read the features it returns."""
    return _select(spec, _run_probe(module, in_channels, spec))


def _run_probe(module: nn.Module, in_channels: int, spec: Backbone) -> Features:
    outs = []
    for size in _PROBE_SIZES:
        x = torch.empty(2, in_channels, size, size, device="meta")
        try:
            outs.append(_meta_call(module, x))
        except Exception as e:
            raise SpecError(
                f"Backbone {spec.name!r}: running the module on a meta tensor of shape {tuple(x.shape)} failed "
                f"({type(e).__name__}: {e}); declare its features with features=((channels, reduction), ...)"
            ) from e
    first, second = outs
    if isinstance(first, torch.Tensor) or not isinstance(first, (list, tuple, Mapping)):
        raise SpecError(
            f"Backbone {spec.name!r}: the module returns {type(first).__name__}, not a list, tuple or dict of "
            "feature maps"
        )
    keys = list(first.keys()) if isinstance(first, Mapping) else list(range(len(first)))
    names, channels, reductions = [], [], []
    for k in keys:
        a, b = first[k], second[k]
        reduction = _reduction(a, b)
        if reduction is None:
            raise SpecError(
                f"Backbone {spec.name!r}: feature {k!r} is not an (N, C, H, W) map a whole number of times "
                f"smaller than the input (shapes {_shape(a)} and {_shape(b)} for inputs of {_PROBE_SIZES})"
            )
        names.append(str(k))
        channels.append(int(a.shape[1]))
        reductions.append(reduction)
    params = sum(p.numel() for p in module.parameters())
    return Features(tuple(names), tuple(keys), tuple(channels), tuple(reductions), params)


def _meta_call(module: nn.Module, x: torch.Tensor) -> Any:
    """``module(x)`` with every parameter and buffer replaced by a meta tensor: nothing is computed
    or allocated, and the module's own tensors and mode stay as they are."""
    state = {k: torch.empty_like(v, device="meta") for k, v in module.named_parameters(remove_duplicate=False)}
    state.update((k, torch.empty_like(v, device="meta")) for k, v in module.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        return torch.func.functional_call(module, state, (x,), tie_weights=False, strict=False)


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _reduction(a: Any, b: Any) -> int | None:
    """The common reduction of a feature seen at both probe sizes (``None`` if it is not one)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() != 4 or b.dim() != 4:
        return None
    found = set()
    for size, t in zip(_PROBE_SIZES, (a, b)):
        for n in t.shape[2:]:
            if n < 1 or size % n:
                return None
            found.add(size // n)
    return found.pop() if len(found) == 1 and a.shape[1] == b.shape[1] else None


def _select(spec: Backbone, found: Features) -> Features:
    """The features ``spec.stages`` / ``spec.depth`` pick out of ``found``."""
    index = list(range(len(found.keys)))
    if spec.stages is not None:
        picked = []
        for s in spec.stages:
            matches = [i for i in index if found.keys[i] == s or found.names[i] == s]
            if not matches:
                raise SpecError(
                    f"Backbone {spec.name!r}.stages: no feature {s!r}; it returns {', '.join(map(repr, found.names))}"
                )
            picked.append(matches[0])
        index = picked
    if spec.depth is not None:
        index = _by_depth(spec, found, index)
    return Features(
        tuple(found.names[i] for i in index),
        tuple(found.keys[i] for i in index),
        tuple(found.channels[i] for i in index),
        tuple(found.reductions[i] for i in index),
        found.params,
    )


def _by_depth(spec: Backbone, found: Features, index: list[int]) -> list[int]:
    """The features down to ``1/2**depth`` (the encoder depth of smp); the deepest must be there."""
    assert spec.depth is not None
    limit = 2**spec.depth
    kept = [i for i in index if found.reductions[i] <= limit]
    if not any(found.reductions[i] == limit for i in kept):
        have = ", ".join(f"1/{found.reductions[i]}" for i in index)
        raise SpecError(
            f"Backbone {spec.name!r}.depth={spec.depth} needs a feature at 1/{limit}; its features are at {have}"
        )
    return kept


# -- timm -------------------------------------------------------------------------------------------------


def _timm() -> Any:
    try:
        import timm
    except ImportError as e:
        raise SpecError(
            f"a timm backbone needs timm (pip install 'unetgraph[timm]'): {type(e).__name__}: {e}"
        ) from None
    return timm


def _timm_kwargs(spec: Backbone) -> dict[str, Any]:
    return dict(spec.kwargs)


def _timm_features(spec: Backbone, in_channels: int) -> Features:
    all_ = _timm_all(spec.name, in_channels, spec.kwargs)
    chosen = _select(spec, all_)
    # the extractor built with only the chosen out_indices may hold fewer layers: count those
    indices = tuple(int(k) for k in chosen.keys)
    params = _timm_params(spec.name, in_channels, spec.kwargs, indices)
    return Features(chosen.names, tuple(range(len(indices))), chosen.channels, chosen.reductions, params)


@functools.lru_cache(maxsize=64)
def _timm_all(name: str, in_channels: int, kwargs: tuple[tuple[str, Any], ...]) -> Features:
    model = _timm_model(name, in_channels, dict(kwargs), None, meta=True)
    info: Any = model.feature_info  # timm's FeatureInfo (timm is untyped here)
    if getattr(model, "output_fmt", "NCHW") not in ("NCHW", None) and str(model.output_fmt) != "NCHW":
        raise SpecError(
            f"Backbone {name!r}: timm returns its features channels-last ({model.output_fmt}); not supported"
        )
    names = tuple(info.module_name())
    return Features(names, tuple(range(len(names))), tuple(info.channels()), tuple(int(r) for r in info.reduction()), 0)


@functools.lru_cache(maxsize=64)
def _timm_params(name: str, in_channels: int, kwargs: tuple[tuple[str, Any], ...], indices: tuple[int, ...]) -> int:
    model = _timm_model(name, in_channels, dict(kwargs), indices, meta=True)
    return sum(p.numel() for p in model.parameters())


def _timm_model(
    name: str,
    in_channels: int,
    kwargs: dict[str, Any],
    out_indices: tuple[int, ...] | None,
    *,
    meta: bool = False,
    pretrained: bool = False,
    weights: str | None = None,
) -> nn.Module:
    timm = _timm()
    args: dict[str, Any] = dict(features_only=True, in_chans=in_channels, **kwargs)
    if out_indices is not None:
        args["out_indices"] = out_indices
    if pretrained or weights is not None:
        args["pretrained"] = True
        if weights is not None:
            _weights_file(weights, name)  # timm opens it by name: refuse a FIFO or a device first
            args["pretrained_cfg_overlay"] = {"file": str(weights)}
    try:
        if meta:
            with torch.device("meta"):
                return timm.create_model(name, **args)
        return timm.create_model(name, **args)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "not a known" in str(e):
            hint = difflib.get_close_matches(name, timm.list_models(), n=3)
            extra = f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""
            raise SpecError(f"Backbone {name!r}: timm has no such model{extra}") from None
        raise SpecError(f"Backbone {name!r}: timm.create_model failed: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise SpecError(f"Backbone {name!r}: timm.create_model failed: {type(e).__name__}: {e}") from e


# -- torchvision --------------------------------------------------------------------------------------------


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as e:
        raise SpecError(
            f"a torchvision backbone needs torchvision (pip install 'unetgraph[timm]'): {type(e).__name__}: {e}"
        ) from None
    return torchvision


def _torchvision_classifier(spec: Backbone, in_channels: int, *, meta: bool = False, load: bool = False) -> nn.Module:
    """The classification model, its first convolution changed for ``in_channels`` (as smp does)."""
    tv = _torchvision()
    known = tv.models.list_models(module=tv.models)
    if spec.name not in known:
        hint = difflib.get_close_matches(spec.name, known, n=3)
        extra = f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""
        raise SpecError(f"Backbone {spec.name!r}: torchvision has no classification model of that name{extra}")
    weights = None
    if load and spec.pretrained:
        enum = tv.models.get_model_weights(spec.name)
        choice = "DEFAULT" if spec.pretrained is True else spec.pretrained
        try:
            weights = enum[choice]
        except KeyError:
            raise SpecError(
                f"Backbone {spec.name!r}.pretrained: torchvision has no weights {choice!r}; "
                f"it has {', '.join(w.name for w in enum)}"
            ) from None
    try:
        with torch.device("meta") if meta else _no_device():
            model = tv.models.get_model(spec.name, **dict(spec.kwargs))
    except Exception as e:
        raise SpecError(f"Backbone {spec.name!r}: torchvision.models.get_model failed: {type(e).__name__}: {e}") from e
    if weights is not None:
        # torchvision's own download-or-cache path, read without unpickling code
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
        model.load_state_dict(state)
    if in_channels != 3:
        try:
            replace_first_conv(model, in_channels)
        except ValueError as e:
            raise SpecError(f"Backbone {spec.name!r}: {e}") from None
    return model


@functools.lru_cache(maxsize=64)
def _torchvision_all(spec: Backbone, in_channels: int) -> Features:
    model = _torchvision_classifier(spec, in_channels, meta=True)
    stages = spec.stages if spec.stages is not None else find_stages(model, in_channels, spec.name)
    extractor = _torchvision_extractor(model, tuple(str(s) for s in stages), spec.name)
    found = _run_probe(extractor, in_channels, spec)
    return Features(found.names, found.keys, found.channels, found.reductions, found.params)


def _torchvision_extractor(model: nn.Module, stages: tuple[str, ...], name: str) -> nn.Module:
    """A module returning ``{stage: tensor}``. Stages that are module paths (what
    :func:`find_stages` gives) are traced here without patching anything process-wide; finer node
    names go to torchvision's ``create_feature_extractor``, whose tracer replaces
    ``nn.Module.__call__`` for every thread while it runs."""
    extractor = _stage_extractor(model, stages)
    if extractor is not None:
        return extractor
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        with _TRACE_LOCK:
            return create_feature_extractor(model, return_nodes=list(stages))
    except Exception as e:
        raise SpecError(
            f"Backbone {name!r}: torchvision cannot extract {list(stages)} ({type(e).__name__}: {e}); see "
            "torchvision.models.feature_extraction.get_graph_node_names for the names it takes"
        ) from e


class _StageTracer(ModuleTracer):
    """A :class:`ModuleTracer` that keeps the output of each module call by the module's path."""

    def __init__(self, leaf: Sequence[type]) -> None:
        super().__init__(leaf)
        self.outputs: dict[str, Any] = {}

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        path = (self.submodule_paths or {}).get(m)
        if path:
            self.outputs[path] = out  # a module called twice: its last output, as torchvision's last node
        return out


def _stage_extractor(model: nn.Module, stages: tuple[str, ...]) -> nn.Module | None:
    """``model`` traced into a GraphModule returning ``{stage: output of that module}`` (the
    rest of the graph removed), with torchvision's layers (``torchvision.ops``) kept whole as
    its own extractor does; a ``DualGraphModule`` where training and evaluation trace
    differently. ``None`` where a stage is not a module path or the trace fails."""
    paths = {path for path, _ in model.named_modules() if path}
    if not stages or not all(s in paths for s in stages):
        return None
    from torchvision.models.feature_extraction import DualGraphModule

    mode = model.training
    graphs = []
    try:
        for training in (True, False):
            model.train(training)
            tracer = _StageTracer(_torchvision_leaves())
            graph, _ = tracer.trace_module(model, 1)
            picked = {s: tracer.outputs.get(s) for s in stages}
            nodes = {s: p.node for s, p in picked.items() if isinstance(p, fx.Proxy)}
            if len(nodes) != len(stages):
                return None
            output = next(n for n in graph.nodes if n.op == "output")
            output.args = (nodes,)
            gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
            gm.graph.eliminate_dead_code()  # the layers after the deepest stage (pooling, classifier)
            gm.recompile()
            gm.delete_all_unused_submodules()
            graphs.append(gm)
    except Exception:
        return None
    finally:
        model.train(mode)
    train, evaluation = graphs
    if _code(train.graph) == _code(evaluation.graph):
        return evaluation.train(mode)
    return DualGraphModule(model, train.graph, evaluation.graph, class_name=type(model).__name__).train(mode)


@functools.cache
def _torchvision_leaves() -> tuple[type, ...]:
    """The layers torchvision's feature extractor keeps whole: the modules of ``torchvision.ops``."""
    import torchvision.ops

    return tuple(v for v in vars(torchvision.ops).values() if isinstance(v, type) and issubclass(v, nn.Module))


def find_stages(model: nn.Module, in_channels: int, name: str) -> tuple[str, ...]:
    """The stages of a torchvision classifier: for each reduction, the last module output at it.

    Modules two levels deep at most are candidates (``layer1``, ``features.3``); a module whose
    output is its last child's takes the shorter name. The model runs on meta tensors at two sizes;
    outputs whose size does not follow the input (the global pooling, the classifier) drop out.
    """
    candidates = {n: m for n, m in model.named_modules() if n and n.count(".") <= 1}
    seen: list[tuple[str, int, int]] = []  # (name, id of the output, reduction) in execution order
    results: list[dict[str, Any]] = []
    for size in _PROBE_SIZES:
        record: dict[str, Any] = {}
        order: list[str] = []
        handles = [
            m.register_forward_hook(functools.partial(_keep_output, record=record, order=order, name=n))
            for n, m in candidates.items()
        ]
        try:
            _meta_call(model, torch.empty(1, in_channels, size, size, device="meta"))
        except Exception as e:
            raise SpecError(f"Backbone {name!r}: running it on the meta device failed: {type(e).__name__}: {e}") from e
        finally:
            for h in handles:
                h.remove()
        results.append({"record": record, "order": order})
    first, second = results
    for n in first["order"]:
        r = _reduction(first["record"][n], second["record"].get(n))
        if r is not None:
            seen.append((n, id(first["record"][n]), r))
    by_reduction: dict[int, tuple[str, int]] = {}
    deepest = 0
    for n, ident, r in seen:
        if r < deepest:
            continue  # an earlier scale again (an upsampling inside): not a stage boundary
        deepest = r
        old = by_reduction.get(r)
        # the same tensor as the previous candidate: a parent returning its last child's output
        if old is not None and old[1] == ident and n.count(".") > old[0].count("."):
            continue
        by_reduction[r] = (n, ident)
    stages = tuple(by_reduction[r][0] for r in sorted(by_reduction))
    if not stages:
        raise SpecError(f"Backbone {name!r}: found no feature maps; give stages=(...) (torchvision node names)")
    return stages


def _keep_output(
    module: nn.Module, args: Any, out: Any, *, record: dict[str, Any], order: list[str], name: str
) -> None:
    """A forward hook: keep a module's 4D output by its name, in execution order."""
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        record[name] = out
        order.append(name)


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give ``model``'s first 3-channel ``Conv2d`` ``in_channels`` inputs, in place: one channel
    sums the RGB weights, more repeat them cyclically scaled by ``3 / in_channels`` (smp's rule);
    the rest of the layer is unchanged."""
    for parent in model.modules():
        for child_name, conv in parent.named_children():
            if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
                # a Conv2d's sizes are pairs (torch types them tuple[int, ...]); this function is
                # copied into ejected files, so it stays self-contained
                (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
                pad = conv.padding if isinstance(conv.padding, str) else (conv.padding[0], conv.padding[1])
                new = nn.Conv2d(
                    in_channels,
                    conv.out_channels,
                    (kh, kw),
                    (sh, sw),
                    pad,
                    (dh, dw),
                    conv.groups,
                    conv.bias is not None,
                    conv.padding_mode,
                    device=conv.weight.device,
                    dtype=conv.weight.dtype,
                )
                if conv.weight.device.type != "meta":
                    with torch.no_grad():
                        w = conv.weight
                        if in_channels == 1:
                            new.weight.copy_(w.sum(1, keepdim=True))
                        else:
                            idx = torch.arange(in_channels, device=w.device) % 3
                            new.weight.copy_(w[:, idx] * (3 / in_channels))
                        if conv.bias is not None and new.bias is not None:
                            new.bias.copy_(conv.bias)
                setattr(parent, child_name, new)
                return
    raise ValueError(f"{type(model).__name__} has no 3-channel Conv2d to take {in_channels} input channels")


class _no_device:
    """A context that changes nothing (the caller's default device stays)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- a user's module ------------------------------------------------------------------------------------------


def _module_from_registry(spec: Backbone) -> nn.Module:
    cls = backbone_class(spec.name)
    try:
        return cls(**dict(spec.kwargs))
    except Exception as e:
        raise SpecError(f"Backbone {spec.name!r}: {cls.__qualname__}(**kwargs) failed: {type(e).__name__}: {e}") from e


# -- creating the extractor with its weights --------------------------------------------------------------------


def create(spec: Backbone, in_channels: int, *, load: bool = True) -> tuple[nn.Module, Features]:
    """The feature extractor of ``spec`` on the current default device, and its features.

    With ``load`` (and not on the meta device) pretrained weights are loaded: timm's own
    loading (``pretrained=True``; a local file through ``pretrained_cfg_overlay=dict(file=...)``),
    torchvision's own (``pretrained=True`` or a weights name: its download-or-cache path, read
    with ``weights_only=True``), or, for ``weights=`` with torchvision and user modules, the file
    read with ``torch.load(weights_only=True)`` or safetensors, every feature key required.
    """
    feats = probe(spec, in_channels)
    meta = torch.empty(0).device.type == "meta"
    load = load and not meta
    if spec.source == "timm":
        indices = tuple(int(k) for k in _select(spec, _timm_all(spec.name, in_channels, spec.kwargs)).keys)
        model = _timm_model(
            spec.name,
            in_channels,
            _timm_kwargs(spec),
            indices,
            pretrained=load and spec.pretrained is True,
            weights=spec.weights if load else None,
        )
        return model, feats
    if spec.source == "torchvision":
        classifier = _torchvision_classifier(spec, in_channels, load=load)
        if load and spec.weights is not None:
            _load_file(classifier, spec.weights, spec.name, strict=False)
        model = _torchvision_extractor(classifier, tuple(str(k) for k in feats.keys), spec.name)
        return model, feats
    if spec.module is not None:
        model = copy.deepcopy(spec.module)
        if meta:
            model = model.to("meta")
    else:
        model = _module_from_registry(spec)
    if load and spec.weights is not None:
        _load_file(model, spec.weights, spec.name, strict=True)
    return model, feats


_MAX_WEIGHTS = 2**36  # 64 GiB: a weights file is read whole, once


def _weights_file(path: str, name: str) -> bytes:
    """The bytes of a weights file: a regular file (a FIFO would block, a device never end)."""
    from ..files import TooLarge, read_regular

    try:
        return read_regular(str(path), _MAX_WEIGHTS)
    except TooLarge as e:
        raise SpecError(f"Backbone {name!r}.weights: {path}: {e.strerror}") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"Backbone {name!r}.weights: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _load_file(model: nn.Module, path: str, name: str, *, strict: bool) -> None:
    """Load a state dict file into ``model`` without running code from it."""
    import io
    import pickle

    data = _weights_file(path, name)
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load

            state = load(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never ours to give
        raise SpecError(
            f"Backbone {name!r}.weights: {path} is not a weights file that loads without running code "
            "(torch.load(weights_only=True) refused it)"
        ) from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise SpecError(f"Backbone {name!r}.weights: cannot read {path}: {type(e).__name__}: {first}") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise SpecError(f"Backbone {name!r}.weights: {path} holds a {type(state).__name__}, not a state dict")
    result = model.load_state_dict(state, strict=False)
    own = set(model.state_dict())
    problems = []
    if result.unexpected_keys:
        problems.append(f"keys the model does not have: {', '.join(result.unexpected_keys[:5])}")
    missing = [k for k in result.missing_keys if strict or k in own]
    if strict and missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}")
    if problems:
        raise SpecError(f"Backbone {name!r}.weights: {path} does not fit: " + "; ".join(problems))


# -- the same creation as source code (for eject) ----------------------------------------------------------


@dataclass(frozen=True)
class Creation:
    """How a standalone file creates the extractor: ``lines`` assign it to their target, after
    ``imports``; ``helpers`` are functions the lines call (their source goes into the file)."""

    imports: tuple[str, ...]
    lines: tuple[str, ...]
    helpers: tuple[Callable[..., Any], ...] = ()


def creation(spec: Backbone, in_channels: int, target: str) -> Creation:
    """The Python statements that create ``spec``'s extractor (without weights) as ``target``.

    Raises:
        SpecError: a backbone made from a module instance (its constructor arguments are unknown).
    """
    feats = probe(spec, in_channels)
    kwargs = "".join(f", {k}={v!r}" for k, v in spec.kwargs)
    if spec.source == "timm":
        indices = tuple(int(k) for k in _select(spec, _timm_all(spec.name, in_channels, spec.kwargs)).keys)
        return Creation(
            ("import timm",),
            (
                f"{target} = timm.create_model(\n    {spec.name!r}, features_only=True, out_indices={indices!r}, "
                f"in_chans={in_channels}{kwargs}\n)",
            ),
        )
    if spec.source == "torchvision":
        local = target.rsplit(".", 1)[-1] + "_classifier"
        lines = [f"{local} = torchvision.models.get_model({spec.name!r}{kwargs})"]
        helpers: tuple[Callable[..., Any], ...] = ()
        if in_channels != 3:
            lines.append(f"replace_first_conv({local}, {in_channels})")
            helpers = (replace_first_conv,)
        nodes = [str(k) for k in feats.keys]
        lines.append(f"{target} = create_feature_extractor(\n    {local}, return_nodes={nodes!r}\n)")
        imports = ("import torchvision", "from torchvision.models.feature_extraction import create_feature_extractor")
        return Creation(imports, tuple(lines), helpers)
    if spec.module is not None:
        raise SpecError(
            f"a backbone made from a module instance ({type(spec.module).__qualname__}) cannot be written as code: "
            "its constructor arguments are unknown; register the class and use "
            f"Backbone({spec.name!r}, source='module', kwargs=...)"
        )
    cls = backbone_class(spec.name)
    module, _, qualname = import_path(cls).partition(":")
    head = qualname.split(".")[0]
    return Creation((f"from {module} import {head}",), (f"{target} = {qualname}({kwargs.removeprefix(', ')})",))


# -- tracing for lowering ---------------------------------------------------------------------------------------


def inline_graph(model: nn.Module, keys: Sequence[int | str]) -> fx.GraphModule | None:
    """``model`` as a GraphModule returning the tuple ``(out[k] for k in keys)``, with the same
    ``state_dict`` keys; ``None`` when it cannot be traced, or traces differently in training
    and evaluation mode (the graph would fix one mode's behaviour)."""
    graphs = []
    if isinstance(model, fx.GraphModule):
        # torchvision's DualGraphModule (its class renamed after the model) holds one graph per mode
        train, evaluation = getattr(model, "train_graph", None), getattr(model, "eval_graph", None)
        if isinstance(train, fx.Graph) and isinstance(evaluation, fx.Graph) and _code(train) != _code(evaluation):
            return None
        graphs = [copy.deepcopy(model.graph)]
        root: nn.Module = model
    else:
        root = model
        leaf = _notrace_modules()
        mode = model.training
        try:
            for training in (True, False):
                model.train(training)
                graphs.append(ModuleTracer(leaf).trace_module(model, 1)[0])
        except Exception:
            return None
        finally:
            model.train(mode)
        if _code(graphs[0]) != _code(graphs[1]):
            return None
    graph = graphs[0]
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    try:
        picked = tuple(result[k] for k in keys)
    except (KeyError, IndexError, TypeError):
        return None
    if not all(isinstance(p, fx.Node) for p in picked):
        return None
    output.args = (picked,)
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
    gm.graph.eliminate_dead_code()  # stages after the deepest feature do not run; their weights stay
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    keep_unused_state(gm, model, "")
    gm.train(model.training)
    return gm


def keep_unused_state(gm: nn.Module, source: nn.Module, prefix: str) -> None:
    """Give ``gm`` every parameter, buffer and submodule of ``source`` (at ``prefix``) that no fx
    node uses, which building a GraphModule leaves out: an inlined backbone keeps its own
    ``state_dict`` keys (its checkpoints load with ``strict=True``), unused stages included
    (``prefix=""``: at the top of ``gm``)."""
    have = set(gm.state_dict())
    for key, tensor in source.state_dict(keep_vars=True).items():
        full = f"{prefix}.{key}" if prefix else key
        if full in have:
            continue
        *path, leaf = full.split(".")
        owner_src = source.get_submodule(".".join(key.split(".")[:-1]))
        owner = gm
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        if leaf in owner_src._parameters:
            owner.register_parameter(leaf, owner_src._parameters[leaf])
        else:
            persistent = leaf not in owner_src._non_persistent_buffers_set
            owner.register_buffer(leaf, tensor, persistent=persistent)


def _code(graph: fx.Graph) -> str:
    return graph.python_code("self").src


def _notrace_modules() -> tuple[type, ...]:
    """timm's own list of layers to keep whole, when timm is loaded. (timm's list of functions not
    to trace is left out: fx honours it by patching module globals process-wide; a backbone whose
    trace then fails stays one called module.)"""
    import sys

    if "timm" not in sys.modules:
        return ()
    from timm.layers import get_notrace_modules

    return tuple(get_notrace_modules())
