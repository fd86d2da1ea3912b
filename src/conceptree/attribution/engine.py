"""The CRP engine: relevance of every conv channel and its conditional attribution map.

One forward pass stores, per graph node, the rule quantities that do not depend on the
upper relevance (see :mod:`conceptree.attribution.rules`). One backward pass from the
target logit then gives the relevance at every layer. A conditional map ``y_p`` starts at
``p``'s layer with the relevance masked to channel ``p`` and is propagated to the input;
since every rule is linear in the relevance, a batch of channels is propagated at once and
nothing above the layer is recomputed. Relevance that reaches the input through a skip
connection around the layer never enters the batch, so it is excluded by construction
(zennit-crp's ``exclude_parallel=True``).
"""

from __future__ import annotations

import difflib
import operator
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConceptreeError, InputError, UnsupportedModelError
from . import rules as R
from .composites import Composite
from .rule_table import RuleContext, lookup
from .tracing import LayerInfo, ZennitCompat, canonize, guards, list_layers, select_layers

InitRelevance = Literal["logit", "one"]

#: Conditional maps propagated together (one place for the default).
DEFAULT_BATCH_SIZE = 32


@dataclass
class ForwardPass:
    """Everything one forward pass leaves for the backward passes.

    Attributes
    ----------
    input : Tensor
        The model input, shape ``(1, C, H, W)``.
    logits : Tensor
        Model output, shape ``(num_classes,)``.
    rules : dict
        Graph node -> prepared :class:`~conceptree.attribution.rules.Rule`.
    shapes : dict
        Graph node -> activation shape (batch 1).
    """

    input: Tensor
    logits: Tensor
    rules: dict[fx.Node, R.Rule]
    shapes: dict[fx.Node, torch.Size]
    channels_last_rules: bool = False

    def cast(self, dtype: torch.dtype) -> ForwardPass:
        """The same pass with every rule's tensors in ``dtype`` (:meth:`Rule.cast`; e.g. float32
        batches of a float64 pass, where the float64 concepts are not needed to the last bit)."""
        if self.input.dtype == dtype:
            return self
        return ForwardPass(self.input.to(dtype), self.logits, {node: rule.cast(dtype) for node, rule in self.rules.items()},
                           self.shapes, self.channels_last_rules)

    def use_channels_last(self) -> None:
        """Switch every rule to channels-last storage, once (before batches of conditional maps)."""
        if not self.channels_last_rules:
            for rule in self.rules.values():
                rule.use_channels_last()
            self.channels_last_rules = True


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
        Relevance at each selected layer's output, shape ``(channels, h, w)``.
    forward : ForwardPass
        The prepared forward pass (reused by the conditional maps).
    """

    target: int
    logits: Tensor
    input_relevance: Tensor
    layer_relevance: dict[str, Tensor]
    forward: ForwardPass = field(repr=False)

    @property
    def heatmap(self) -> Tensor:
        """Class heatmap ``(H, W)``: input relevance summed over colour channels."""
        return self.input_relevance.sum(0)

    def channel_relevance(self, layer: str) -> Tensor:
        """``r_p`` of every channel of ``layer``, shape ``(channels,)``."""
        return self.layer_relevance[layer].float().flatten(1).sum(1)


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
    """

    targets: list[int]
    logits: Tensor
    channel_relevance: Tensor
    layer_relevance: dict[str, Tensor] = field(default_factory=dict)

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


def _example_input(model: nn.Module) -> Tensor:
    """Zeros of the model's declared input size (timm's ``pretrained_cfg``), else ``(1, C, 224, 224)``
    with ``C`` the first convolution's input channels (3 without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if not (isinstance(size, (tuple, list)) and len(size) == 3):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, 224, 224)
    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.zeros(1, *size)
    return torch.zeros(1, *size, dtype=param.dtype, device=param.device)


def _model_error(node: fx.Node, exc: Exception, x: Tensor) -> Exception:
    """The model's own code raised while running ``node``: our errors pass through, anything else
    becomes one line naming the node, the input shape and the model's message."""
    if isinstance(exc, ConceptreeError):
        return exc
    what = f"module '{node.target}'" if node.op == "call_module" else f"{node.op.replace('call_', '')} '{node.name}'"
    message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no message"
    return InputError(f"the model's own code failed at {what} on an input of shape {tuple(x.shape)} "
                      f"({type(exc).__name__}: {message}); check the input size and preprocessing the model expects")


