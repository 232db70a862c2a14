"""Eject: write a lowered U-Net as a standalone, readable PyTorch file.

The file holds one ``nn.Module`` class whose submodules carry the graph's node names, whose
``state_dict`` keys equal the lowered GraphModule's, and whose ``forward`` reads like
hand-written code with a shape comment per block. It imports only ``torch`` (plus
``math``/``operator`` when the model uses them, and ``typing``): the input guard and
``pad="auto"``'s pad and crop are :mod:`unetgraph.contract`'s definitions copied verbatim (the
same checks and words as the lowered module), unetgraph's own leaf layers contribute their
class source. Copy it into your code base and change it freely.

The source is generated from the fx graph and the module types, not from block names, so
new blocks mostly just work: ``torch.nn`` layers are rebuilt from their constructor
arguments (read back from the module and checked by rebuilding), inlined block code is
written as the ops it traced to, and custom leaf layers contribute their class source.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import inspect
import keyword
import operator
import re
import textwrap
import threading
from collections import OrderedDict
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn

from . import contract
from .blocks.backbone import Backbone
from .blocks.backbone_sources import create as create_backbone
from .blocks.backbone_sources import creation
from .blocks.layers import NORM_TYPES
from .check import check, valid_sizes
from .dynamic import graph_and_module
from .errors import GraphError, LoweringError, ShapeError, SpecError
from .files import write_atomic
from .graph import UNetGraph, check_identifier
from .grouping import ungroup
from .inputs import input_shapes
from .lower import fx_node_names, output_fx_names
from .record import lowered_record
from .types import AXIS_NAMES

__all__ = ["eject", "eject_source"]

_BINARY = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.pow: "**",
    operator.matmul: "@",
    operator.and_: "&",
    operator.or_: "|",
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
}
_UNARY = {operator.neg: "-", operator.pos: "+", operator.invert: "~", operator.not_: "not "}


def eject(
    model: UNetGraph | fx.GraphModule,
    path: str | Path,
    *,
    class_name: str | None = None,
    verify: bool = True,
) -> Path:
    """Write ``model`` as a standalone PyTorch file at ``path`` (atomically); returns the path.

    Args:
        model: a graph (lowered with default options) or a GraphModule made by
            :func:`unetgraph.lower` (optimized ones too).
        class_name: the class name (default: the graph's name, with a suffix ``_1`` where it
            is a name the file uses otherwise, such as ``nn`` or ``InputGuard``).
        verify: run the generated module (with the model's weights) against the
            GraphModule on a random valid input and require equal outputs.

    Raises:
        LoweringError: some layer or op cannot be written in plain PyTorch (the message
            names it), the verification finds a difference, or ``class_name`` is not an
            identifier in NFKC form, is a keyword, or is a name the file uses otherwise.

    Example:
        >>> import tempfile, unetgraph as ug
        >>> path = ug.eject(ug.unet(3, 2, widths=(8, 16)), tempfile.mkdtemp() + "/my_unet.py")
        >>> "class UNet(nn.Module)" in path.read_text()
        True
    """
    source = eject_source(model, class_name=class_name, verify=verify)
    return write_atomic(path, source)


def eject_source(model: UNetGraph | fx.GraphModule, *, class_name: str | None = None, verify: bool = True) -> str:
    """The source :func:`eject` writes, as a string."""
    g, gm = graph_and_module(model)
    gm = ungroup(gm)  # a checkpointed module is written as the flat one (inference has nothing to recompute)
    if class_name is not None:
        try:
            check_identifier(class_name, "class_name")
        except GraphError as e:
            raise LoweringError(e.message) from None
    writer = _Writer(g, gm, g.name if class_name is None else class_name, chosen=class_name is not None)
    source = writer.source()
    if verify:
        _verify(source, writer.class_name, g, gm)
    return source


# -- helpers written into the ejected file ----------------------------------------------------
# The input guard and pad="auto"'s pad and crop are unetgraph.contract's definitions, copied
# verbatim: the ejected file checks its inputs with the same code, in the same words.


def _guard_ctor(m: contract.InputGuard) -> str:
    args = [repr(m.name), f"form={m.form!r}", f"channels={m.channels}"]
    if m.axes:
        args.append(f"axes={m.axes!r}")
    if m.sizes:
        args.append("sizes=(\n" + "".join(f"    {a!r},\n" for a in m.sizes) + ")")
    args += [f"rule={m.rule!r}"] if m.rule else []
    args += [f"hint={m.hint!r}"] if m.hint else []
    args.append(f"signature={m.signature!r}")
    if not m.match:
        args.append("match=False")
    if m.classes:
        args.append(f"classes={m.classes}")
    return "InputGuard(\n" + "".join(textwrap.indent(a, "    ") + ",\n" for a in args) + ")"


# CPython 3.11's ast.parse is not thread-safe: two threads parsing at once fail with
# "SystemError: AST constructor recursion depth mismatch" (tests/test_eject.py's threads test
# failed 3 runs in 4 without this lock). inspect.getsource parses the whole module for a class,
# so every read of a source here takes this lock.
_SOURCE_LOCK = threading.Lock()


def _source(obj: Any) -> str:
    """``inspect.getsource(obj)``, one thread at a time."""
    with _SOURCE_LOCK:
        return inspect.getsource(obj)


# module type -> (constructor source, the contract's definitions it needs)
_RUNTIME: dict[type, tuple[Callable[[Any], str], tuple[Any, ...]]] = {
    contract.InputGuard: (_guard_ctor, contract.GUARD_PARTS),
    contract.PadToValid: (lambda m: f"PadToValid({m.sizes!r}, {m.mode!r}, {m.name!r})", contract.PAD_PARTS),
    contract.CropToInput: (lambda m: f"CropToInput({m.sizes!r})", contract.PAD_PARTS),
}

# unetgraph's own leaf layers whose constructor arguments are not attributes
_CTORS: dict[str, Callable[[Any], str]] = {
    "ChannelLayerNorm": lambda m: f"ChannelLayerNorm({m.weight.shape[0]}, eps={m.eps!r})",
}


# -- the writer --------------------------------------------------------------------------------


# Names every ejected file binds or reads at module level besides its helpers' (``InputGuard``...)
# and its backbones' imports: forward's locals do not shadow them (nor builtins), the class takes none.
FILE_NAMES = ("self", "torch", "nn", "F", "math", "operator", "Any", "NoReturn", "OrderedDict", "annotations")


class _Writer:
    def __init__(self, g: UNetGraph, gm: fx.GraphModule, class_name: str, *, chosen: bool = False) -> None:
        """``chosen``: ``class_name`` was asked for (a clash is refused, not renamed)."""
        self.g, self.gm, self.class_name, self.chosen = g, gm, class_name, chosen
        self.nodes = list(gm.graph.nodes)
        self.called = {n.target for n in self.nodes if n.op == "call_module"}
        self.helpers: OrderedDict[str, str] = OrderedDict()
        self.imports: set[str] = set()
        self.chains = self._chains()
        self.flat: dict[str, str] = {}  # stateless called modules moved to the root: path -> name
        self.names = self._names()
        self.backbones = _backbones(g, gm)  # written as their creation (timm / torchvision / a class)
        self.third: list[str] = []  # third-party imports the backbones need

    # -- structure ------------------------------------------------------------------------
    def _chains(self) -> dict[str, list[fx.Node]]:
        """Containers called as a whole: every child is called once, in order, as a one-input chain."""
        by_parent: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op == "call_module" and "." in str(n.target):
                by_parent.setdefault(str(n.target).rsplit(".", 1)[0], []).append(n)
        chains = {}
        for parent, calls in by_parent.items():
            container = self.gm.get_submodule(parent)
            children = [name for name, _ in container.named_children()]
            if [str(c.target).rsplit(".", 1)[1] for c in calls] != children or _own_state(container):
                continue
            linked = all(len(c.args) == 1 and not c.kwargs for c in calls) and all(
                b.args[0] is a and len(a.users) == 1 for a, b in pairwise(calls)
            )
            if linked and not isinstance(calls[0].args[0], (list, tuple)):
                chains[parent] = calls
        return chains

    def _names(self) -> dict[fx.Node, str]:
        """Readable names: a graph node's name for its output; the input keeps its name through its
        guard (which returns it unchanged); parameters and buffers are read in place (``self.mid.scale``)."""
        holders = {fx_name: node for node, fx_name in fx_node_names(self.gm).items() if len(self.g[node].outputs) == 1}
        names: dict[fx.Node, str] = {}
        used: set[str] = set(FILE_NAMES) | set(dir(builtins))
        for n in self.nodes:
            if n.op == "output":
                continue
            if n.op == "get_attr":
                names[n] = self._ref(str(n.target))
                continue
            guarded = (
                n.op == "call_module"
                and isinstance(self.gm.get_submodule(n.target), contract.InputGuard)
                and n.args[0].op == "placeholder"
            )
            if guarded:
                names[n] = names[n.args[0]]
                continue
            want = holders.get(n.name, n.name)
            if want in self.g.inputs:  # an input's other stages (its padding) keep their own names
                want = n.name
            if want in used:
                base, i = want, 1
                while f"{base}_{i}" in used:
                    i += 1
                want = f"{base}_{i}"
            used.add(want)
            names[n] = want
        return names

    # -- __init__ -------------------------------------------------------------------------
    def _init_lines(self) -> list[str]:
        lines = []
        for name, t in _own_tensors(self.gm):
            lines += _tensor_lines("self", name, t, self.gm)
        for name, child in self.gm.named_children():
            if name in self.backbones:
                lines += self._backbone_init(name)
                continue
            lines += self._module_lines(name, child)
        lines += self._precision_lines()
        # weights an optimize()d module keeps channels-last (the layout picks the conv kernel,
        # so it matters for equal outputs); load_state_dict then keeps the layout
        for dims, fmt in ((4, "channels_last"), (5, "channels_last_3d")):
            layout = getattr(torch, fmt)
            tensors = [p for p in self.gm.parameters() if p.dim() == dims]
            if (
                tensors
                and all(p.is_contiguous(memory_format=layout) for p in tensors)
                and not all(p.is_contiguous() for p in tensors)
            ):
                # a weight whose second dim is 1 has the same memory in both layouts; the
                # channels_last pass leaves its strides (and so the kernel oneDNN picks) alone
                lines += [
                    f"for p in self.parameters():  # {fmt}, as the optimized module's weights",
                    f"    if p.dim() == {dims} and p.shape[1] > 1:",
                    f"        p.data = p.data.contiguous(memory_format=torch.{fmt})",
                ]
        return lines

    def _precision_lines(self) -> list[str]:
        """A module lowered in another dtype (``lower(dtype=...)``): all of it in that dtype; a
        reduced-precision one (``optimize(dtype=...)``): weights in that dtype, norms' in float32."""
        uniform = compute_dtype(self.gm)
        if uniform is not None:
            return [f"self.to({uniform})  # as the lowered module: computes in {uniform}"]
        low = {p.dtype for p in self.gm.parameters() if p.is_floating_point()} - {torch.get_default_dtype()}
        if len(low) != 1:
            return []
        (dtype,) = low
        used = {type(m) for m in self.gm.modules()}
        norms = ", ".join(_class_name(c) for c in NORM_TYPES if c.__module__.startswith("torch.nn") or c in used)
        return [
            f"for m in self.modules():  # {dtype} weights, as the optimized module's; norms keep float32",
            f"    if not isinstance(m, ({norms})):",
            "        for p in m.parameters(recurse=False):",
            f"            p.data = p.data.to({dtype})",
        ]

    def _module_lines(self, path: str, module: nn.Module) -> list[str]:
        """Statements that create the root's child ``path`` (and everything under it)."""
        if path not in self.called and path not in self.chains and not _has_state(module):
            # nothing in the state_dict: the layers called inside move to the root
            lines = []
            for sub, m in module.named_modules(prefix=path):
                if sub in self.called:
                    flat = self._flat_name(sub)
                    self.flat[sub] = flat
                    lines.append(f"self.{flat} = {self._ctor(m, sub)}")
            return lines
        expr, fill = self._build(path, module)
        return [f"self.{path} = {expr}", *fill]

    def _flat_name(self, path: str) -> str:
        name = re.sub(r"\W", "_", path.replace(".", "_"))
        taken = set(self.flat.values()) | {n for n, _ in self.gm.named_children()}
        base, i = name, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        return name

    def _layout(self, path: str, module: nn.Module) -> str:
        """How the ejected file holds the container at ``path``, from its structure (a GraphModule
        keeps only plain ``nn.Module`` s above the layers it calls): ``"sequential"`` (a chain of
        layers called as one), ``"list"`` (children ``0, 1, …``: an ``nn.ModuleList``), ``"dict"``
        (children whose names are not identifiers: an ``nn.ModuleDict``), ``"params"`` (parameters
        ``0, 1, …``: an ``nn.ParameterList``) or ``"module"`` (an ``nn.Module`` filled by attribute)."""
        children = [c for c, _ in module.named_children()]
        tensors = _own_tensors(module)
        if path in self.chains:
            return "sequential"
        if tensors:
            params = all(isinstance(t, nn.Parameter) for _, t in tensors)
            return "params" if params and not children and _numbered([k for k, _ in tensors]) else "module"
        if children and _numbered(children):
            return "sequential" if isinstance(module, nn.Sequential) else "list"
        if children and not all(_attribute(c) for c in children):
            return "dict"
        return "module"

    def _build(self, path: str, module: nn.Module) -> tuple[str, list[str]]:
        """``(expression, statements)``: an expression that creates ``module`` at ``path`` (whole, or
        as a skeleton), then the statements that fill the skeleton, addressed through :meth:`_ref`."""
        if path in self.called:
            return self._ctor(module, path), []
        layout = self._layout(path, module)
        if layout == "params":
            return _listed("nn.ParameterList([", [_tensor_expr(t) for _, t in _own_tensors(module)], "])"), []
        if layout == "module":
            ref = self._ref(path)
            fill = []
            for name, t in _own_tensors(module):
                fill += _tensor_lines(ref, name, t, module)
            for name, child in module.named_children():
                expr, more = self._build(f"{path}.{name}", child)
                assign = f"{ref}.{name} = {expr}" if _attribute(name) else f"{ref}.add_module({name!r}, {expr})"
                fill += [assign, *more]
            return "nn.Module()", fill
        parts, fill = [], []
        for name, child in module.named_children():
            expr, more = self._build(f"{path}.{name}", child)
            parts.append((name, expr))
            fill += more
        if layout == "sequential":
            return _sequential(parts), fill
        if layout == "list":
            return _listed("nn.ModuleList([", [e for _, e in parts], "])"), fill
        return _listed("nn.ModuleDict({", [f"{c!r}: {e}" for c, e in parts], "})"), fill

    def _ref(self, path: str) -> str:
        """The expression that reads the submodule, parameter or buffer at ``path`` in the ejected
        class: ``self.mid.conv``, ``self.mid.seq[0]``, ``self.mid.heads["b-2"]``."""
        if path in self.flat:
            return f"self.{self.flat[path]}"
        expr, owner, at = "self", self.gm, ""
        for part in path.split("."):
            layout = self._layout(at, owner) if at else "module"
            if layout in ("sequential", "list", "params"):
                expr += f"[{part}]"
            elif layout == "dict":
                expr += f"[{part!r}]"
            elif _attribute(part):
                expr += f".{part}"
            else:
                expr = f"getattr({expr}, {part!r})"
            owner, at = getattr(owner, part), f"{at}.{part}" if at else part
        return expr

    def _ctor(self, module: nn.Module, path: str) -> str:
        cls = type(module)
        runtime = next((v for k, v in _RUNTIME.items() if isinstance(module, k)), None)
        if runtime is not None:
            ctor, parts = runtime
            for part in parts:
                self.helpers.setdefault(part.__name__, "\n" + _source(part).strip("\n") + "\n")
            self.imports.update(("typing.Any", "typing.NoReturn"))  # the contract's annotations
            return ctor(module)
        if getattr(nn, cls.__name__, None) is cls:
            return _torch_ctor(module, path)
        if cls.__module__.startswith("torch.") and not cls.__module__.startswith("torch.nn"):
            raise LoweringError(f"{path}: {cls.__module__}.{cls.__name__} is not a torch.nn layer; cannot eject it")
        return self._custom_ctor(module, path)

    def _custom_ctor(self, module: nn.Module, path: str) -> str:
        cls = type(module)
        try:
            source = textwrap.dedent(_source(cls))
        except (OSError, TypeError) as e:
            raise LoweringError(f"{path}: cannot read the source of {cls.__qualname__} ({e})") from None
        lines = [line for line in source.splitlines() if not line.lstrip().startswith("@")]
        source = "\n".join(lines)
        if "unetgraph" in source or "from ." in source:
            raise LoweringError(f"{path}: {cls.__qualname__}'s source refers to unetgraph; it cannot stand alone")
        self.helpers.setdefault(cls.__qualname__, "\n" + source + "\n")
        if cls.__name__ in _CTORS:
            return _CTORS[cls.__name__](module)
        return _signature_ctor(module, cls.__name__, path)

    # -- forward --------------------------------------------------------------------------
    def _forward_lines(self) -> list[str]:
        shapes = _shape_comments(self.g, self.gm)
        chain_last = {calls[-1]: parent for parent, calls in self.chains.items()}
        inside = {c for calls in self.chains.values() for c in calls[:-1]}
        grouped = _backbone_groups(self.nodes, self.backbones)
        lines = []
        for n in self.nodes:
            if n in grouped:
                if grouped[n][0] is n:  # the backbone's first layer: one call in its place
                    lines += self._backbone_call(grouped[n], shapes)
                continue
            if n.op in ("placeholder", "get_attr") or n in inside:
                continue
            if n.op == "output":
                lines.append(f"return {self._arg(n.args[0])}")
                continue
            if n in chain_last:
                first = self.chains[chain_last[n]][0]
                expr = f"{self._ref(chain_last[n])}({self._arg(first.args[0])})"
            else:
                expr = self._expr(n)
            comment = f"  # {shapes[n.name]}" if n.name in shapes else ""
            lines.append(f"{self.names[n]} = {expr}{comment}")
        return lines

    def _expr(self, n: fx.Node) -> str:
        args = ", ".join([*(self._arg(a) for a in n.args), *(f"{k}={self._arg(v)}" for k, v in n.kwargs.items())])
        if n.op == "call_module":
            return f"{self._ref(str(n.target))}({args})"
        if n.op == "get_attr":
            return self._ref(str(n.target))
        if n.op == "call_method":
            head, *rest = n.args
            rest_args = [*(self._arg(a) for a in rest), *(f"{k}={self._arg(v)}" for k, v in n.kwargs.items())]
            return f"{self._arg(head)}.{n.target}({', '.join(rest_args)})"
        fn = n.target
        if fn in _BINARY and len(n.args) == 2 and not n.kwargs:
            return f"{self._arg(n.args[0])} {_BINARY[fn]} {self._arg(n.args[1])}"
        if fn in _UNARY and len(n.args) == 1:
            return f"{_UNARY[fn]}{self._arg(n.args[0])}"
        if fn is operator.getitem:
            return f"{self._arg(n.args[0])}[{_index(n.args[1], self._arg)}]"
        if fn is getattr and len(n.args) == 2 and isinstance(n.args[1], str):
            return f"{self._arg(n.args[0])}.{n.args[1]}"
        return f"{self._function(fn, n)}({args})"

    def _function(self, fn: Any, n: fx.Node) -> str:
        from torch.fx.node import _get_qualified_name

        name = _get_qualified_name(fn)
        if name.startswith("torch.nn.functional."):
            return "F." + name.removeprefix("torch.nn.functional.")
        if name.startswith("torch."):
            return name
        if name.startswith("_operator."):
            self.imports.add("operator")
            return "operator." + name.removeprefix("_operator.")
        if name.startswith("math."):
            self.imports.add("math")
            return name
        if name.startswith("builtins."):
            return name.removeprefix("builtins.")
        raise LoweringError(f"{n.name}: calls {name}, which a standalone PyTorch file cannot import")

    def _arg(self, a: Any) -> str:
        if isinstance(a, fx.Node):
            return self.names[a]
        if isinstance(a, tuple):
            inner = ", ".join(self._arg(v) for v in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        if isinstance(a, list):
            return "[" + ", ".join(self._arg(v) for v in a) + "]"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{k!r}: {self._arg(v)}" for k, v in a.items()) + "}"
        if isinstance(a, (torch.dtype, torch.memory_format)):
            return str(a)
        if isinstance(a, torch.device):
            return f"torch.device({str(a)!r})"
        if a is Ellipsis:
            return "..."
        if isinstance(a, slice):
            return f"slice({self._arg(a.start)}, {self._arg(a.stop)}, {self._arg(a.step)})"
        if isinstance(a, (int, float, bool, str, type(None))):
            return repr(a)
        raise LoweringError(f"cannot write the argument {a!r} ({type(a).__name__}) as Python source")

    # -- the file -------------------------------------------------------------------------
    def source(self) -> str:
        init = self._init_lines()  # first: it registers the helpers
        forward = self._forward_lines()
        # as the lowered module: with guards, a missing conditioning input reaches its guard as None;
        # an input named as a module-level name (nn, F) takes its renamed name, as in the body
        inputs = ", ".join(
            f"{self.names[n]}: torch.Tensor" + (" | None = None" if n.args else "")
            for n in self.nodes
            if n.op == "placeholder"
        )
        ret = "dict[str, torch.Tensor]" if len(self.g.outputs) > 1 else "torch.Tensor"
        doc = self._docstring()
        helpers = [h.strip("\n") for h in self.helpers.values()]
        methods = (
            textwrap.indent(doc, "    ")
            + "\n\n    def __init__(self) -> None:\n        super().__init__()\n"
            + textwrap.indent("\n".join(init), "        ")
            + f"\n\n    def forward(self, {inputs}) -> {ret}:\n"
            + textwrap.indent("\n".join(forward), "        ")
        )
        code = "\n".join([*helpers, methods])
        stdlib = [f"import {m}" for m in sorted(self.imports) if "." not in m]
        if "OrderedDict(" in code:
            stdlib.append("from collections import OrderedDict")
        names: dict[str, list[str]] = {}
        for m in sorted(i for i in self.imports if "." in i):
            names.setdefault(m.rsplit(".", 1)[0], []).append(m.rsplit(".", 1)[1])
        stdlib += [f"from {module} import {', '.join(items)}" for module, items in names.items()]
        third = (
            ["import torch"] + (["import torch.nn.functional as F"] if "F." in code else []) + ["from torch import nn"]
        )
        third += sorted(dict.fromkeys(self.third), key=lambda line: (line.startswith("from"), line))
        self._settle_class_name([*helpers, *stdlib, *third])
        body = "\n\n\n".join([*helpers, f"class {self.class_name}(nn.Module):\n" + methods])
        head = (
            f'"""{self.class_name}: a U-Net in plain PyTorch, ejected from its graph.\n\n'
            "Edit it freely. Load trained weights with\n"
            f"``model = {self.class_name}(); model.load_state_dict(torch.load(path, weights_only=True))``.\n"
            '"""\n\n'
            "from __future__ import annotations\n\n" + ("\n".join(stdlib) + "\n\n" if stdlib else "") + "\n".join(third)
        )
        return f"{head}\n\n\n{body}\n"

    def _settle_class_name(self, module_code: list[str]) -> None:
        """Keep the class name off the names the rest of the file binds at module level (its
        helpers, imports, :data:`FILE_NAMES`) and off builtins: a chosen name that clashes is
        refused, the graph's name gets a suffix ``_1``, ``_2``...

        Raises:
            LoweringError: a chosen ``class_name`` is such a name.
        """
        taken = set(FILE_NAMES) | set(dir(builtins)) | _bound_names("\n".join(c.strip("\n") for c in module_code))
        name = self.class_name
        if name not in taken:
            return
        if self.chosen:
            raise LoweringError(
                f"class_name {name!r} is a name the ejected file uses otherwise (an import, a helper or a "
                "builtin); pick another"
            )
        base, i = name, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        self.class_name = name

    # -- backbones: written as their creation, not layer by layer -----------------------------
    def _backbone_init(self, name: str) -> list[str]:
        node = self.g[name]
        try:
            made = creation(self.backbones[name], node.inputs[0].channels, f"self.{name}")
        except SpecError as e:
            raise LoweringError(f"{name}: {e.message}", node=name) from None
        self.third += made.imports
        for fn in made.helpers:
            source = textwrap.dedent(_source(fn))
            self.helpers.setdefault(fn.__name__, "\n" + source + "\n")
        return [f"# {name}: {node.block.label()}; its weights come from the state_dict", *made.lines]

    def _backbone_call(self, group: list[fx.Node], shapes: dict[str, str]) -> list[str]:
        """``encoder_features = self.encoder(x)`` and one line per output it hands on."""
        name = group[0].meta["custom"]["unet_node"]
        node = self.g[name]
        members = set(group)
        outside = [a for n in group for a in n.all_input_nodes if a not in members and a.op != "get_attr"]
        if len(set(outside)) != 1:
            raise LoweringError(f"{name}: the backbone's layers take {len(set(outside))} inputs, expected one")
        features = f"{name}_features"
        lines = [f"{features} = self.{name}({self._arg(outside[0])})"]
        by_name = {n.name: n for n in group}
        for key, fx_name in zip(node.block.output_keys(node.inputs), output_fx_names(node)):
            port = by_name.get(fx_name)
            if port is None or not port.users:
                continue
            comment = f"  # {shapes[fx_name]}" if fx_name in shapes else ""
            lines.append(f"{self.names[port]} = {features}[{key!r}]{comment}")
        return lines

    def _docstring(self) -> str:
        g = self.g
        params = sum(p.numel() for p in self.gm.parameters())
        lines = [f'"""{g.name}: {len(g)} blocks, {params:,} parameters.', "", "Shape:"]
        for name in g.inputs:
            lines.append(f"    {name}: {g[name].type.pattern().replace('(N', '(B', 1)}")
        with contextlib.suppress(ShapeError):  # no single spatial input: nothing to say about sizes
            lines.append(f"    {valid_sizes(g)}" + (" (other sizes are padded)" if self._padded() else ""))
        for name in g.outputs:
            lines.append(f"    returns {name}: (B, {g[name].type.channels}, ...)")
        return "\n".join(lines) + '\n"""'

    def _padded(self) -> bool:
        return lowered_record(self.gm).pad == "auto"


def _numbered(names: list[str]) -> bool:
    return bool(names) and names == [str(i) for i in range(len(names))]


def _attribute(name: str) -> bool:
    """Whether ``name`` can be written as ``obj.name``."""
    return name.isidentifier() and not keyword.iskeyword(name)


def _listed(start: str, items: list[str], end: str) -> str:
    """``start item, item end`` on one line when short, else one item per line (as ruff formats it)."""
    line = start + ", ".join(items) + end
    if len(line) <= 80 and "\n" not in line:
        return line
    inner = "".join(textwrap.indent(item, "        ") + ",\n" for item in items)
    return f"{start[:-1]}\n    {start[-1]}\n{inner}    {end[0]}\n{end[1:]}"


def _sequential(children: list[tuple[str, str]]) -> str:
    """``nn.Sequential`` source for ``(name, expression)`` children, keeping their names (the
    state_dict keys): positional for ``0, 1, …``, an ``OrderedDict`` otherwise."""
    if [c for c, _ in children] == [str(i) for i in range(len(children))]:
        return "nn.Sequential(\n" + "".join(f"    {e},\n" for _, e in children) + ")"
    if all(_attribute(c) for c, _ in children):
        inner = "".join(f"        {c}={e},\n" for c, e in children)
        return f"nn.Sequential(\n    OrderedDict(\n{inner}    )\n)"
    inner = "".join(f"        ({c!r}, {e}),\n" for c, e in children)
    return f"nn.Sequential(\n    OrderedDict(\n        [\n{textwrap.indent(inner, '    ')}        ]\n    )\n)"


def _backbones(g: UNetGraph, gm: fx.GraphModule) -> dict[str, Backbone]:
    """The backbones the file can create by name: those whose layers are as created (not changed
    by a pass such as ``optimize()``'s batch-norm folding); the rest are written layer by layer."""
    out = {}
    for name in g:
        block = g[name].block
        if not isinstance(block, Backbone) or name not in dict(gm.named_children()):
            continue
        with torch.device("meta"):
            try:
                fresh, _ = create_backbone(block, g[name].inputs[0].channels, load=False)
            except SpecError:
                continue
        if set(fresh.state_dict()) == set(gm.get_submodule(name).state_dict()):
            out[name] = block
    return out


def _backbone_groups(nodes: list[fx.Node], backbones: dict[str, Backbone]) -> dict[fx.Node, list[fx.Node]]:
    """Each fx node of a backbone → all of that backbone's fx nodes, in order."""
    groups: dict[str, list[fx.Node]] = {}
    for n in nodes:
        owner = n.meta.get("custom", {}).get("unet_node")
        if owner in backbones and n.op not in ("placeholder", "output"):
            groups.setdefault(owner, []).append(n)
    return {n: group for group in groups.values() for n in group}


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]


