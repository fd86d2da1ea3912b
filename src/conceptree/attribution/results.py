"""The engine's result types: one pass's relevances (:class:`Attribution`), neuron maps, map batches
and absorbed flows. Light on purpose (no fx, no rules): the concept and dictionary code and saved
results read them without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:  # the pass is an opaque handle here: results.py stays light (no fx, no rules)
    from ._forward import ForwardPass

__all__ = ["AbsorbedFlows", "Attribution", "BatchAttribution", "MapBatch", "NeuronMaps"]


@dataclass
class Attribution:
    """Result of one LRP pass from a target logit.

    Attributes
    ----------
    target : int
        Explained class index.
    logits : Tensor
        Model output, shape ``(num_classes,)``.
    input_relevance : Tensor
        Relevance at the input, shape ``(C, H, W)``.
    layer_relevance : dict[str, Tensor]
        Relevance at each selected layer's output, shape ``(channels, h, w)``; for a token layer
        (a transformer's) the patch tokens on the patch grid.
    forward : ForwardPass
        The prepared forward pass (reused by the conditional maps).
    token_relevance : dict[str, Tensor]
        For each token layer, the relevance on its tokens that have no place on the image (class,
        distillation and register tokens, which precede the patches), ``(channels, prefix)``.
        Counted in ``r_p`` (:meth:`channel_relevance`), not drawn.
    """

    target: int
    logits: Tensor
    input_relevance: Tensor
    layer_relevance: dict[str, Tensor]
    forward: ForwardPass = field(repr=False)
    token_relevance: dict[str, Tensor] = field(default_factory=dict)

    @property
    def heatmap(self) -> Tensor:
        """Class heatmap ``(H, W)``: input relevance summed over colour channels."""
        return self.input_relevance.sum(0)

    def channel_relevance(self, layer: str) -> Tensor:
        """``r_p`` of every channel of ``layer``, shape ``(channels,)`` (a token layer's class and
        register tokens included)."""
        total = self.layer_relevance[layer].float().flatten(1).sum(1)
        prefix = self.token_relevance.get(layer)
        return total if prefix is None else total + prefix.float().sum(1)


@dataclass
class BatchAttribution:
    """Result of :meth:`CRPEngine.attribute_batch`: one LRP pass per image of a batch.

    Attributes
    ----------
    targets : list[int]
        Explained class of each image, length ``N``.
    logits : Tensor
        Model outputs, shape ``(N, num_classes)``.
    channel_relevance : Tensor
        ``r_p`` of every selected channel, float64, shape ``(N, neurons)``; columns follow
        :meth:`CRPEngine.neuron_columns`.
    layer_relevance : dict[str, Tensor]
        Relevance maps ``(N, channels, h, w)`` per layer (empty unless kept).
    token_relevance : dict[str, Tensor]
        Relevance on each token layer's class and register tokens, ``(N, channels, prefix)``
        (empty unless kept; :attr:`Attribution.token_relevance`).
    """

    targets: list[int]
    logits: Tensor
    channel_relevance: Tensor
    layer_relevance: dict[str, Tensor] = field(default_factory=dict)
    token_relevance: dict[str, Tensor] = field(default_factory=dict)

    def image(self, i: int) -> dict[str, Tensor]:
        """The layer relevance maps of image ``i``, ``layer -> (channels, h, w)``."""
        return {name: rel[i] for name, rel in self.layer_relevance.items()}


@dataclass
class MapBatch:
    """A batch of conditional maps of channels of one layer."""

    layer: str
    channels: Tensor  # (B,) int64
    maps: Tensor  # (B, H, W) input relevance through each channel, summed over colour channels


@dataclass
class NeuronMaps:
    """Relevance and conditional maps of many neurons of one image.

    Attributes
    ----------
    layers : list[str]
        Layer names; ``layer_index`` refers to this list.
    layer_index, channel : np.ndarray
        Neuron ``i`` is channel ``channel[i]`` of layer ``layers[layer_index[i]]``; shape ``(n,)``.
    relevance : np.ndarray
        ``r_p`` per neuron, float64, shape ``(n,)``.
    maps : np.ndarray
        Conditional maps, shape ``(n, h, w)`` (input resolution unless downsampled).
    map_sums : np.ndarray
        ``sum(y_p)`` at full resolution before any downsampling, float64, shape ``(n,)``.
    """

    layers: list[str]
    layer_index: np.ndarray
    channel: np.ndarray
    relevance: np.ndarray
    maps: np.ndarray
    map_sums: np.ndarray

    def __len__(self) -> int:
        return int(self.channel.shape[0])

    def names(self) -> list[str]:
        """``"layer:channel"`` labels of the neurons."""
        return [f"{self.layers[li]}:{c}" for li, c in zip(self.layer_index, self.channel)]


@dataclass
class AbsorbedFlows:
    """Result of :meth:`CRPEngine.absorbing_flows`: first-passage relevance between ``k`` channel groups.

    Attributes
    ----------
    absorbed : Tensor
        float64 ``(k, k)``; ``absorbed[s, d]`` = relevance started at the members of group ``s``
        that first arrived at a member of group ``d`` below (``d == s``: at another member of
        ``s`` itself).
    to_input : Tensor
        float64 ``(k,)``: relevance of each group that reached the input through no member.
    start : Tensor
        float64 ``(k,)``: each group's start relevance ``sum_{p in group} r_p``.
    input_maps : Tensor
        ``(k, H, W)`` in the compute type: the part of ``to_input`` at each pixel, summed over colour channels.
    """

    absorbed: Tensor
    to_input: Tensor
    start: Tensor
    input_maps: Tensor
