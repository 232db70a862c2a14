"""The input contract of a lowered U-Net, in plain torch: what every input must be, and how
``pad="auto"`` pads. One implementation, used three ways:

* the lowered module calls :mod:`unetgraph.runtime`'s subclasses, which raise unetgraph's
  typed errors (:class:`~unetgraph.errors.ShapeError`, :class:`~unetgraph.errors.LoweringError`);
* the checker (shape patterns, the valid-size arithmetic of ``valid_sizes()``) and loaded
  artifacts use the same functions, so their words are the same;
* :func:`unetgraph.eject` copies this file's definitions verbatim (``inspect.getsource``) into
  the ejected file, where they raise ``ValueError``.

So this module imports nothing but torch, and every definition in it stands alone: no module
constants, no unetgraph import. Sizes along one axis follow an *axis tuple*
``(axis, minimum, step, offsets, margin)`` (the fields of :class:`unetgraph.check.AxisRule`):
valid sizes are ``minimum + step*k + o`` for ``k >= 0`` and ``o`` in ``offsets``; the output is
``2*margin`` smaller than the input.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "axis_word",
    "input_rank",
    "channel_axis",
    "input_pattern",
    "shape_problem",
    "axis_contains",
    "axis_sizes",
    "next_valid",
    "describe_axis",
    "axis_problem",
    "size_problem",
    "padding",
    "InputGuard",
    "PadToValid",
    "CropToInput",
    "GUARD_PARTS",
    "PAD_PARTS",
]


def axis_word(axis: str) -> str:
    """The word for an axis letter in messages: ``"H"`` → ``"height"``."""
    return {"L": "length", "D": "depth", "H": "height", "W": "width"}.get(axis, axis)


# -- what an input looks like ------------------------------------------------------------------


def input_rank(form: str, dims: int) -> int:
    """Tensor dimensions of an input, batch included: ``(N, C, *spatial)`` for ``"dense"``,
    ``(N,)`` for ``"scalar"`` (a timestep) and ``"index"`` (class labels), ``(N, L, D)`` for
    ``"sequence"`` (a context)."""
    return 1 if form in ("scalar", "index") else 3 if form == "sequence" else 2 + dims


def channel_axis(form: str) -> int | None:
    """The axis that holds an input's channels (a sequence's feature size), if any."""
    return 1 if form == "dense" else 2 if form == "sequence" else None


def input_pattern(form: str, channels: int, axes: tuple[str, ...]) -> str:
    """The expected shape in words: ``(N, 3, H, W)``, ``(N,)``, ``(N, L, 512)``."""
    if form in ("scalar", "index"):
        return "(N,)" + (" integer class labels" if form == "index" else "")
    if form == "sequence":
        return f"(N, L, {channels})"
    return f"(N, {channels}{''.join(', ' + a for a in axes)})"


def shape_problem(name: str, shape: tuple, form: str, channels: int, axes: tuple[str, ...]) -> str | None:
    """Why an input of ``shape`` does not fit its form (wrong rank or channels), or ``None``."""
    rank = input_rank(form, len(axes))
    if len(shape) != rank:
        pattern = input_pattern(form, channels, axes)
        return f"input {name} expects rank {rank} {pattern}, got rank {len(shape)}: shape {tuple(shape)}"
    where = channel_axis(form)
    if where is not None and shape[where] != channels:
        what = "channels" if form == "dense" else "features"
        pattern = input_pattern(form, channels, axes)
        return f"input {name} expects {channels} {what} {pattern}, got {shape[where]} in shape {tuple(shape)}"
    return None


# -- valid sizes along one axis: minimum + step*k + o ------------------------------------------


def axis_contains(n: int, minimum: int, step: int, offsets: tuple[int, ...]) -> bool:
    """Whether ``n`` is a valid size."""
    return axis_problem("", n, minimum, step, offsets) is None


def axis_sizes(minimum: int, step: int, offsets: tuple[int, ...], count: int) -> list[int]:
    """The first ``count`` valid sizes."""
    out: list[int] = []
    k = 0
    while len(out) < count:
        out += [minimum + k * step + o for o in offsets]
        k += 1
    return out[:count]


def next_valid(n: int, minimum: int, step: int, offsets: tuple[int, ...]) -> int:
    """The smallest valid size ``>= n``."""
    if n <= minimum:
        return minimum
    base = n - (n - minimum) % step
    return min(c for c in [base + o for o in offsets] + [base + o + step for o in offsets] if c >= n)


def describe_axis(minimum: int, step: int, offsets: tuple[int, ...], plural: bool = False) -> str:
    """The valid sizes in words: ``"a multiple of 16, at least 16"``, ``"16k + 12 with k ≥ 11 (188, …)"``."""
    if step == 1 and minimum == 1:
        return "any size"
    if offsets == (0,) and step == 1:
        return f"at least {minimum}"
    if offsets == (0,) and minimum % step == 0:
        return f"{'multiples' if plural else 'a multiple'} of {step}, at least {minimum}"
    shown = ", ".join(map(str, axis_sizes(minimum, step, offsets, 3)))
    if offsets == (0,):
        return f"{step}k + {minimum % step} with k ≥ {minimum // step} ({shown}, …)"
    return f"one of {shown}, … (every {step} from {minimum})"


def axis_problem(axis: str, n: int, minimum: int, step: int, offsets: tuple[int, ...]) -> str | None:
    """Why ``n`` is not a valid size along ``axis`` (``"input height 70 is not a multiple of 16"``), or ``None``."""
    if n >= minimum and (n - minimum) % step in offsets:  # the rule; everything below is words
        return None
    if n < minimum:
        return f"input {axis_word(axis)} {n} is below the minimum {minimum}"
    if offsets == (0,) and minimum % step == 0:
        return f"input {axis_word(axis)} {n} is not a multiple of {step}"
    return f"input {axis_word(axis)} {n} is not of the form {describe_axis(minimum, step, offsets)}"


def size_problem(name: str, sizes: tuple, axes: tuple, rule: str, hint: str = "") -> str | None:
    """Why an input of spatial ``sizes`` does not fit the axis tuples ``axes``, in the checker's
    words (``rule`` is the whole rule, e.g. ``"H and W must be multiples of 16, at least 16"``), or ``None``."""
    if len(sizes) != len(axes):
        return f"input {name} has {len(sizes)} spatial axes, expected {len(axes)}; {rule}{hint}"
    for n, (axis, minimum, step, offsets, _) in zip(sizes, axes):
        why = axis_problem(axis, n, minimum, step, offsets)
        if why is not None:
            return f"input {name} of spatial size {'×'.join(map(str, sizes))} does not fit: {why}; {rule}{hint}"
    return None


def padding(n: int, axis: tuple) -> tuple[int, int]:
    """``(left, right)`` padding that makes ``n`` valid along ``axis`` (an axis tuple) and keeps the
    output centred over the input; the ``margin`` a valid-convolution network consumes is padded too."""
    _, minimum, step, offsets, margin = axis
    padded = next_valid(n + 2 * margin, minimum, step, offsets)
    left = margin + (padded - 2 * margin - n) // 2
    return left, padded - n - left


def _call_module_node(module: nn.Module, *args: object) -> Any:
    """Under ``torch.fx`` tracing (an argument is a Proxy): record ``module`` as one ``call_module``
    node, so any fx tracer keeps it whole instead of tracing its Python checks."""
    proxy = next(a for a in args if isinstance(a, torch.fx.Proxy))
    tracer: Any = proxy.tracer  # an fx.Tracer: it knows where the module sits
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


# -- the modules -------------------------------------------------------------------------------


class InputGuard(nn.Module):
    """Check one input before any layer runs: refuse a missing input, a non-tensor, or a tensor
    of the wrong rank, channels, dtype, device, batch or spatial size, with the checker's words.

    Timesteps and class labels come as trainers pass them: a Python number, a 0-dim tensor or
    one value ``(1,)`` is broadcast to the batch of ``first`` (the model's first input), as
    diffusers' models accept them; a bool, a string, a complex number or another batch is refused.

    Args:
        name: the input's name.
        form: ``"dense"`` ``(N, channels, *spatial)``, ``"scalar"`` ``(N,)`` (a timestep),
            ``"index"`` ``(N,)`` integers (class labels) or ``"sequence"`` ``(N, L, channels)``.
        channels: channels (the feature size of a sequence).
        axes: spatial axis letters (``("H", "W")``) of a dense input.
        sizes: axis tuples ``(axis, minimum, step, offsets, margin)`` of the valid spatial
            sizes to enforce; empty: any size.
        rule: the valid sizes in words, quoted when a size is refused.
        hint: appended to a refused size's message.
        signature: the model's inputs, named when this one is missing.
        match: also refuse a tensor on another device than the module, or a dense or sequence
            input of another dtype (the buffer ``like``, not in the state_dict, follows
            ``module.to(...)``).
        classes: for class labels, the consuming embedding's number of classes: labels outside
            ``0 … classes-1`` are refused (checked eagerly, not while compiling or exporting);
            ``0``: not checked. Labels of another integer dtype are cast to int64.
    """

    like: torch.Tensor

    def __init__(
        self,
        name: str,
        form: str = "dense",
        channels: int = 1,
        axes: tuple = (),
        sizes: tuple = (),
        rule: str = "",
        hint: str = "",
        signature: tuple = (),
        match: bool = True,
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.name, self.form, self.channels, self.axes = name, form, channels, tuple(axes)
        self.sizes, self.rule, self.hint = tuple(sizes), rule, hint
        self.signature, self.match = tuple(signature) or (name,), match
        self.per_sample = form in ("scalar", "index")
        self.classes = classes
        self.register_buffer("like", torch.empty(0), persistent=False)

    def refuse(self, message: str) -> NoReturn:
        """Raise ``ValueError(message)``; a subclass may raise its own error type."""
        raise ValueError(message)

    def expect(self) -> str:
        """What this input must be, in words: ``(N, 3, H, W)``."""
        return input_pattern(self.form, self.channels, self.axes)

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            if isinstance(x, torch.fx.Proxy) or isinstance(first, torch.fx.Proxy):
                return _call_module_node(self, x, first)
            x = self._from_python(x, first)
        if self.per_sample:
            x = self._per_sample(x, first)
        shape: tuple[int, ...] = x.shape
        if torch.jit.is_tracing():  # sizes are traced tensors: check the example's values
            shape = tuple(int(n) for n in shape)
        why = shape_problem(self.name, shape, self.form, self.channels, self.axes)
        if why is not None:
            self.refuse(why)
        if first is not None and not self.per_sample and shape[0] != first.shape[0]:
            self.refuse(f"input {self.name} has batch {shape[0]} but {self.signature[0]} has batch {first.shape[0]}")
        if self.match:
            self._match(x)
        if self.sizes:
            if torch.compiler.is_compiling() or torch.compiler.is_exporting():
                for n, (_, minimum, step, offsets, _) in zip(shape[2:], self.sizes):
                    torch._check(n >= minimum)
                    if offsets == (0,):
                        torch._check((n - minimum) % step == 0)
            else:
                why = size_problem(self.name, shape[2:], self.sizes, self.rule, self.hint)
                if why is not None:
                    self.refuse(why)
        return x

    def _from_python(self, x: object, first: torch.Tensor | None) -> torch.Tensor:
        """A Python number as a timestep or label for the whole batch; anything else refused in words."""
        if x is None:
            self.refuse(
                f"input {self.name} is missing: the model is called as forward({', '.join(self.signature)}) "
                f"and {self.name} must be a tensor {self.expect()}"
            )
        number = isinstance(x, int) or (isinstance(x, float) and self.form == "scalar")
        if not self.per_sample or isinstance(x, bool) or not number or not isinstance(x, (int, float)):
            what = type(x).__name__ if type(x).__module__ == "builtins" else f"{type(x).__module__}.{type(x).__name__}"
            if type(x).__module__ == "numpy" and getattr(x, "ndim", 0) > 0:
                what += f" of shape {tuple(getattr(x, 'shape', ()))}: pass torch.from_numpy({self.name})"
            elif isinstance(x, (list, tuple)) and all(isinstance(v, (int, float)) for v in x):
                what += f": pass torch.tensor({self.name})"
            else:
                what += f" ({x!r:.40})"
            one = " (or one number for the whole batch)" if self.per_sample else ""
            self.refuse(f"input {self.name} must be a torch.Tensor {self.expect()}{one}, got a {what}")
        if isinstance(x, int) and not -(2**63) <= x < 2**63:
            self.refuse(f"input {self.name} is {x:.3g}, outside the int64 range a timestep or label tensor holds")
        batch = 1 if first is None or first.dim() == 0 else first.shape[0]
        device = self.like.device if first is None else first.device
        dtype = torch.int64 if isinstance(x, int) else torch.get_default_dtype()
        return torch.full((batch,), x, dtype=dtype, device=device)

    def _per_sample(self, x: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
        """A timestep or label tensor: broadcast one value to the batch; refuse other batches and dtypes."""
        if x.dtype == torch.bool or x.is_complex() or (self.form == "index" and x.is_floating_point()):
            self.refuse(f"input {self.name} expects {self.expect()}, got {x.dtype}")
        if self.form == "index":
            if x.dtype not in (torch.int64, torch.int32):
                x = x.long()  # embeddings take int64 or int32 indices only
            if self.classes and x.numel() and not x.is_meta and not self._tracing():
                low, high = int(x.min()), int(x.max())
                if low < 0 or high >= self.classes:
                    self.refuse(
                        f"input {self.name} expects class labels 0 to {self.classes - 1} ({self.classes} classes), "
                        f"got {low if low < 0 else high}"
                    )
        if x.dim() == 0:
            x = x.reshape(1)
        if first is not None and x.dim() == 1 and first.dim() > 0:
            batch = first.shape[0]
            if x.shape[0] != batch:
                if x.shape[0] != 1:
                    self.refuse(
                        f"input {self.name} has {x.shape[0]} values for a batch of {batch} "
                        f"({self.signature[0]}): pass one value for the whole batch, or {batch}"
                    )
                x = x.expand(batch).contiguous()
        return x

    @staticmethod
    def _tracing() -> bool:
        """Whether a tracer or compiler runs this (values are not known then)."""
        return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()

    def _match(self, x: torch.Tensor) -> None:
        """The device and dtype torch would otherwise refuse deep inside the first layer."""
        like: torch.Tensor = self._buffers["like"]  # type: ignore[assignment]  # self.like, without __getattr__
        if x.device != like.device:
            self.refuse(
                f"input {self.name} is on {x.device} but the model is on {like.device}: "
                f"move the input ({self.name}.to({str(like.device)!r})) or the model (model.to({str(x.device)!r}))"
            )
        if not self.per_sample and x.dtype != like.dtype:
            self.refuse(
                f"input {self.name} is {x.dtype} but the model computes in {like.dtype}: "
                f"pass {self.name}.to({like.dtype})"
            )

    def extra_repr(self) -> str:
        return f"{self.name}: {self.expect()}{'; ' + self.rule if self.rule else ''}"


class PadToValid(nn.Module):
    """Pad each spatial axis up to the next valid size, centred (``pad="auto"``).

    Args:
        sizes: axis tuples ``(axis, minimum, step, offsets, margin)``.
        mode: ``F.pad``'s mode: ``"constant"`` (zeros), ``"reflect"``, ``"replicate"`` or ``"circular"``;
            an input too small for the mode (reflect pads less than the size) is refused in words.
        name: the input's name, in those words (none: just "input").
    """

    def __init__(self, sizes: tuple, mode: str = "constant", name: str = "") -> None:
        super().__init__()
        self.sizes, self.mode, self.name = tuple(sizes), mode, name

    def refuse(self, message: str) -> NoReturn:
        """Raise ``ValueError(message)``; a subclass may raise its own error type."""
        raise ValueError(message)

    def refuse_input(self, message: str) -> NoReturn:
        """Refuse an input this padding cannot take (too small for the mode): :meth:`refuse` here;
        a subclass may raise its error type for bad inputs."""
        self.refuse(message)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            return _call_module_node(self, x)
        if torch.jit.is_tracing():
            self.refuse(
                "torch.jit.trace cannot capture pad='auto': the padding depends on the input size, so a trace "
                "would pad every size like the example; script or export the module lowered with pad=None, "
                "or trace one module per size"
            )
        pads: list[int] = []
        for n, axis in zip(reversed(x.shape[2:]), reversed(self.sizes)):  # F.pad wants the last axis first
            left, right = padding(n, axis)
            if self.mode != "constant" and not self._pads(n, left, right):
                need = next(m for m in range(1, 1 << 20) if self._pads(m, *padding(m, axis)))
                word = axis_word(axis[0])
                self.refuse_input(
                    f"pad='auto' with mode {self.mode!r} cannot pad input {self.name + ' ' * bool(self.name)}{word} "
                    f"{n} (by {left} and {right}): {self.mode} padding needs an input {word} of at least {need}; "
                    "pass a larger input, or lower with pad_mode='constant'"
                )
            pads += [left, right]
        return F.pad(x, pads, mode=self.mode)

    def _pads(self, n: int, left: int, right: int) -> bool:
        """Whether ``F.pad`` in this mode can pad an axis of size ``n`` by ``left`` and ``right``."""
        if self.mode == "reflect":
            return n > max(left, right)
        if self.mode == "circular":
            return n >= max(left, right, 1)
        return n >= 1  # replicate

    def extra_repr(self) -> str:
        return f"{self.sizes}, mode={self.mode!r}"


class CropToInput(nn.Module):
    """Crop the output back to the input's spatial size, undoing :class:`PadToValid`.

    Args:
        sizes: the axis tuples its :class:`PadToValid` padded to.
    """

    def __init__(self, sizes: tuple) -> None:
        super().__init__()
        self.sizes = tuple(sizes)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if isinstance(y, torch.fx.Proxy) or isinstance(x, torch.fx.Proxy):
            return _call_module_node(self, y, x)
        for dim, (n, axis) in enumerate(zip(x.shape[2:], self.sizes), start=2):
            left, _ = padding(n, axis)
            y = y.narrow(dim, left - axis[4], n)
        return y


#: what an ejected file needs for its input guards, and for ``pad="auto"``, in order
GUARD_PARTS = (
    axis_word,
    input_rank,
    channel_axis,
    input_pattern,
    shape_problem,
    axis_sizes,
    describe_axis,
    axis_problem,
    size_problem,
    _call_module_node,
    InputGuard,
)
PAD_PARTS = (axis_word, next_valid, padding, _call_module_node, PadToValid, CropToInput)
