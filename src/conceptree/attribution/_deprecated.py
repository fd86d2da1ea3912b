"""Private: the node-level methods :class:`~conceptree.attribution.engine.CRPEngine` had before its
facade (graph nodes in, graph nodes out), kept one release as deprecated wrappers of the private
:mod:`~conceptree.attribution._forward` and :mod:`~conceptree.attribution._propagate`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch.fx as fx
from torch import Tensor

from ._forward import ForwardPass, FxGraph
from ._propagate import propagate, propagate_absorbing


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"CRPEngine.{old} goes in the next release; {new}", DeprecationWarning, stacklevel=3)


class NodeLevelAPI:
    """The deprecated node-level methods (each warns with a DeprecationWarning)."""

    _graph: FxGraph

    def layer_node(self, name: str) -> fx.Node:
        """Deprecated: graph nodes are private (:mod:`conceptree.attribution._forward`)."""
        _deprecated("layer_node", "graph nodes are private; pass layer names to the public methods")
        return self._graph.node(name)

    def node_of_layer(self, layer: str) -> fx.Node:
        """Deprecated: graph nodes are private (:mod:`conceptree.attribution._forward`)."""
        _deprecated("node_of_layer", "graph nodes are private; pass layer names to the public methods")
        return self._graph.node(layer)

    def node_layout(self, forward: ForwardPass, node: fx.Node, rel: Tensor) -> Tensor:
        """Deprecated: relevance of a node in its own layout (:meth:`FxGraph.node_layout`)."""
        _deprecated("node_layout", "graph nodes are private")
        return self._graph.node_layout(forward, node, rel)

    def fine_nodes(self, forward: ForwardPass, size: tuple[int, int]) -> frozenset[fx.Node]:
        """Deprecated: the nodes where ``pool_below`` stops (:meth:`FxGraph.fine_nodes`)."""
        _deprecated("fine_nodes", "use iter_conditional_maps(pool_below=...)")
        return self._graph.fine_nodes(forward, size)

    def propagate(self, forward: ForwardPass, start: Mapping[fx.Node, Tensor], masks: Mapping[fx.Node, Tensor] | None = None,
                  record: Sequence[fx.Node] = (), stop: frozenset[fx.Node] = frozenset()) -> tuple[Tensor, dict[fx.Node, Tensor]]:
        """Deprecated: node-level propagation (:func:`conceptree.attribution._propagate.propagate`)."""
        _deprecated("propagate", "use group_maps, conditional_heatmaps or iter_conditional_maps")
        return propagate(self._graph, forward, start, masks, record, stop)

    def propagate_absorbing(self, forward: ForwardPass, start: Mapping[fx.Node, Tensor],
                            absorb: Mapping[fx.Node, Tensor]) -> tuple[Tensor, dict[fx.Node, Tensor]]:
        """Deprecated: node-level first passage (:func:`conceptree.attribution._propagate.propagate_absorbing`)."""
        _deprecated("propagate_absorbing", "use absorbing_flows(attribution, groups)")
        return propagate_absorbing(self._graph, forward, start, absorb)