class CRPEngine:
    """Batched Concept Relevance Propagation for a convolutional classifier.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (taking ``(1, C, H, W)`` and returning ``(1, num_classes)``). It is
        deep-copied, switched to eval mode and canonized; the original is left untouched.
    composite : Composite, optional
        LRP rules; default ``Composite()`` (epsilon-plus-flat, biases ignored).
    layers : list[str], optional
        Names or fnmatch globs of the conv layers whose channels are neurons (default: all).
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
        self._rules = self.composite.rule_table()
        example = _example_input(model) if example_input is None else self._check_example(example_input, model)
        self.graph_module = canonize(model, cast(ZennitCompat | None, zennit_compat), example, reparameterize)
        self._guards = guards(self.graph_module)
        self._example_shape = tuple(example.shape)
        if dtype is not None:
            if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
                raise InputError(f"dtype must be a floating torch.dtype, got {dtype!r}")
            self.graph_module.to(dtype)
        for module in self.graph_module.modules():
            if getattr(module, "inplace", False):
                cast(Any, module).inplace = False
        self._nodes: list[fx.Node] = list(self.graph_module.graph.nodes)
        self._index = {node: i for i, node in enumerate(self._nodes)}
        self._node_by_layer = {
            node.target: node for node in self._nodes if node.op == "call_module"
        }
        self.all_layers: list[LayerInfo] = list_layers(self.graph_module, ("conv",))
        self.layers: list[LayerInfo] = select_layers(
            self.all_layers, list(layers) if layers else None, list(exclude_layers or [])
        )
        self._pointwise = {layer.name for layer in self.all_layers if layer.kind == "pointwise"}
        self._first_layers = self._find_first_layers()
        self._validated: set[fx.Node] = set()  # nodes whose module passed its rule's check once
        self._constants: dict = {}  # per module and input shape (RuleContext.constants)
        self._input_channels = self._find_input_channels()
        params = list(self.graph_module.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.dtype = params[0].dtype if params else torch.float32

    @staticmethod
    def _check_example(x: Tensor, model: nn.Module) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != 1 or not x.is_floating_point():
            raise InputError(f"example_input must be a float tensor of shape (1, C, H, W), got "
                             f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        param = next(iter(model.parameters()), None)
        return x.detach() if param is None else x.detach().to(device=param.device, dtype=param.dtype)

    # ------------------------------------------------------------------ graph helpers
    def _find_first_layers(self) -> set[fx.Node]:
        """conv/linear nodes that read the input without another conv/linear in between."""
        before: set[fx.Node] = set()
        first: set[fx.Node] = set()
        for node in self._nodes:
            if node.op == "placeholder":
                before.add(node)
                continue
            if not any(inp in before for inp in node.all_input_nodes):
                continue
            if node.op == "call_module" and isinstance(
                self.graph_module.get_submodule(str(node.target)), (nn.Conv2d, nn.Linear)
            ):
                first.add(node)
            else:
                before.add(node)
        return first

    def layer_node(self, name: str) -> fx.Node:
        """Graph node of module ``name`` (raises with close matches if unknown)."""
        node = self._node_by_layer.get(name)
        if node is None:
            select_layers(
                [LayerInfo(str(n), "module", 0) for n in self._node_by_layer], [name]
            )  # raises InputError with close matches
            raise InputError(f"layer {name!r} does not exist in the model")  # pragma: no cover
        return node

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor, batch: bool = False) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"input must be a torch.Tensor of shape (1, C, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(
                f"input must be a float tensor (a preprocessed image), got dtype {x.dtype}; "
                "apply the model's preprocessing first"
            )
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or (x.shape[0] != 1 and not batch):
            raise InputError(
                f"input must have shape (1, C, H, W) (one image), got {tuple(x.shape)}; "
                "explain images one at a time"
            )
        expected = self._input_channels
        if expected is not None and x.shape[1] != expected:
            raise InputError(
                f"input has {x.shape[1]} channels but the model's first layer expects {expected}; "
                "convert the image (e.g. grayscale to RGB)"
            )
        if not torch.isfinite(x).all():
            raise InputError("input contains NaN or infinite values; check the preprocessing")
        return x.detach().to(device=self.device, dtype=self.dtype)

    def _find_input_channels(self) -> int | None:
        """Channels the model's input must have: those of a first conv that reads the input itself
        (None when the input is rearranged first, e.g. a space-to-depth stem: the forward pass then
        reports a mismatch at the node where it fails)."""
        for node in sorted(self._first_layers, key=self._index.__getitem__):
            module = self.graph_module.get_submodule(str(node.target))
            if isinstance(module, nn.Conv2d):
                reads_input = bool(node.args) and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder"
                return module.in_channels if reads_input else None
        return None

    @torch.no_grad()
    def forward(self, x: Tensor, batch: bool = False) -> ForwardPass:
        """Run the model once and prepare every node's rule.

        Parameters
        ----------
        x : Tensor
            Preprocessed image, shape ``(1, C, H, W)`` or ``(C, H, W)``; with ``batch=True``
            ``(N, C, H, W)``: N images whose rules each relevance row ``n`` of a later
            :meth:`propagate` uses (image ``n`` only; :meth:`attribute_batch`).
        batch : bool
            Accept ``N > 1`` images. Such a pass serves one relevance row per image, not the
            per-image batches of conditional maps.
        """
        x = self._check_input(x, batch)
        env: dict[fx.Node, object] = {}
        rules: dict[fx.Node, R.Rule] = {}
        shapes: dict[fx.Node, torch.Size] = {}
        depends: set[fx.Node] = set()
        logits: Tensor | None = None
        load = lambda arg: fx.node.map_arg(arg, cast(Callable[[fx.Node], Any], env.__getitem__))  # noqa: E731
        for node in self._nodes:
            if node.op == "placeholder":
                if env:
                    raise UnsupportedModelError("the model's forward() takes more than one input; wrap it")
                env[node] = x
                depends.add(node)
                continue
            if node.op == "get_attr":
                env[node] = operator.attrgetter(str(node.target))(self.graph_module)
                continue
            if node.op == "output":
                out = load(node.args[0])
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
                    raise UnsupportedModelError(
                        "the model must return logits of shape (1, num_classes); "
                        f"got {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
                    )
                logits = out
                break
            args, kwargs = load(node.args), load(node.kwargs)
            try:
                out = self._execute(node, args, kwargs)
            except Exception as exc:  # the model's own code failed on this input: one line, not a traceback
                raise _model_error(node, exc, x) from exc
            env[node] = out
            if node in self._guards and bool(out) != self._guards[node]:
                raise InputError(
                    f"the model's forward() branches on its input at node '{node.name}' and takes another branch for "
                    f"shape {tuple(x.shape)} than for the example {self._example_shape} it was traced with; "
                    "create the engine with example_input of this shape"
                )
            if any(inp in depends for inp in node.all_input_nodes):
                depends.add(node)
                if isinstance(out, Tensor):  # tuples (chunk/split) are read through their items' rules
                    rule = self._make_rule(node, args, kwargs, out, depends, env)
                    if rule is None:  # a tensor built from shapes only (torch.zeros(x.shape)): a constant
                        depends.discard(node)
                        continue
                    shapes[node] = out.shape
                    rules[node] = rule
        assert logits is not None
        return ForwardPass(input=x, logits=logits[0] if not batch else logits, rules=rules, shapes=shapes)

    def _execute(self, node: fx.Node, args: tuple, kwargs: dict) -> object:
        if node.op == "call_module":
            return self.graph_module.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            target = cast(Callable, node.target)
            if target is operator.iadd:
                target = operator.add
            if kwargs.get("inplace"):
                kwargs = {**kwargs, "inplace": False}
            return target(*args, **kwargs)
        method = str(node.target)
        if method.endswith("_") and not method.endswith("__"):
            method = method[:-1]
        return getattr(args[0], method)(*args[1:], **kwargs)

    def _make_rule(self, node: fx.Node, args: tuple, kwargs: dict, out: Tensor, depends: set, env: dict) -> R.Rule | None:
        """The node's rule from the composite's table (:mod:`conceptree.attribution.rule_table`);
        None for a tensor whose values do not depend on the input's (a constant)."""
        module = self.graph_module.get_submodule(str(node.target)) if node.op == "call_module" else None
        ctx = RuleContext(node, module, args, kwargs, out, node in self._first_layers and self.composite.flat_first_layer,
                          self.composite, depends, env, self.graph_module, node not in self._validated,
                          self._constants)
        factory = lookup(self._rules, node, module)
        if factory is None:
            if module is not None:
                raise ctx.unsupported(f"module {type(module).__name__} '{node.target}'")
            what = "function" if node.op == "call_function" else "method"
            name = getattr(node.target, "__name__", str(node.target))
            raise ctx.unsupported(f"{what} {name if what == 'function' else '.' + name + '()'}")
        rule = factory(ctx)
        self._validated.add(node)
        if node.target in self._pointwise and not (rule is not None and rule.channels_last):
            raise UnsupportedModelError(
                f"layer '{node.target}' was read as a pointwise layer on channels-last maps but its input has "
                f"shape {tuple(ctx.x.shape)}; exclude it with exclude_layers=[{node.target!r}]"
            )
        return rule

    def node_of_layer(self, layer: str) -> fx.Node:
        """The graph node whose output channels are the neurons of a selected ``layer``."""
        if layer not in self._node_by_layer:
            raise InputError(f"layer {layer!r} is not among the engine's selected layers")
        return self._node_by_layer[layer]

    def node_layout(self, forward: ForwardPass, node: fx.Node, rel: Tensor) -> Tensor:
        """Relevance given channels-first ``(B, C, h, w)`` in the node's own layout."""
        if _is_channels_last(forward.rules.get(node)):
            return rel.permute(0, 2, 3, 1)
        return rel

    # ------------------------------------------------------------------ backward
    def propagate(
        self,
        forward: ForwardPass,
        start: Mapping[fx.Node, Tensor],
        masks: Mapping[fx.Node, Tensor] | None = None,
        record: Sequence[fx.Node] = (),
        stop: frozenset[fx.Node] = frozenset(),
    ) -> tuple[Tensor, dict[fx.Node, Tensor]]:
        """Propagate relevance batches from ``start`` nodes down to the input.

        Parameters
        ----------
        forward : ForwardPass
            From :meth:`forward`.
        start : mapping node -> Tensor
            Relevance at these nodes' outputs, each of shape ``(B, *activation.shape[1:])``.
        masks : mapping node -> Tensor, optional
            Multiplied onto the relevance at these nodes (broadcast to ``(B, ...)``).
        record : sequence of nodes
            Nodes whose (masked) relevance is returned.
        stop : set of nodes
            Relevance that reaches these nodes is returned in ``recorded`` and not propagated
            further (:meth:`fine_nodes`).

        Returns
        -------
        input_relevance : Tensor
            Shape ``(B, C, H, W)`` (zeros where everything stopped above the input).
        recorded : dict
            Node -> relevance, for the nodes in ``record`` and ``stop`` that relevance reached.
        """
        pending: dict[fx.Node, Tensor] = dict(start)
        wanted = set(record)
        recorded: dict[fx.Node, Tensor] = {}
        batch = next(iter(start.values())).shape[0]
        first = max(self._index[node] for node in start)
        result: Tensor | None = None
        for node in reversed(self._nodes[: first + 1]):
            rel = pending.pop(node, None)
            if rel is None:
                continue
            if masks is not None and node in masks:
                rel = rel * masks[node]
            if node in wanted or node in stop:
                recorded[node] = rel
            if node in stop:
                continue
            if node.op == "placeholder":
                result = rel
                continue
            self._backward_into(forward, node, rel, pending)
        if result is None:
            result = forward.input.new_zeros((batch, *forward.input.shape[1:]))
        return result, recorded

    @staticmethod
    def _backward_into(forward: ForwardPass, node: fx.Node, rel: Tensor, pending: dict[fx.Node, Tensor]) -> None:
        """One rule's backward step: ``rel`` at ``node``'s output added to its inputs' pending relevance."""
        rule = forward.rules.get(node)
        if rule is None:
            raise UnsupportedModelError(f"relevance reached node '{node.name}' which has no LRP rule")
        for inp, rel_in in rule.backward(rel):
            previous = pending.get(inp)
            pending[inp] = rel_in if previous is None else previous + rel_in

    def propagate_absorbing(
        self,
        forward: ForwardPass,
        start: Mapping[fx.Node, Tensor],
        absorb: Mapping[fx.Node, Tensor],
    ) -> tuple[Tensor, dict[fx.Node, Tensor]]:
        """Propagate relevance from ``start`` down, absorbing what *arrives* at marked channels.

        At each node of ``absorb`` the relevance arriving from above is split: the part on the
        marked channels (``absorb[node]``, a 0/1 tensor with one value per channel, in the
        node's layout: ``(1, C, 1, 1)``, ``(1, 1, 1, C)`` or ``(1, C)``) is summed per channel and not propagated further; the
        rest goes on, together with the node's own ``start`` (which is never absorbed at its own
        node). :func:`conceptree.concepts.flows.concept_flows` builds concept-to-concept flows on it.

        Returns
        -------
        input_relevance : Tensor
            ``(B, C, H, W)``: relevance that reached the input without meeting a marked channel.
        absorbed : dict
            Node -> ``(B, channels)`` relevance absorbed at each marked channel of that node.
        """
        pending: dict[fx.Node, Tensor] = {}
        starts = dict(start)
        absorbed: dict[fx.Node, Tensor] = {}
        batch = next(iter(start.values())).shape[0]
        first = max(self._index[node] for node in start)
        result: Tensor | None = None
        for node in reversed(self._nodes[: first + 1]):
            arrival = pending.pop(node, None)
            own = starts.pop(node, None)
            if arrival is None and own is None:
                continue
            if arrival is not None and node in absorb:
                mask = absorb[node]
                if arrival.ndim == 4:
                    dims = (1, 2) if _is_channels_last(forward.rules.get(node)) else (2, 3)
                    absorbed[node] = arrival.sum(dims) * mask.reshape(1, -1)
                else:
                    absorbed[node] = (arrival * mask).reshape(batch, -1)
                arrival = arrival * (1 - mask)
            rel = own if arrival is None else arrival if own is None else arrival + own
            assert rel is not None
            if node.op == "placeholder":
                result = rel
                continue
            self._backward_into(forward, node, rel, pending)
        if result is None:
            result = forward.input.new_zeros((batch, *forward.input.shape[1:]))
        return result, absorbed

    def _resolve_target(self, logits: Tensor, target: int | None) -> int:
        if target is None:
            return int(logits.argmax())
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise InputError(f"target must be a class index (int), got {target!r}")
        if not 0 <= int(target) < logits.numel():
            raise InputError(
                f"target {target} is outside the model's {logits.numel()} classes (0..{logits.numel() - 1})"
            )
        return int(target)

    def _init_relevance(self, logits: Tensor, targets: Sequence[int], init: InitRelevance | Tensor) -> Tensor:
        """Relevance at the output, one row per target: ``logits`` ``(classes,)`` (one image) or
        ``(N, classes)`` (row ``n`` from image ``n``)."""
        rel = torch.zeros((len(targets), logits.shape[-1]), dtype=logits.dtype, device=logits.device)
        rows = torch.arange(len(targets))
        cols = torch.as_tensor(list(targets))
        if isinstance(init, Tensor):
            rel[rows, cols] = init.to(rel).reshape(-1).expand(len(targets))
        elif init == "logit":
            rel[rows, cols] = logits[rows, cols] if logits.ndim == 2 else logits[cols]
        elif init == "one":
            rel[rows, cols] = 1.0
        else:
            raise InputError(f"init must be 'logit', 'one' or a tensor, got {init!r}")
        return rel

    @torch.no_grad()
    def attribute(self, x: Tensor | ForwardPass, target: int | None = None, init: InitRelevance | Tensor = "logit") -> Attribution:
        """One LRP pass from the target logit: relevance at the input and at every layer.

        Parameters
        ----------
        x : Tensor or ForwardPass
            Preprocessed image ``(1, C, H, W)``, or a prepared forward pass.
        target : int, optional
            Class to explain (default: the predicted class).
        init : {"logit", "one"} or Tensor
            Initial relevance at the target logit: its value (zennit-crp's default), 1
            (zennit's ``Gradient`` with a one-hot output), or a given scalar.
        """
        forward = x if isinstance(x, ForwardPass) else self.forward(x)
        target = self._resolve_target(forward.logits, target)
        out_node = self._output_node()
        start = {out_node: self._init_relevance(forward.logits, [target], init)}
        input_rel, recorded = self.propagate(forward, start, record=[self._node_by_layer[la.name] for la in self.layers])
        layer_rel = {name: rel[0] for name, rel in self._recorded_layers(forward, recorded, 1).items()}
        return Attribution(target, forward.logits, input_rel[0], layer_rel, forward)

    def _recorded_layers(self, forward: ForwardPass, recorded: Mapping[fx.Node, Tensor], n: int) -> dict[str, Tensor]:
        """Each selected layer's recorded relevance, channels-first ``(n, C, h, w)`` (zeros
        ``(n, C, 1, 1)`` for a layer on no path to the logit)."""
        out = {}
        for layer in self.layers:
            node = self._node_by_layer[layer.name]
            rel = recorded.get(node)
            if rel is None:
                rel = torch.zeros((n, layer.channels, 1, 1), dtype=self.dtype, device=self.device)
            elif _is_channels_last(forward.rules.get(node)):
                rel = rel.permute(0, 3, 1, 2)  # pointwise layer: stored channels-first like a conv
            out[layer.name] = rel
        return out

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
        resolved = [self._resolve_target(logits[i], t) for i, t in enumerate(targets)]
        start = {self._output_node(): self._init_relevance(logits, resolved, init)}
        _, recorded = self.propagate(forward, start, record=[self._node_by_layer[la.name] for la in self.layers])
        maps = self._recorded_layers(forward, recorded, n)
        columns = torch.cat([rel.double().flatten(2).sum(2) for rel in maps.values()], 1)
        return BatchAttribution(resolved, logits, columns, maps if keep_maps else {})

    def neuron_columns(self) -> list[tuple[str, int, int]]:
        """``(layer, first column, channels)`` of each selected layer in the neuron axis of
        :attr:`BatchAttribution.channel_relevance` (model order, channels in order)."""
        out, offset = [], 0
        for layer in self.layers:
            out.append((layer.name, offset, layer.channels))
            offset += layer.channels
        return out

    def _output_node(self) -> fx.Node:
        out = next(node for node in reversed(self._nodes) if node.op == "output")
        arg = out.args[0]
        if isinstance(arg, (tuple, list)):
            arg = arg[0]
        assert isinstance(arg, fx.Node)
        return arg

    def channel_plan(
        self, attribution: Attribution, batch_size: int, channels: Mapping[str, Sequence[int]] | None = None
    ) -> list[tuple[str, Tensor]]:
        """Batches ``(layer, channel indices)`` covering the requested neurons."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        plan: list[tuple[str, Tensor]] = []
        names = [layer.name for layer in self.layers]
        wanted = channels if channels is not None else {layer.name: range(layer.channels) for layer in self.layers}
        for name, chans in wanted.items():
            if name not in attribution.layer_relevance:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else "; select it with layers=[...]"
                raise InputError(f"layer {name!r} is not among the engine's selected layers{hint}")
            idx = _channel_indices(name, chans, attribution.layer_relevance[name].shape[0])
            for chunk in torch.split(idx, batch_size):
                plan.append((name, chunk))
        return plan

    def fine_nodes(self, forward: ForwardPass, size: tuple[int, int]) -> frozenset[fx.Node]:
        """The nodes whose output is a channels-first feature map finer than ``size`` in both
        dimensions (the input included): where :meth:`iter_conditional_maps` stops when asked to
        pool below a map size.

        A 4-d activation counts as a ``(B, C, h, w)`` map when its rule does not read it
        channels-last and ``h : w`` is the input's aspect ratio (to one pixel).
        """
        height, width = forward.input.shape[-2:]
        fine = set()
        for node, shape in forward.shapes.items():
            if len(shape) != 4 or _is_channels_last(forward.rules.get(node)):
                continue
            h, w = int(shape[2]), int(shape[3])
            if h > size[0] and w > size[1] and abs(h * width - w * height) <= max(height, width):
                fine.add(node)
        if height > size[0] and width > size[1]:
            fine.update(node for node in self._nodes if node.op == "placeholder")
        return frozenset(fine)

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
            From :meth:`attribute`.
        batch_size : int
            Channels propagated together (default 32).
        channels : mapping layer -> channel indices, optional
            Subset of neurons (default: every channel of every selected layer).
        progress : bool
            Show a tqdm progress bar over batches.
        pool_below : (h, w), optional
            Approximate maps at this size: relevance that reaches a feature map finer than
            ``(h, w)`` (:meth:`fine_nodes`) is summed over its channels and average-pooled to
            ``(h, w)`` instead of being propagated through the high-resolution layers. Each
            map is scaled like an ``(h, w)`` average pooling of the input-level map, so its
            sum times ``H*W / (h*w)`` is ``sum(y_p)`` (exact when the sizes divide); the
            shape within a cell of the finer map is lost. Default None: exact, ``(H, W)``.
        """
        plan = self.channel_plan(attribution, batch_size, channels)
        forward = attribution.forward
        forward.use_channels_last()
        if pool_below is not None:
            pool_below = (min(pool_below[0], forward.input.shape[-2]), min(pool_below[1], forward.input.shape[-1]))
        stop = self.fine_nodes(forward, pool_below) if pool_below is not None else frozenset()
        iterator = plan
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(plan, desc="conditional maps", unit="batch")
        for layer, chunk in iterator:
            node = self._node_by_layer[layer]
            rel = attribution.layer_relevance[layer].unsqueeze(0)
            chunk_dev = chunk.to(self.device)
            rule = forward.rules[node]
            if hasattr(rule, "backward_channels"):
                start = dict(rule.backward_channels(rel, chunk_dev))
            else:
                masked = rel.new_zeros((chunk.numel(), *rel.shape[1:]))
                rows = torch.arange(chunk.numel(), device=self.device)
                masked[rows, chunk_dev] = rel[0, chunk_dev]
                start = {node: self.node_layout(forward, node, masked)}
            input_rel, stopped = self.propagate(forward, start, stop=stop)
            if pool_below is None:
                yield MapBatch(layer, chunk, input_rel.sum(1))
            else:
                yield MapBatch(layer, chunk, self._pool_stopped(forward, input_rel, stopped, pool_below))

    def _pool_stopped(self, forward: ForwardPass, input_rel: Tensor, stopped: Mapping[fx.Node, Tensor],
                      size: tuple[int, int]) -> Tensor:
        """``(B, *size)``: stopped relevance summed over channels, pooled to ``size`` and scaled
        by its cells' share of the input area (an average pooling of the input-level map)."""
        height, width = forward.input.shape[-2:]
        if any(node.op == "placeholder" for node in stopped):  # input_rel is then all zeros
            out = input_rel.new_zeros((input_rel.shape[0], *size))
        else:
            out = F.adaptive_avg_pool2d(input_rel.sum(1, keepdim=True), size)[:, 0]
        for rel in stopped.values():
            h, w = rel.shape[-2:]
            pooled = F.adaptive_avg_pool2d(rel.sum(1, keepdim=True), size)[:, 0]
            out += pooled * (h * w / (height * width))
        return out

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
        layer_names = [layer.name for layer in self.layers]
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
        height, width = attribution.forward.input.shape[-2:]
        attribution.forward.use_channels_last()
        out = torch.zeros((len(groups), height, width), dtype=self.dtype, device=self.device)
        for first in range(0, len(groups), batch_size):
            chunk = groups[first : first + batch_size]
            start: dict[fx.Node, Tensor] = {}
            for row, group in enumerate(chunk):
                for layer, chans in group.items():
                    if layer not in attribution.layer_relevance:
                        raise InputError(f"layer {layer!r} is not among the engine's selected layers")
                    node = self._node_by_layer[layer]
                    rel = attribution.layer_relevance[layer]
                    idx = _channel_indices(layer, chans, rel.shape[0]).to(self.device)
                    if node not in start:
                        start[node] = rel.new_zeros((len(chunk), *rel.shape))
                    start[node][row, idx] = rel[idx]
            if start:
                start = {node: self.node_layout(attribution.forward, node, rel) for node, rel in start.items()}
                input_rel, _ = self.propagate(attribution.forward, start)
                out[first : first + len(chunk)] = input_rel.sum(1)
        return out

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
        forward = x if isinstance(x, ForwardPass) else self.forward(x)
        forward.use_channels_last()
        target = self._resolve_target(forward.logits, target)
        n = len(conditions)
        if n == 0:
            raise InputError("conditions is empty; pass at least one condition dict")
        masks: dict[fx.Node, Tensor] = {}
        for row, condition in enumerate(conditions):
            for layer, chans in condition.items():
                node = self.layer_node(layer)
                module = self.graph_module.get_submodule(str(node.target))
                n_channels = getattr(module, "out_channels", getattr(module, "out_features", None))
                if n_channels is None:
                    raise InputError(f"layer {layer!r} has no channels to condition on; use a conv or linear layer")
                if node not in masks:
                    masks[node] = torch.ones((n, n_channels), dtype=self.dtype, device=self.device)
                masks[node][row] = 0.0
                masks[node][row, _channel_indices(layer, chans, n_channels)] = 1.0
        shaped = {}
        for node, mask in masks.items():
            extra = len(forward.shapes[node]) - 2
            if _is_channels_last(forward.rules.get(node)):
                shaped[node] = mask.reshape(mask.shape[0], *([1] * extra), mask.shape[1])
            else:
                shaped[node] = mask.reshape(*mask.shape, *([1] * extra))
        out_node = self._output_node()
        start = {out_node: self._init_relevance(forward.logits, [target] * n, init)}
        record_nodes = [self.layer_node(name) for name in record_layers]
        input_rel, recorded = self.propagate(forward, start, masks=shaped, record=record_nodes)
        rels = {}
        for name, node in zip(record_layers, record_nodes):
            rels[name] = recorded.get(node, torch.zeros(0))
        return input_rel, rels


def _channel_indices(layer: str, channels: Sequence[int], n_channels: int) -> Tensor:
    """Channel indices as a long tensor, checked against the layer's channel count."""
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_channels):
        raise InputError(f"channel index out of range for layer {layer!r} with {n_channels} channels")
    return idx


def _is_channels_last(rule: R.Rule | None) -> bool:
    """Whether a node's rule works on channels-last activations (no rule: no)."""
    return rule is not None and rule.channels_last
