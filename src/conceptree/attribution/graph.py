"""Tracing a classifier into a graph the LRP engine can walk backwards.

The model is deep-copied (the user's model is never modified), switched to eval mode,
traced with :mod:`torch.fx`, and canonized: every BatchNorm that directly follows a
convolution or dense layer (and is that layer's only consumer) is merged into it.
Functional operations in ``forward`` (``+``, ``torch.add``, ``F.pad``, slicing,
``torch.cat``/``stack``, ``flatten``...) become graph nodes and are handled like modules.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

from ..errors import InputError, UnsupportedModelError

#: class names of third-party modules that are traced as opaque leaves.
_LEAF_CLASS_NAMES = {"Conv2dSame", "BatchNormAct2d", "Sum", "ZennitMergedBatchNorm"}


class _Tracer(fx.Tracer):
    """fx tracer that keeps convolutions (incl. timm's ``Conv2dSame``) and BN+act as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear)) or type(m).__name__ in _LEAF_CLASS_NAMES:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        type(module).__name__ == "BatchNormAct2d"
    )


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types; report one clear line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({first_line}); "
            "remove data-dependent control flow from forward() or wrap that part in a module"
        ) from exc
    return fx.GraphModule(model, graph)


@torch.no_grad()
def _merge_batchnorm(layer: nn.Module, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the preceding conv/linear ``layer`` in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else (
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    )
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    weight = layer.weight
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    index = (slice(None),) + (None,) * (weight.ndim - 1)
    layer.weight.data = weight * scale[index]
    layer.bias.data = layer.bias * scale + shift


ZennitCompat = Literal["zennit", "zennit-0.4"]


class ZennitMergedBatchNorm(nn.Module):
    """What zennit leaves of a merged BatchNorm: ``x / sqrt(1 + eps)``.

    zennit's ``MergeBatchNorm`` sets the statistics to identity but keeps ``eps``, so its
    canonized model scales activations by ``1/sqrt(1 + eps)`` after every merged BatchNorm.
    zennit >= 0.5 passes relevance through it unchanged (``Pass`` rule, ``scales_relevance``
    False); zennit 0.4 left it unhooked, so relevance was multiplied by the same factor.
    Used only with ``zennit_compat`` to reproduce zennit/zennit-crp outputs bit for bit.
    """

    def __init__(self, eps: float, scales_relevance: bool) -> None:
        super().__init__()
        self.scale = float((1.0 + eps) ** -0.5)
        self.scales_relevance = scales_relevance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _bn_replacement(bn: nn.Module, zennit_compat: ZennitCompat | None) -> nn.Module:
    """What remains of a BatchNorm after merging: identity, or timm's fused activation."""
    parts: list[nn.Module] = []
    if zennit_compat is not None:
        if zennit_compat not in ("zennit", "zennit-0.4"):
            raise InputError(f"zennit_compat must be None, 'zennit' or 'zennit-0.4', got {zennit_compat!r}")
        parts.append(ZennitMergedBatchNorm(bn.eps, scales_relevance=zennit_compat == "zennit-0.4"))
    if type(bn).__name__ == "BatchNormAct2d":
        parts += [bn.drop, bn.act]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def canonize(model: nn.Module, zennit_compat: ZennitCompat | None = None) -> fx.GraphModule:
    """Copy, trace and canonize ``model`` (BatchNorm merged into the preceding layer).

    Parameters
    ----------
    model : torch.nn.Module
        A classifier; it is not modified.
    zennit_compat : {None, "zennit", "zennit-0.4"}
        Keep zennit's residual ``1/sqrt(1+eps)`` scaling of merged BatchNorms (see
        :class:`ZennitMergedBatchNorm`); default None merges exactly.

    Returns
    -------
    torch.fx.GraphModule
        Eval-mode traced copy in which every BatchNorm that directly follows a conv/dense
        layer (its only consumer) is merged into it. Other BatchNorms (pre-activation, as in
        DenseNet) stay: an elementwise affine map, explained by the pass rule
        (:mod:`conceptree.attribution.rule_table`).

    Raises
    ------
    UnsupportedModelError
        If the model cannot be traced.
    """
    model = copy.deepcopy(model).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    traced = _trace(model)
    merged = False
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        bn = traced.get_submodule(node.target)
        if not _is_batchnorm(bn):
            continue
        parent = node.args[0] if node.args else None
        layer = (
            traced.get_submodule(parent.target)
            if isinstance(parent, fx.Node) and parent.op == "call_module"
            else None
        )
        if (
            layer is None
            or not isinstance(layer, (nn.Conv2d, nn.Linear))
            or len(parent.users) != 1
            or not bn.track_running_stats
        ):
            continue  # pre-activation BatchNorm (e.g. DenseNet): kept, explained by the pass rule
        _merge_batchnorm(layer, bn)
        _set_submodule(model, node.target, _bn_replacement(bn, zennit_compat))
        merged = True
    if merged:
        traced = _trace(model)
    return traced


def _set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


@dataclass(frozen=True)
class LayerInfo:
    """A conv/linear layer of the traced model.

    Attributes
    ----------
    name : str
        Qualified module name in the original model (e.g. ``"layer1.0.conv1"``).
    kind : str
        ``"conv"``, ``"pointwise"`` (an ``nn.Linear`` on channels-last maps, i.e. a 1x1
        convolution, as in ConvNeXt) or ``"linear"``.
    channels : int
        Number of output channels (features).
    """

    name: str
    kind: str
    channels: int


_PERMUTES = {"permute", "transpose", torch.permute, torch.transpose}


def _reads_channels_last(graph_module: fx.GraphModule, node: fx.Node, pointwise: set[fx.Node]) -> bool:
    """Whether the ``nn.Linear`` at ``node`` reads a channels-last map (ConvNeXt's pointwise layers).

    Walks back from its input through single-input elementwise nodes (norms, activations,
    dropout, scaling by constants) to the op that made the layout: a permute/transpose or
    another pointwise layer means channels-last; a flatten, reshape, pooling, convolution or
    a merge of several inputs means an ordinary dense layer. The engine checks the answer
    against the actual input rank on every forward pass.
    """
    current = node.args[0] if node.args else None
    while isinstance(current, fx.Node):
        if current in pointwise or current.target in _PERMUTES:
            return True
        if current.op == "call_module":
            module = graph_module.get_submodule(current.target)
            if type(module).__name__ == "Permute":
                return True
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Flatten)) or "Pool" in type(module).__name__:
                return False
        elif current.op != "call_function" and current.op != "call_method":
            return False
        elif current.target in ("view", "reshape", "flatten", "mean", "sum", torch.flatten, torch.mean, torch.sum):
            return False
        inputs = [n for n in current.all_input_nodes if n.op != "get_attr"]
        if len(inputs) != 1:
            return False
        current = inputs[0]
    return False


