"""The exception hierarchy. Every error a user can reach is a :class:`UNetGraphError`.

Errors carry the place they are about (``node``, ``edge``) as attributes as well as in
the message, so tools can point at the offending part of a graph.
"""

from __future__ import annotations

__all__ = [
    "UNetGraphError",
    "SpecError",
    "RegistryError",
    "GraphError",
    "NodeNotFoundError",
    "ShapeError",
    "LoweringError",
    "ArtifactError",
    "RenderError",
    "FileError",
    "SavedModelError",
]


class UNetGraphError(Exception):
    """Base class of every error raised by unetgraph.

    Args:
        message: what is wrong, with the numbers involved.
        node: the graph node the error is about, if any.
        edge: the edge (``"src→dst"``) the error is about, if any.
    """

    def __init__(self, message: str, *, node: str | None = None, edge: str | None = None) -> None:
        self.message = message
        self.node = node
        self.edge = edge
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.message

    def at(self, node: str, what: str = "") -> UNetGraphError:
        """This error placed at ``node``: the message gains a ``"node (what): "`` prefix.

        Used while re-raising an error from a block spec, which does not know its node.
        An error already placed is returned unchanged.
        """
        if self.node is not None:
            return self
        prefix = f"{node} ({what})" if what else node
        return type(self)(f"{prefix}: {self.message}", node=node, edge=self.edge)


class SpecError(UNetGraphError, ValueError):
    """A block spec or builder argument is invalid (bad field value, inconsistent options)."""


class RegistryError(SpecError, KeyError):
    """A block name is unknown, or a registration would shadow an existing block."""

    def __str__(self) -> str:  # KeyError.__str__ would repr() the message
        return UNetGraphError.__str__(self)


class GraphError(UNetGraphError):
    """The graph breaks a structural invariant (cycle, dangling node, unfed merge, name clash)."""


class NodeNotFoundError(GraphError, KeyError):
    """No node of that name; the message suggests close names."""

    def __str__(self) -> str:
        return UNetGraphError.__str__(self)


class ShapeError(UNetGraphError):
    """Tensor types or sizes do not fit: channels, spatial sizes, input rank."""


class LoweringError(UNetGraphError):
    """The graph cannot be lowered to a ``torch.fx.GraphModule`` as asked."""


class ArtifactError(LoweringError):
    """An exported artifact (``.pt2``, ``.onnx``) cannot be loaded safely: it is malformed,
    corrupted, over a size limit, or holds something loading it would execute. The message names
    the file and the entry; ``path`` and ``entry`` hold them too (``entry`` is ``None`` when the
    whole file is at fault)."""

    def __init__(self, message: str, *, path: str | None = None, entry: str | None = None) -> None:
        self.path = path
        self.entry = entry
        super().__init__(message)

    def at(self, node: str, what: str = "") -> UNetGraphError:
        return self  # about a file, not a node


class RenderError(UNetGraphError):
    """A drawing cannot be made as asked: a bad option, or graphviz (the ``dot`` program or the
    ``graphviz`` Python package) is missing; the message says how to install what is missing."""


class FileError(UNetGraphError, OSError):
    """A file cannot be read or written: missing, a directory, not readable or writable, the disk
    full. The message names the file and what the system said; the ``OSError`` it wraps is the
    ``__cause__``. Also an ``OSError``, so ``except OSError`` keeps working."""


class SavedModelError(UNetGraphError):
    """A saved model folder (:func:`unetgraph.saved.load_model`) cannot be written or read as asked: a
    missing, damaged or tampered file (the message starts with the file's name), or weights that do
    not fit the graph (``.node`` names the graph node the tensor belongs to)."""
