"""Models of other libraries in and out: their configuration becomes a graph, their weights its module's.

Each peer has its own module, imported here; the peer library itself is imported only when a
function is called (``pip install 'unetgraph[diffusers]'``)."""

from .diffusers import diffusers_keys, from_diffusers, graph_from_diffusers_config, to_diffusers

__all__ = ["from_diffusers", "to_diffusers", "graph_from_diffusers_config", "diffusers_keys"]
