"""The CRP engine: relevance of every conv channel and its conditional attribution map.

One forward pass stores, per graph node, the rule quantities that do not depend on the
upper relevance (see :mod:`conceptree.attribution.rules`). One backward pass from the
target logit then gives the relevance at every layer. A conditional map ``y_p`` starts at
``p``'s layer with the relevance masked to channel ``p`` and is propagated to the input;
since every rule is linear in the relevance, a batch of channels is propagated at once and
nothing above the layer is recomputed. Relevance that reaches the input through a skip
connection around the layer never enters the batch, so it is excluded by construction
(zennit-crp's ``exclude_parallel=True``).

:class:`CRPEngine` is a facade: its methods take layer names, channel indices and channel
groups and return tensors. Running the torch.fx graph lives in the private
:mod:`conceptree.attribution._forward`, the propagation over it in
:mod:`conceptree.attribution._propagate`.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ._deprecated import NodeLevelAPI
from ._forward import (
    ForwardPass,
    FxGraph,
    InitRelevance,
    check_input,
    default_example_input,
    init_relevance,
    is_channels_last,
    resolve_target,
    token_grid,
)
from ._propagate import (
    absorbed_relevance,
    absorbing_nodes,
    channel_indices,
    first_passage,
    pool_stopped,
    propagate,
)
from .composites import Composite
from .results import AbsorbedFlows, Attribution, BatchAttribution, MapBatch, NeuronMaps
from .tracing import LayerInfo, ZennitCompat, canonize, guards, list_layers, select_layers, token_layers

__all__ = ["DEFAULT_BATCH_SIZE", "AbsorbedFlows", "Attribution", "BatchAttribution", "CRPEngine", "ForwardPass",
           "InitRelevance", "MapBatch", "NeuronMaps"]

#: Conditional maps propagated together (one place for the default).
DEFAULT_BATCH_SIZE = 32


class CRPEngine(NodeLevelAPI):
    """Batched Concept Relevance Propagation for a convolutional classifier.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (taking ``(1, C, H, W)`` and returning ``(1, num_classes)``). It is
        deep-copied, switched to eval mode and canonized; the original is left untouched.
    composite : Composite, optional
        LRP rules; default ``Composite()`` (epsilon-plus-flat, biases ignored).
    layers : list[str], optional
        Names or fnmatch globs of the layers whose channels are neurons (default: every conv layer and, in
        a transformer, each block's MLP hidden layer). A transformer's per-token dense layers and the
        residual stream after each block (the block's name, e.g. ``"blocks.*"``) can be named too
        (:attr:`all_layers` lists them with their kind).
    exclude_layers : list[str], optional
        Globs removed from the selection (e.g. ``["*downsample*"]``).
    zennit_compat : {None, "zennit", "zennit-0.4"}
        Reproduce zennit's canonizers exactly, including the ``1/sqrt(1+eps)`` its merged
        BatchNorms still apply (``"zennit"``: zennit >= 0.5; ``"zennit-0.4"``: the older
        release that produced zennit-crp's golden test data). Default None: exact merge.
    dtype : torch.dtype, optional
        Compute type of the forward pass and every rule (default: the model's, float32).
        ``torch.bfloat16`` (for maps that only feed a clustering) uses AMX/AVX-512-BF16 on
        CPUs that have it: measured 2.9x faster on ResNet-34 but 2x slower on depthwise-
        separable networks, with a median max error of 2-4 % of each map's maximum
        (``benchmarks/engine_settings.py``, ``docs/speed.md``). BatchNorm is merged in
        float32 before the cast.
    example_input : Tensor, optional
        ``(1, C, H, W)`` input for models whose ``forward`` branches on the input size (timm's
        VGG): the trace follows it where symbolic tracing fails, and inputs that would take
        another branch are refused (:mod:`conceptree.attribution.tracing`). Default: zeros of the
        model's ``pretrained_cfg["input_size"]`` (timm) or ``(1, C, 224, 224)``.
    reparameterize : bool
        Fuse re-parameterisable blocks (RepVGG, MobileOne, FastViT, RepViT) into the single
        convolutions they are at inference, checked on a random input (default True; see
        :func:`~conceptree.attribution.tracing.canonize`). False explains the training-time branches.

    Examples
    --------
    >>> engine = CRPEngine(torchvision.models.resnet18().eval())
    >>> attribution = engine.attribute(x)            # one pass: r_p of every channel
    >>> neurons = engine.neuron_maps(attribution)    # y_p of every channel
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Composite | None = None,
        layers: Sequence[str] | None = None,
        exclude_layers: Sequence[str] | None = None,
        zennit_compat: str | None = None,
        dtype: torch.dtype | None = None,
        example_input: Tensor | None = None,
        reparameterize: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            warnings.warn(
                "the model is in training mode; conceptree explains its eval-mode copy "
                "(BatchNorm running statistics, no dropout)",
                stacklevel=2,
            )
        self.composite = composite or Composite()
        example = default_example_input(model) if example_input is None else self._check_example(example_input, model)
        graph_module = canonize(model, cast(ZennitCompat | None, zennit_compat), example, reparameterize)
        branch_guards = guards(graph_module)
        if dtype is not None:
            if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
                raise InputError(f"dtype must be a floating torch.dtype, got {dtype!r}")
            graph_module.to(dtype)
        for module in graph_module.modules():
            if getattr(module, "inplace", False):
                cast(Any, module).inplace = False
        tokens, streams = token_layers(graph_module, example)
        self.all_layers: list[LayerInfo] = list_layers(graph_module, ("conv",), tokens, streams)
        self.layers: list[LayerInfo] = select_layers(
            self.all_layers, list(layers) if layers else None, list(exclude_layers or [])
        )
        pointwise = {layer.name for layer in self.all_layers if layer.kind == "pointwise"}
        self._graph = FxGraph(graph_module, composite=self.composite, pointwise=pointwise, guards=branch_guards,
                              example_shape=tuple(example.shape))
        self._graph.by_layer.update({name: node for name, (node, _) in streams.items()})  # residual streams by name
        params = list(graph_module.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.dtype = params[0].dtype if params else torch.float32
        self._layout: tuple[weakref.ref, ForwardPass] | None = None  # (a pass, its channels-last copy)

    @property
    def graph_module(self) -> fx.GraphModule:
        """The canonized, traced copy of the model that the engine runs."""
        return self._graph.module

    @property
    def names(self) -> list[str]:
        """Names of the selected layers, in model order (``[layer.name for layer in self.layers]``)."""
        return [layer.name for layer in self.layers]

    @staticmethod
    def _check_example(x: Tensor, model: nn.Module) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != 1 or not x.is_floating_point():
            raise InputError(f"example_input must be a float tensor of shape (1, C, H, W), got "
                             f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        param = next(iter(model.parameters()), None)
        return x.detach() if param is None else x.detach().to(device=param.device, dtype=param.dtype)

    # ------------------------------------------------------------------ layers
    def _node(self, layer: str) -> fx.Node:
        """The graph node of module ``layer`` (InputError "unknown layer ...; known: ..." if none)."""
        return self._graph.node(layer)

    def _selected(self, attribution: Attribution, layer: str) -> tuple[fx.Node, Tensor]:
        """``(node, relevance)`` of a selected ``layer`` on ``attribution``, channels-first: ``(C, h, w)``,
        or ``(C, N)`` for a token layer (its class and register tokens first, then the patch grid row-major)."""
        node = self._node(layer)
        rel = attribution.layer_relevance.get(layer)
        if rel is None:
            raise InputError(f"layer {layer!r} is not among the engine's selected layers ({len(self.layers)}: "
                             f"{', '.join(self.names[:5])}{', ...' if len(self.layers) > 5 else ''}); "
                             f"create the engine with layers=[..., {layer!r}] to get its channels")
        prefix = attribution.token_relevance.get(layer)
        if prefix is not None:
            rel = torch.cat([prefix.to(rel.dtype), rel.flatten(1)], 1)
        return node, rel

    def _channels_last(self, forward: ForwardPass) -> ForwardPass:
        """The channels-last copy of ``forward`` for batches of maps (the caller's pass is never
        changed). The copy of the latest pass is kept while that pass lives, so every batch of maps,
        concept maps and flows on one attribution converts its rules once, and at most one copy is held."""
        if self._layout is not None and self._layout[0]() is forward:
            return self._layout[1]
        copy = forward.channels_last()
        engine = weakref.ref(self)

        def release(ref: weakref.ref) -> None:  # the pass is gone: drop its copy
            owner = engine()
            if owner is not None and owner._layout is not None and owner._layout[0] is ref:
                owner._layout = None

        self._layout = (weakref.ref(forward, release), copy)
        return copy

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_layout": None}  # the cache is not pickled (weak references)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, x: Tensor, batch: bool = False) -> ForwardPass:
        """Run the model once and prepare every node's rule: a pass that :meth:`attribute` and
        :meth:`conditional_heatmaps` accept in place of the image (to explain several targets).

        Parameters
        ----------
        x : Tensor
            Preprocessed image, shape ``(1, C, H, W)`` or ``(C, H, W)``; with ``batch=True``
            ``(N, C, H, W)`` (:meth:`attribute_batch`).
        batch : bool
            Accept ``N > 1`` images. Such a pass serves one relevance row per image, not the
            per-image batches of conditional maps.

        Raises
        ------
        InputError
            A bad input, or the model fails on this input's size.
        ModelError
            The model's own code fails otherwise (the original is the ``__cause__``); out of
            memory propagates unchanged.
        """
        return self._graph.run(check_input(x, self._graph.input_channels, self.device, self.dtype, batch), batch)

    @torch.no_grad()
    def attribute(self, x: Tensor | ForwardPass, target: int | None = None, init: InitRelevance | Tensor = "logit") -> Attribution:
        """One LRP pass from the target logit: relevance at the input and at every layer.

        Parameters
        ----------
        x : Tensor or ForwardPass
            Preprocessed image ``(1, C, H, W)``, or a pass from :meth:`forward`.
        target : int, optional
            Class to explain (default: the predicted class).
        init : {"logit", "one"} or Tensor
            Initial relevance at the target logit: its value (zennit-crp's default), 1
            (zennit's ``Gradient`` with a one-hot output), or a given scalar.
        """
        forward = x if isinstance(x, ForwardPass) else self.forward(x)
        target = resolve_target(forward.logits, target)
        start = {self._graph.output_node(): init_relevance(forward.logits, [target], init)}
        record = [self._graph.by_layer[la.name] for la in self.layers]
        input_rel, recorded = propagate(self._graph, forward, start, record=record)
        maps, tokens = self._recorded_layers(forward, recorded, 1)
        return Attribution(target, forward.logits, input_rel[0], {name: rel[0] for name, rel in maps.items()}, forward,
                           {name: rel[0] for name, rel in tokens.items()})

    def _recorded_layers(self, forward: ForwardPass, recorded: Mapping[fx.Node, Tensor], n: int
                         ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each selected layer's recorded relevance, channels-first ``(n, C, h, w)`` (zeros
        ``(n, C, 1, 1)`` for a layer on no path to the logit); and of each token layer the
        relevance on its class and register tokens, ``(n, C, prefix)``, its patches being the maps."""
        out, tokens = {}, {}
        height, width = forward.input.shape[-2:]
        for layer in self.layers:
            node = self._graph.by_layer[layer.name]
            rel = recorded.get(node)
            if rel is None:
                rel = torch.zeros((n, layer.channels, 1, 1), dtype=self.dtype, device=self.device)
            elif is_channels_last(forward.rules.get(node)):
                rel = rel.permute(0, 3, 1, 2)  # pointwise layer: stored channels-first like a conv
            elif rel.ndim == 3:  # token layer (n, N, C): class/register tokens apart, patches on their grid
                prefix, h, w = token_grid(rel.shape[1], height, width)
                rel = rel.transpose(1, 2)
                tokens[layer.name] = rel[:, :, :prefix]
                rel = rel[:, :, prefix:].reshape(n, layer.channels, h, w)
            out[layer.name] = rel
        return out, tokens

    @torch.no_grad()
    def attribute_batch(
        self,
        x: Tensor,
        targets: Sequence[int | None] | None = None,
        init: InitRelevance | Tensor = "logit",
        keep_maps: bool = False,
    ) -> BatchAttribution:
        """One LRP pass for each of ``N`` images at once: every selected channel's ``r_p``.

        Every rule is linear in the relevance and acts per batch row, so a forward pass over
        ``N`` images and one relevance row per image give each image the relevance of
        :meth:`attribute` on that image alone, up to the float sums of batched kernels (tested:
        channel relevances to 1e-4 relative, each layer's maps to 1e-5 in L1; single cells under
        a near-zero z+ denominator differ by up to a few 1e-3 of the layer's maximum).

        Parameters
        ----------
        x : Tensor
            Preprocessed images, shape ``(N, C, H, W)``.
        targets : sequence of (int or None), optional
            Class of each image (None: its predicted class); default all predicted.
        init : {"logit", "one"} or Tensor
            Initial relevance (:meth:`attribute`).
        keep_maps : bool
            Also return each layer's relevance maps ``(N, channels, h, w)``.

        Returns
        -------
        BatchAttribution
            ``channel_relevance`` ``(N, neurons)`` in :meth:`neuron_columns` order, logits
            ``(N, classes)`` and the explained classes.
        """
        forward = self.forward(x, batch=True)
        logits = forward.logits
        n = logits.shape[0]
        if targets is None:
            targets = [None] * n
        if len(targets) != n:
            raise InputError(f"got {len(targets)} targets for {n} images; pass one per image (None: predicted)")
        resolved = [resolve_target(logits[i], t) for i, t in enumerate(targets)]
        start = {self._graph.output_node(): init_relevance(logits, resolved, init)}
        record = [self._graph.by_layer[la.name] for la in self.layers]
        _, recorded = propagate(self._graph, forward, start, record=record)
        maps, tokens = self._recorded_layers(forward, recorded, n)
        columns = torch.cat([rel.double().flatten(2).sum(2) + (tokens[name].double().sum(2) if name in tokens else 0)
                             for name, rel in maps.items()], 1)
        return BatchAttribution(resolved, logits, columns, maps if keep_maps else {}, tokens if keep_maps else {})

    def neuron_columns(self) -> list[tuple[str, int, int]]:
        """``(layer, first column, channels)`` of each selected layer in the neuron axis of
        :attr:`BatchAttribution.channel_relevance` (model order, channels in order)."""
        out, offset = [], 0
        for layer in self.layers:
            out.append((layer.name, offset, layer.channels))
            offset += layer.channels
        return out

    # ------------------------------------------------------------------ conditional maps
    def channel_plan(
        self, attribution: Attribution, batch_size: int, channels: Mapping[str, Sequence[int]] | None = None
    ) -> list[tuple[str, Tensor]]:
        """Batches ``(layer, channel indices)`` covering the requested neurons."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        plan: list[tuple[str, Tensor]] = []
        wanted = channels if channels is not None else {layer.name: range(layer.channels) for layer in self.layers}
        for name, chans in wanted.items():
            _, rel = self._selected(attribution, name)
            idx = channel_indices(name, chans, rel.shape[0])
            for chunk in torch.split(idx, batch_size):
                plan.append((name, chunk))
        return plan

    @torch.no_grad()
    def iter_conditional_maps(
        self,
        attribution: Attribution,
        batch_size: int = DEFAULT_BATCH_SIZE,
        channels: Mapping[str, Sequence[int]] | None = None,
        progress: bool = False,
        pool_below: tuple[int, int] | None = None,
    ) -> Iterator[MapBatch]:
        """Yield conditional maps ``y_p`` in batches, one layer per batch.

        Parameters
        ----------
        attribution : Attribution
            From :meth:`attribute` (not changed: the batches run on a channels-last copy of its
            pass, made once per attribution).
        batch_size : int
            Channels propagated together (default 32).
        channels : mapping layer -> channel indices, optional
            Subset of neurons (default: every channel of every selected layer).
        progress : bool
            Show a tqdm progress bar over batches.
        pool_below : (h, w), optional
            Approximate maps at this size: relevance that reaches a feature map finer than
            ``(h, w)`` is summed over its channels and average-pooled to ``(h, w)`` instead of
            being propagated through the high-resolution layers. Each map is scaled like an
            ``(h, w)`` average pooling of the input-level map, so its sum times ``H*W / (h*w)``
            is ``sum(y_p)`` (exact when the sizes divide); the shape within a cell of the finer
            map is lost. Default None: exact, ``(H, W)``.
        """
        plan = self.channel_plan(attribution, batch_size, channels)
        forward = self._channels_last(attribution.forward)
        if pool_below is not None:
            pool_below = (min(pool_below[0], forward.input.shape[-2]), min(pool_below[1], forward.input.shape[-1]))
        stop = self._graph.fine_nodes(forward, pool_below) if pool_below is not None else frozenset()
        iterator = plan
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(plan, desc="conditional maps", unit="batch")
        for layer, chunk in iterator:
            node, rel = self._selected(attribution, layer)
            rel = rel.unsqueeze(0)
            chunk_dev = chunk.to(self.device)
            rule = forward.rules[node]
            if hasattr(rule, "backward_channels"):
                start = dict(rule.backward_channels(rel, chunk_dev))
            else:
                masked = rel.new_zeros((chunk.numel(), *rel.shape[1:]))
                rows = torch.arange(chunk.numel(), device=self.device)
                masked[rows, chunk_dev] = rel[0, chunk_dev]
                start = {node: self._graph.node_layout(forward, node, masked)}
            input_rel, stopped = propagate(self._graph, forward, start, stop=stop)
            if pool_below is None:
                yield MapBatch(layer, chunk, input_rel.sum(1))
            else:
                yield MapBatch(layer, chunk, pool_stopped(forward, input_rel, stopped, pool_below))

    @torch.no_grad()
    def neuron_maps(
        self,
        attribution: Attribution,
        batch_size: int = DEFAULT_BATCH_SIZE,
        channels: Mapping[str, Sequence[int]] | None = None,
        map_size: tuple[int, int] | None = None,
        dtype: np.dtype | type = np.float32,
        progress: bool = False,
        pool_below_map_size: bool = False,
    ) -> NeuronMaps:
        """Collect the conditional maps of many neurons into one :class:`NeuronMaps`.

        Parameters
        ----------
        map_size : (h, w), optional
            Average-pool larger maps down to this size as they stream out (memory: ``n*h*w``).
        dtype : numpy dtype
            Storage type of the maps (e.g. ``np.float16`` halves memory).
        pool_below_map_size : bool
            Stop the propagation at feature maps finer than ``map_size`` and pool there
            (``pool_below`` of :meth:`iter_conditional_maps`): approximate shapes, sums exact
            when the sizes divide; ``map_sums`` are then the pooled maps' sums rescaled.
        """
        if pool_below_map_size and map_size is None:
            raise InputError("pool_below_map_size needs a map_size to pool to, e.g. (56, 56)")
        plan = self.channel_plan(attribution, batch_size, channels)
        total = sum(chunk.numel() for _, chunk in plan)
        height, width = attribution.forward.input.shape[-2:]
        out_h, out_w = (min(map_size[0], height), min(map_size[1], width)) if map_size else (height, width)
        maps = np.empty((total, out_h, out_w), dtype=dtype)
        sums = np.empty(total, dtype=np.float64)
        layer_names = self.names
        layer_index = np.empty(total, dtype=np.int32)
        channel = np.empty(total, dtype=np.int64)
        relevance = np.empty(total, dtype=np.float64)
        per_channel = {name: attribution.channel_relevance(name).double().cpu().numpy() for name in layer_names}
        cursor = 0
        pool_below = (out_h, out_w) if pool_below_map_size else None
        for batch in self.iter_conditional_maps(attribution, batch_size, channels, progress, pool_below):
            n = batch.channels.numel()
            area = height * width / (batch.maps.shape[-2] * batch.maps.shape[-1])
            sums[cursor : cursor + n] = batch.maps.double().sum((1, 2)).cpu().numpy() * area
            small = batch.maps
            if map_size is not None and tuple(small.shape[-2:]) != (out_h, out_w):
                small = F.adaptive_avg_pool2d(small.unsqueeze(1), (out_h, out_w)).squeeze(1)
            maps[cursor : cursor + n] = small.float().cpu().numpy().astype(dtype, copy=False)
            chans = batch.channels.cpu().numpy()
            layer_index[cursor : cursor + n] = layer_names.index(batch.layer)
            channel[cursor : cursor + n] = chans
            relevance[cursor : cursor + n] = per_channel[batch.layer][chans]
            cursor += n
        return NeuronMaps(layer_names, layer_index, channel, relevance, maps, sums)

    def _group_starts(self, attribution: Attribution, groups: Sequence[Mapping[str, Sequence[int]]],
                      dtype: torch.dtype) -> dict[fx.Node, Tensor]:
        """Start relevance of a chunk of groups, node -> channels-first ``(len(groups), C, h, w)``:
        row ``g`` holds ``r`` on the channels of ``groups[g]`` at each of its layers, zeros elsewhere."""
        start: dict[fx.Node, Tensor] = {}
        for row, group in enumerate(groups):
            for layer, chans in group.items():
                node, rel = self._selected(attribution, layer)
                rel = rel.to(dtype)
                idx = channel_indices(layer, chans, rel.shape[0]).to(rel.device)
                if node not in start:
                    start[node] = rel.new_zeros((len(groups), *rel.shape))
                start[node][row, idx] = rel[idx]
        return start

    @torch.no_grad()
    def group_maps(
        self,
        attribution: Attribution,
        groups: Sequence[Mapping[str, Sequence[int]]],
        batch_size: int = 8,
    ) -> Tensor:
        """Summed conditional maps of neuron groups, ``(len(groups), H, W)``.

        Row ``g`` equals the sum of ``y_p`` over the neurons ``p`` of ``groups[g]`` (a mapping
        layer -> channels, possibly over many layers): LRP is linear in the relevance it
        propagates, so each group's masked relevances are started at their layers at once and
        summed on the way down, in one batched pass per ``batch_size`` groups.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        forward = self._channels_last(attribution.forward)
        height, width = forward.input.shape[-2:]
        out = torch.zeros((len(groups), height, width), dtype=self.dtype, device=self.device)
        for first in range(0, len(groups), batch_size):
            chunk = groups[first : first + batch_size]
            start = self._group_starts(attribution, chunk, self.dtype)
            if start:
                start = {node: self._graph.node_layout(forward, node, rel) for node, rel in start.items()}
                input_rel, _ = propagate(self._graph, forward, start)
                out[first : first + len(chunk)] = input_rel.sum(1)
        return out

    @torch.no_grad()
    def absorbing_flows(
        self,
        attribution: Attribution,
        groups: Sequence[Mapping[str, Sequence[int]]],
        batch_size: int = 2,
        dtype: torch.dtype | None = None,
    ) -> AbsorbedFlows:
        """First-passage relevance between channel groups (concepts) of one attribution.

        Each group's members' relevance is started at their layers (as in :meth:`group_maps`) and
        propagated down; a unit of it is absorbed where it first *arrives* at a channel of any
        group below (a member's own start is never absorbed at its own layer), or reaches the
        input. A channel listed in several groups belongs to the last of them.
        :func:`conceptree.concepts.flows.concept_flows` turns the result into shares.

        Parameters
        ----------
        attribution : Attribution
            From :meth:`attribute` (not changed).
        groups : sequence of mappings layer -> channels
            The ``k`` groups (each possibly over many selected layers).
        batch_size : int
            Groups propagated together.
        dtype : torch.dtype, optional
            Compute type of the propagation (a cast copy of the pass); default: the attribution's.

        Returns
        -------
        AbsorbedFlows
            ``absorbed (k, k)``, ``to_input (k,)``, ``start (k,)`` (float64) and ``input_maps (k, H, W)``.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        forward = self._channels_last(attribution.forward)  # as for the concept maps: batched convolutions run faster
        forward = forward if dtype is None else forward.cast(dtype)  # a cast keeps the layout: no second copy
        k = len(groups)
        owner: dict[fx.Node, np.ndarray] = {}  # node -> group of each channel (-1: none)
        for g, group in enumerate(groups):
            for layer, channels in group.items():
                node, rel = self._selected(attribution, layer)
                if node not in owner:
                    owner[node] = np.full(rel.shape[0], -1, np.int64)
                owner[node][channel_indices(layer, channels, rel.shape[0]).numpy()] = g
        chunks = ((first, self._group_starts(attribution, groups[first : first + batch_size], forward.input.dtype))
                  for first in range(0, k, batch_size))
        return AbsorbedFlows(*first_passage(self._graph, forward, chunks, owner, k))

    @torch.no_grad()
    def absorbed_by_constants(
        self, attribution: Attribution, groups: Sequence[Mapping[str, Sequence[int]]] | None = None
    ) -> Tensor:
        """Relevance that ends on constants instead of the input: a transformer's class and register
        tokens (the constant pieces of the ``torch.cat`` that adds them) and its token LayerNorms' biases.

        With it the account closes: ``heatmap.sum() + absorbed = logit`` (and ``sum(y_g) + absorbed_g =
        sum_{p in g} r_p`` for a group's map) up to the rules' stabilisers; a CNN has no such constants
        under the default ``zero_bias=True`` (zeros).

        Parameters
        ----------
        attribution : Attribution
            From :meth:`attribute`.
        groups : sequence of mappings layer -> channels, optional
            Neuron groups (as :meth:`group_maps`); default: the target logit's relevance (``init="logit"``).

        Returns
        -------
        Tensor
            float64, ``(1,)`` for the logit or ``(len(groups),)``.
        """
        forward = attribution.forward
        if groups is None:
            starts = {self._graph.output_node(): init_relevance(forward.logits, [attribution.target], "logit")}
        else:
            if not groups:
                raise InputError("groups is empty; pass at least one mapping layer -> channels")
            starts = {node: self._graph.node_layout(forward, node, rel)
                      for node, rel in self._group_starts(attribution, groups, forward.input.dtype).items()}
        _, recorded = propagate(self._graph, forward, starts, record=absorbing_nodes(forward))
        return absorbed_relevance(forward, recorded, 1 if groups is None else len(groups))

    @torch.no_grad()
    def conditional_heatmaps(
        self,
        x: Tensor | ForwardPass,
        conditions: Sequence[Mapping[str, Sequence[int]]],
        target: int | None = None,
        init: InitRelevance | Tensor = "logit",
        record_layers: Sequence[str] = (),
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """General conditional attribution from the target logit (zennit-crp's conditions).

        Each condition maps layer names to the channels kept at that layer (an empty list
        keeps none); all conditions are propagated as one batch. Relevance through
        parallel branches is *not* excluded (zennit-crp's ``exclude_parallel=False``).

        Returns
        -------
        input_relevance : Tensor
            Shape ``(len(conditions), C, H, W)``.
        relevances : dict[str, Tensor]
            For each of ``record_layers``: relevance at its output, ``(len(conditions), ...)``.
        """
        forward = self._channels_last(x) if isinstance(x, ForwardPass) else self.forward(x).channels_last()
        target = resolve_target(forward.logits, target)
        n = len(conditions)
        if n == 0:
            raise InputError("conditions is empty; pass at least one condition dict")
        masks: dict[fx.Node, Tensor] = {}
        for row, condition in enumerate(conditions):
            for layer, chans in condition.items():
                node = self._node(layer)
                info = next((la for la in self.all_layers if la.name == layer), None)
                module = self.graph_module.get_submodule(str(node.target)) if node.op == "call_module" else None
                n_channels = info.channels if info is not None else getattr(
                    module, "out_channels", getattr(module, "out_features", None))
                if n_channels is None:
                    raise InputError(f"layer {layer!r} has no channels to condition on; use a conv or linear layer")
                if node not in masks:
                    masks[node] = torch.ones((n, n_channels), dtype=self.dtype, device=self.device)
                masks[node][row] = 0.0
                masks[node][row, channel_indices(layer, chans, n_channels)] = 1.0
        shaped = {}
        for node, mask in masks.items():
            extra = len(forward.shapes[node]) - 2
            shaped[node] = self._graph.node_layout(forward, node, mask.reshape(*mask.shape, *([1] * extra)))
        start = {self._graph.output_node(): init_relevance(forward.logits, [target] * n, init)}
        record_nodes = [self._node(name) for name in record_layers]
        input_rel, recorded = propagate(self._graph, forward, start, masks=shaped, record=record_nodes)
        rels = {}
        for name, node in zip(record_layers, record_nodes):
            rels[name] = recorded.get(node, torch.zeros(0))
        return input_rel, rels