def _own_state(module: nn.Module) -> bool:
    return bool(_own_tensors(module))


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _tensor_expr(t: torch.Tensor) -> str:
    """An empty parameter of ``t``'s shape and dtype, to be loaded from the state_dict."""
    dtype = "" if t.dtype == torch.get_default_dtype() else f", dtype={t.dtype}"
    grad = "" if t.requires_grad else ", requires_grad=False"
    return f"nn.Parameter(torch.empty({tuple(t.shape)!r}{dtype}){grad})"


def _tensor_lines(owner: str, name: str, t: torch.Tensor, module: nn.Module) -> list[str]:
    shape = tuple(t.shape)
    dtype = "" if t.dtype == torch.get_default_dtype() else f", dtype={t.dtype}"
    if isinstance(t, nn.Parameter):
        if not _attribute(name):
            return [f"{owner}.register_parameter({name!r}, {_tensor_expr(t)})  # loaded from the state_dict"]
        return [f"{owner}.{name} = {_tensor_expr(t)}  # loaded from the state_dict"]
    if name in module._non_persistent_buffers_set:
        if t.numel() > 4096:
            raise LoweringError(
                f"{owner}.{name}: a non-persistent buffer of {t.numel()} values is not in the state_dict "
                "and too large to write into the file"
            )
        values = t.tolist()
        return [f"{owner}.register_buffer({name!r}, torch.tensor({values!r}{dtype}), persistent=False)"]
    return [f"{owner}.register_buffer({name!r}, torch.empty({shape!r}{dtype}))  # loaded from the state_dict"]


