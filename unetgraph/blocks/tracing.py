"""Tracing a module's ``forward`` into a ``torch.fx`` graph without process-wide patching.

Lowering inlines blocks (and backbones) by tracing them. ``torch.fx.Tracer.trace`` replaces
``nn.Module.__call__`` and ``__getattr__`` for the whole process while it runs, which breaks every
other thread that calls a module meanwhile (``NameError: module is not installed as a submodule``).
:class:`ModuleTracer` gives only the traced module's own submodules a private subclass instead.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from .base import is_leaf_module

__all__ = ["ModuleTracer"]


class ModuleTracer(fx.Tracer):
    """Traces a module's ``forward`` into an fx graph without patching anything process-wide.

    ``fx.Tracer.trace`` swaps ``nn.Module.__call__`` and ``__getattr__`` for every module in the
    process while it runs, so a module called from another thread meanwhile fails (and two
    concurrent traces can leave the swap in place). Here only the block's own modules, freshly
    built for this lowering and seen by no other thread, are given a private subclass for the
    duration of the trace (as ``torch.nn.utils.parametrize`` does): its ``__call__`` goes through
    :meth:`call_module` and its ``__getattr__`` turns parameters and buffers into ``get_attr``
    nodes. Everything else is ``fx.Tracer``'s own machinery.
    """

    # buffers become get_attr nodes, so arithmetic on them stays in the graph (and moves with .to())
    proxy_buffer_attributes = True

    def __init__(self, leaf: Sequence[type] = ()) -> None:
        super().__init__()
        self.attr_proxies: dict[str, fx.Proxy] = {}
        self._leaf = tuple(leaf)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """torch.nn layers, :func:`~unetgraph.blocks.base.leaf_module` classes and ``leaf`` types stay whole."""
        return is_leaf_module(m) or isinstance(m, self._leaf)

    def trace_module(self, module: nn.Module, arity: int) -> tuple[fx.Graph, list[str]]:
        """The graph of ``module.forward`` on ``arity`` tensors (placeholders ``in0``, …) and the
        names of the tensor constants it stored on ``module`` (now non-persistent buffers)."""
        self.root = module
        self.submodule_paths = {m: name for name, m in module.named_modules()}
        self.graph = fx.Graph(tracer_cls=type(self))
        self.tensor_attrs = {}
        for path, m in module.named_modules():
            for key, value in vars(m).items():
                if isinstance(value, torch.Tensor):
                    self.tensor_attrs[value] = f"{path}.{key}" if path else key
        before = set(vars(module))
        originals = {m: type(m) for m in self.submodule_paths}
        try:
            for m, cls in originals.items():
                m.__class__ = _traced_class(cls)
                vars(m)[_TRACER] = self
            inputs = [self.create_proxy("placeholder", f"in{i}", (), {}) for i in range(arity)]
            result = module(*inputs)
            self.create_node("output", "output", (self.create_arg(result),), {})
        finally:
            for m, cls in originals.items():
                vars(m).pop(_TRACER, None)
                m.__class__ = cls
            self.submodule_paths = None
        constants = [k for k in vars(module) if k not in before and isinstance(vars(module)[k], torch.Tensor)]
        for key in constants:  # tensors the trace met as values: keep them with the block, moving with .to()
            module.register_buffer(key, vars(module).pop(key), persistent=False)
        return self.graph, constants


_TRACER = "_unetgraph_tracer"


_TRACED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _traced_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A private subclass of ``cls`` whose calls and parameter reads go to the instance's tracer.
    It keeps ``cls``'s name and module, so leaf checks and messages see the original class."""
    known = _TRACED_CLASSES.get(cls)
    if known is not None:
        return known

    def __call__(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        tracer = vars(self)[_TRACER]
        return tracer.call_module(self, functools.partial(cls.__call__, self), args, kwargs)

    def __getattr__(self: nn.Module, attr: str) -> Any:
        value = cls.__getattr__(self, attr)
        tracer = vars(self).get(_TRACER)
        return value if tracer is None else tracer.getattr(attr, value, tracer.attr_proxies)

    namespace = {"__call__": __call__, "__getattr__": __getattr__, "__module__": cls.__module__}
    traced = type(cls.__name__, (cls,), namespace)
    traced.__qualname__ = cls.__qualname__
    return _TRACED_CLASSES.setdefault(cls, traced)  # two threads may both make one: the first is kept