def list_layers(graph_module: fx.GraphModule, kinds: tuple[str, ...] = ("conv",)) -> list[LayerInfo]:
    """Conv (and optionally linear) layers in execution order.

    ``"conv"`` includes the pointwise ``nn.Linear`` layers on channels-last maps (kind
    ``"pointwise"``): they are 1x1 convolutions, and their outputs are channels like any
    convolution's.
    """
    layers: list[LayerInfo] = []
    seen: set[str] = set()
    pointwise: set[fx.Node] = set()
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        if isinstance(module, nn.Linear) and _reads_channels_last(graph_module, node, pointwise):
            pointwise.add(node)
        if isinstance(module, nn.Conv2d) and "conv" in kinds:
            kind, channels = "conv", module.out_channels
        elif node in pointwise and "conv" in kinds:
            kind, channels = "pointwise", module.out_features
        elif isinstance(module, nn.Linear) and node not in pointwise and "linear" in kinds:
            kind, channels = "linear", module.out_features
        else:
            continue
        if node.target in seen:
            raise UnsupportedModelError(
                f"module '{node.target}' is called more than once in forward(); "
                "give each call its own module so that its neurons are well defined"
            )
        seen.add(node.target)
        layers.append(LayerInfo(node.target, kind, channels))
    return layers


def select_layers(layers: list[LayerInfo], patterns: list[str] | None, exclude: list[str] | None = None) -> list[LayerInfo]:
    """Layers whose names match any of ``patterns`` (fnmatch globs) and none of ``exclude``.

    Raises
    ------
    InputError
        If a pattern matches no layer (the message lists close matches).
    """
    names = [layer.name for layer in layers]
    chosen = set(names) if not patterns else set()
    for pattern in patterns or []:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else f"; layers are e.g. {', '.join(names[:3])}"
            raise InputError(f"layer {pattern!r} does not exist in the model{hint}")
        chosen.update(hits)
    for pattern in exclude or []:
        chosen.difference_update(fnmatch.filter(names, pattern))
    result = [layer for layer in layers if layer.name in chosen]
    if not result:
        raise InputError("the layer selection is empty; relax --layers/--exclude-layers")
    return result