def _index(idx: Any, arg: Callable[[Any], str]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, slice):
            parts = ["" if v.start is None else arg(v.start), "" if v.stop is None else arg(v.stop)]
            return ":".join(parts) + ("" if v.step is None else f":{arg(v.step)}")
        if v is None:
            return "None"
        return arg(v)

    if isinstance(idx, tuple):
        return ", ".join(one(v) for v in idx) if idx else "()"
    return one(idx)


# -- constructors of torch.nn layers -----------------------------------------------------------


def _bound_names(code: str) -> set[str]:
    """The names module-level statements of ``code`` bind (imports, classes, functions, assignments)."""
    names: set[str] = set()
    with _SOURCE_LOCK:  # ast.parse is not thread-safe (see _SOURCE_LOCK)
        tree = ast.parse(code)
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        elif isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(stmt.name)
        else:
            names.update(n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def _class_name(cls: type) -> str:
    """How the ejected file names a layer class: ``nn.GroupNorm``, ``nn.modules.batchnorm._NormBase``,
    or a class it defines itself."""
    if not cls.__module__.startswith("torch.nn"):
        return cls.__name__
    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    return f"nn.{cls.__module__.removeprefix('torch.nn.')}.{cls.__name__}"


def _torch_ctor(module: nn.Module, path: str) -> str:
    name = f"nn.{type(module).__name__}"
    floating = next((t.dtype for t in module.state_dict().values() if t.is_floating_point()), None)
    for compact in (True, False):
        expr = _signature_ctor(module, name, path, compact=compact)
        fresh = eval(expr, {"nn": nn, "torch": torch})  # our own generated text
        # the dtype is not a constructor argument: _precision_lines converts the weights
        if _same_layer(fresh if floating is None else fresh.to(floating), module):
            return expr
    raise LoweringError(
        f"{path}: cannot rebuild {type(module).__name__} from its attributes "
        f"(tried {_signature_ctor(module, name, path, compact=False)})"
    )


def _signature_ctor(module: nn.Module, name: str, path: str, compact: bool = True) -> str:
    """``Name(arg, key=value)`` from the ``__init__`` signature, reading each argument back from
    the attribute of the same name (``bias`` tensors become flags)."""
    try:
        sig = inspect.signature(type(module).__init__)
    except (TypeError, ValueError):
        return f"{name}()"
    positional, keywords = [], []
    for p in list(sig.parameters.values())[1:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in ("device", "dtype"):
            continue
        if p.name.startswith("_"):
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                raise LoweringError(
                    f"{path}: {type(module).__name__}.__init__ takes {p.name!r} but the module does not keep it "
                    "as an attribute of that name, so the ejected file cannot rebuild it"
                )
            continue
        value = getattr(module, p.name)
        if isinstance(value, torch.Tensor) or (value is None and p.name == "bias"):
            value = value is not None
        if compact and isinstance(value, tuple) and value and len(set(value)) == 1 and not isinstance(value[0], float):
            value = value[0]
        if p.default is not p.empty and _equal(value, p.default):
            continue
        text = repr(value)
        if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD:
            positional.append(text)
        else:
            keywords.append(f"{p.name}={text}")
    return f"{name}({', '.join([*positional, *keywords])})"


def _equal(a: Any, b: Any) -> bool:
    """Same type and equal (a default comparison never raises: arguments are plain values here)."""
    return type(a) is type(b) and bool(a == b)


def _same_layer(new: nn.Module, old: nn.Module) -> bool:
    if type(new) is not type(old) or repr(new) != repr(old):
        return False
    a, b = new.state_dict(), old.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


# -- shape comments ----------------------------------------------------------------------------


def _shape_comments(g: UNetGraph, gm: fx.GraphModule) -> dict[str, str]:
    """fx node name → ``(B, 64, H/2, W/2)`` for every graph node, from the checker at two sizes."""
    try:
        rules = valid_sizes(g)
    except ShapeError:  # several spatial inputs: no single size to write shapes in
        return {}
    x = rules.input
    sizes = [r.sizes(3)[1:] for r in rules.axes]
    reports = []
    for k in range(2):
        spatial = [s[k] for s in sizes]
        reports.append(check(g, input_shapes(g, size=spatial)))
    axes = AXIS_NAMES[g[x].type.dims]
    padded = lowered_record(gm).pad == "auto"
    names = fx_node_names(gm)
    out = {}
    for node in g:
        for k, fx_name in enumerate(output_fx_names(g[node]) if len(g[node].outputs) > 1 else ()):
            a, b = reports[0][node].outputs[k], reports[1][node].outputs[k]
            dims = [
                _affine(Fraction(v - u, s[1] - s[0]), u, s[0], ax) for u, v, s, ax in zip(a[2:], b[2:], sizes, axes)
            ]
            out[fx_name] = "(" + ", ".join(["B", str(a[1]), *dims]) + ")"
        a, b = reports[0][node].output, reports[1][node].output
        if g[node].type.form != "dense":  # timesteps, labels (B,); a context (B, L, D)
            out[names[node]] = "(B,)" if len(a) == 1 else f"(B, L, {a[-1]})"
            continue
        dims = []
        for i, (u, v) in enumerate(zip(a[2:], b[2:])):
            n1, n2 = sizes[i][0], sizes[i][1]
            dims.append(_affine(Fraction(v - u, n2 - n1), u, n1, axes[i] + ("p" if padded else "")))
        out[names[node]] = "(" + ", ".join(["B", str(a[1]), *dims]) + ")"
    return out


def _affine(slope: Fraction, value: int, at: int, symbol: str) -> str:
    """``slope * symbol + c`` written as people write sizes: ``H/2 - 4``, ``2H``, ``H``."""
    c = value - slope * at
    if slope == 0:
        return str(value)
    if slope == 1:
        term = symbol
    elif slope.denominator == 1:
        term = f"{slope.numerator}{symbol}"
    elif slope.numerator == 1:
        term = f"{symbol}/{slope.denominator}"
    else:
        term = f"{slope.numerator}{symbol}/{slope.denominator}"
    if c == 0:
        return term
    return f"{term} {'+' if c > 0 else '-'} {abs(c)}"


# -- verification ------------------------------------------------------------------------------


def compute_dtype(gm: nn.Module) -> torch.dtype | None:
    """The dtype a module lowered with ``lower(dtype=...)`` computes in: the one floating dtype of
    all its parameters and buffers, when not the default; ``None`` otherwise (a default-dtype
    module, or ``optimize(dtype=...)``'s mixed precision, whose norms and inputs keep float32)."""
    dtypes = {t.dtype for t in (*gm.parameters(), *gm.buffers()) if t.is_floating_point()}
    return next(iter(dtypes)) if len(dtypes) == 1 and dtypes != {torch.get_default_dtype()} else None


def _verify(source: str, class_name: str, g: UNetGraph, gm: fx.GraphModule) -> None:
    from .dynamic import trace_inputs

    namespace: dict[str, Any] = {"__name__": "ejected_unet"}
    try:
        exec(compile(source, f"<ejected {class_name}>", "exec"), namespace)  # our own generated source
        ejected = namespace[class_name]()
        ejected.load_state_dict(gm.state_dict())
    except Exception as e:
        raise LoweringError(f"the ejected {class_name} does not build: {type(e).__name__}: {e}") from e
    ejected.train(gm.training)
    dtype = compute_dtype(gm)
    inputs = tuple(x.to(dtype) if dtype is not None and x.is_floating_point() else x for x in trace_inputs(g, batch=1))
    with torch.no_grad():
        try:
            want = gm(*inputs)
        except Exception as e:
            raise LoweringError(f"the module to eject fails on a valid input: {type(e).__name__}: {e}") from e
        try:
            got = ejected(*inputs)
        except Exception as e:
            raise LoweringError(f"the ejected {class_name} fails on a valid input: {type(e).__name__}: {e}") from e
    pairs = zip(want.values(), got.values()) if isinstance(want, dict) else [(want, got)]
    if not all(torch.equal(a, b) for a, b in pairs):
        raise LoweringError(f"the ejected {class_name} computes different outputs than the GraphModule")
