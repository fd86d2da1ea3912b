"""Tracing a classifier into a graph the LRP engine can walk backwards.

The model is deep-copied (the user's model is never modified), switched to eval mode,
traced with :mod:`torch.fx`, and canonized: every BatchNorm that directly follows a
convolution or dense layer (and is that layer's only consumer) is merged into it.
Functional operations in ``forward`` (``+``, ``torch.add``, ``F.pad``, slicing,
``torch.cat``/``stack``, ``flatten``...) become graph nodes and are handled like modules.

Models whose ``forward`` branches on the input's size (timm's VGG checks the feature map
against its pre-logits kernel) cannot be traced symbolically. For them the trace follows an
example input (:class:`_ConcreteTracer`): every node is also evaluated on the example, a
branch (or ``int()``, ``float()``, ``len()`` of a traced value: a grid size computed from the token
count) reads the concrete value, and the node that decided it is kept in the graph as a
*guard* (``node.meta["guard"]``, the value it had). The graph keeps fx's torch-level nodes,
so the rule table applies unchanged; the engine re-evaluates every guard on each forward
pass and refuses, in one line, an input that would take another branch (rather than
explaining the wrong graph). ``torch.export``/``make_fx`` were not used: they trace to aten
operators, where the rule table's modules (``nn.Conv2d``, activations, norms) no longer exist.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import operator
import warnings
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError

#: class names of third-party modules that are traced as opaque leaves.
#: timm's RMS-type norms (``x / rms(x) * weight``): leaves, so that their statistics are one node
#: (the pass rule, :mod:`conceptree.attribution.rule_table`)
TIMM_RMS_NORMS = ("RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32", "SimpleNorm", "SimpleNorm2d",
                  "SimpleNormFp32", "SimpleNorm2dFp32")
_LEAF_CLASS_NAMES = {"Conv2dSame", "BatchNormAct2d", "Sum", "ZennitMergedBatchNorm", "StarReLU", *TIMM_RMS_NORMS}


#: functions that their library marks ``torch.fx.wrap`` (one opaque node) which the tracer follows instead,
#: by (module, name): torchvision's Swin puts its whole window attention in one such function
_TRACE_THROUGH = frozenset({
    ("torchvision.models.swin_transformer", "shifted_window_attention"),
    ("torchvision.models.swin_transformer", "_patch_merging_pad"),
})


class _Tracer(fx.Tracer):
    """fx tracer that keeps convolutions (incl. timm's ``Conv2dSame``) and BN+act as leaves."""

    def trace(self, root, concrete_args=None):  # type: ignore[no-untyped-def]
        # fx records a wrapped function as one node by patching it while it traces; the functions of
        # _TRACE_THROUGH are left unpatched for this trace (and the registry restored after it)
        from torch.fx import _symbolic_trace

        registry = _symbolic_trace._wrapped_fns_to_patch
        hidden = {key: scope for key, scope in registry.items() if (scope.get("__name__"), key[1]) in _TRACE_THROUGH}
        for key in hidden:
            del registry[key]
        try:
            return super().trace(root, concrete_args)
        finally:
            registry.update(hidden)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear)) or type(m).__name__ in _LEAF_CLASS_NAMES:
            return True
        if type(m).__name__ == "Attention" and type(m).__module__.startswith("timm.layers"):  # one CP-LRP rule
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        type(module).__name__ == "BatchNormAct2d"
    )


_UNKNOWN = object()


class _ConcreteTracer(_Tracer):
    """fx tracer that also evaluates every node on an example input.

    Control flow on a traced value (``if x.shape[-1] < 7``, ``for a in proxy``) reads the
    example's value instead of failing; the node whose truth value decided a branch is marked
    ``node.meta["guard"] = value`` so that the engine can check it on every later input.
    """

    def __init__(self, example: Tensor) -> None:
        super().__init__()
        self.example = example
        self._placeholders = 0
        self._evaluating = False

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        if self._evaluating:  # a module called while evaluating a node on the example: just run it
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):  # type: ignore[no-untyped-def]
        if self._evaluating:  # the module's real parameters, not proxies
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:  # type: ignore[no-untyped-def]
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["concrete"] = self._evaluate(node)
        return node

    def _evaluate(self, node: fx.Node) -> object:
        if node.op == "placeholder":
            self._placeholders += 1
            return self.example.clone() if self._placeholders == 1 else _UNKNOWN
        if node.op == "output":
            return _UNKNOWN
        values = [n.meta.get("concrete", _UNKNOWN) for n in node.all_input_nodes]
        if any(v is _UNKNOWN for v in values):
            return _UNKNOWN
        load = lambda a: fx.node.map_arg(a, lambda n: n.meta["concrete"])  # noqa: E731
        args, kwargs = load(node.args), load(node.kwargs)
        self._evaluating = True
        try:
            with torch.no_grad():
                if node.op == "get_attr":
                    return operator.attrgetter(str(node.target))(self.root)
                if node.op == "call_module":
                    return self.root.get_submodule(str(node.target))(*args, **kwargs)
                if node.op == "call_function":
                    return cast(Callable, node.target)(*args, **kwargs)
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        except Exception:  # noqa: BLE001 - a value we cannot compute stays unknown (branching on it fails below)
            return _UNKNOWN
        finally:
            self._evaluating = False

    def _concrete(self, obj: fx.Proxy) -> object:
        value = obj.node.meta.get("concrete", _UNKNOWN)
        if value is _UNKNOWN:
            raise fx.proxy.TraceError(f"the value of node '{obj.node.name}' that forward() branches on is unknown")
        return value

    def to_bool(self, obj: fx.Proxy) -> bool:
        return cast(bool, self.read(obj, "bool"))

    def read(self, obj: fx.Proxy, how: GuardRead) -> object:
        """The example's value of ``obj`` read as a Python ``bool``, ``int``, ``float`` or ``len``; the node
        becomes a guard (:func:`guards`)."""
        value = GUARD_READS[how](self._concrete(obj))
        obj.node.meta["guard"] = value
        obj.node.meta["guard_read"] = how
        return value

    def iter(self, obj: fx.Proxy):  # type: ignore[no-untyped-def]
        value = cast(Sized, self._concrete(obj))
        return iter([cast(Any, obj)[i] for i in range(len(value))])

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)


GuardRead = Literal["bool", "int", "float", "len"]
#: how a guard's node is read (``int(size)``, ``len(x.shape)``): the trace read it so, and so does every later pass
GUARD_READS: dict[str, Callable[[Any], object]] = {"bool": bool, "int": int, "float": float, "len": len}
#: tensor attributes a concrete trace reads off the example (``torch.autocast(device_type=x.device.type)``)
_CONCRETE_ATTRIBUTES = frozenset({"device", "dtype", "is_cuda"})


class _ConcreteProxy(fx.Proxy):
    """A proxy of :class:`_ConcreteTracer`: ``int()``, ``float()``, ``len()`` and index use read the example's
    value (timm's ``int(num_patches ** .5)``, ``len(x.shape[2:])``) and make the node a guard."""

    tracer: _ConcreteTracer

    def __int__(self) -> int:
        return cast(int, self.tracer.read(self, "int"))

    def __index__(self) -> int:
        return cast(int, self.tracer.read(self, "int"))

    def __float__(self) -> float:
        return cast(float, self.tracer.read(self, "float"))

    def __len__(self) -> int:
        return cast(int, self.tracer.read(self, "len"))

    def __setitem__(self, key: Any, value: Any) -> None:
        # a node of its own, run in place on the example and on every pass (the engine refuses relevance
        # into a written tensor that depends on the input: rules.ModifiedInPlaceRule)
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __getattr__(self, name: str) -> Any:
        if name in _CONCRETE_ATTRIBUTES:
            value = self.node.meta.get("concrete", _UNKNOWN)
            if value is not _UNKNOWN:
                return getattr(value, name)
        return super().__getattr__(name)


def _drop_traced_caches(model: nn.Module) -> None:
    """Empty the dict caches that an earlier trace filled with proxies (timm's EfficientFormerV2 caches
    its attention biases per device in eval mode): a later trace would read another graph's nodes."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, dict) and any(isinstance(v, fx.Proxy) for v in value.values()):
                value.clear()


def _trace(model: nn.Module, example: Tensor | None = None) -> fx.GraphModule:
    """Trace symbolically; on control flow that needs values, follow ``example`` (module docstring)."""
    graph: fx.Graph | None = None
    _drop_traced_caches(model)
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types; report one clear line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, (fx.proxy.TraceError, TypeError, RuntimeError)) and example is not None:
            try:
                _drop_traced_caches(model)
                graph = _ConcreteTracer(example).trace(model)
            except Exception:  # noqa: BLE001 - report the symbolic tracer's reason below
                graph = None
        if graph is None:
            hint = ("remove data-dependent control flow from forward() or wrap that part in a module"
                    if example is not None else "pass an example input so that the trace can follow it")
            raise UnsupportedModelError(f"cannot trace {type(model).__name__} with torch.fx ({first_line}); {hint}") from exc
    assert graph is not None
    for node in graph.nodes:
        node.meta.pop("concrete", None)  # the example's values are not kept (memory)
    _drop_traced_caches(model)
    return fx.GraphModule(model, graph)


def guards(graph_module: fx.GraphModule) -> dict[fx.Node, object]:
    """Nodes whose value chose a branch or became a Python number while tracing with an example (empty
    for a symbolic trace), with the value they had (read as ``node.meta["guard_read"]``: bool, int, float
    or len)."""
    return {node: node.meta["guard"] for node in graph_module.graph.nodes if "guard" in node.meta}


@torch.no_grad()
def _merge_batchnorm(layer: Any, bn: Any) -> None:
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


def _bn_replacement(bn: Any, zennit_compat: ZennitCompat | None) -> nn.Module:
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


def _standardized_weight(module: Any) -> Tensor:
    """The weight a weight-standardised convolution applies (timm's ``StdConv2d``: per output
    channel zero mean and unit variance over its fan-in, ``eps`` inside the root; ``Scaled``
    variants times ``gain * scale``), computed with the same ``F.batch_norm`` call as timm."""
    gain = getattr(module, "gain", None)
    scale = getattr(module, "scale", None)
    affine = (gain * scale).view(-1) if gain is not None and scale is not None else None
    return F.batch_norm(module.weight.reshape(1, module.out_channels, -1), None, None, weight=affine,
                        training=True, momentum=0.0, eps=module.eps).reshape_as(module.weight)


#: weight-standardised convolutions (by class name) that canonize to a plain convolution
STANDARDIZED_CONVS = {"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"}


@torch.no_grad()
def _plain_conv(module: Any, name: str) -> nn.Conv2d:
    """``module`` (a weight-standardised conv) as ``nn.Conv2d`` — or timm's ``Conv2dSame`` for
    dynamic 'same' padding — with the standardised weight, checked on a random input."""
    same = bool(getattr(module, "same_pad", False))
    if same:
        from timm.layers.conv2d_same import Conv2dSame

        conv: nn.Conv2d = Conv2dSame(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                                     module.dilation, module.groups, module.bias is not None)
    else:
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                         module.dilation, module.groups, module.bias is not None)
    conv = conv.to(module.weight)
    conv.weight.copy_(_standardized_weight(module))
    if module.bias is not None:
        cast(Tensor, conv.bias).copy_(module.bias)
    side = [k * d + s for k, d, s in zip(module.kernel_size, module.dilation, module.stride)]
    probe = torch.randn(1, module.in_channels, *side, generator=torch.Generator().manual_seed(0)).to(module.weight)
    want, got = module(probe), conv(probe)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6):
        raise UnsupportedModelError(
            f"conv '{name}' ({type(module).__name__}) is not the weight-standardised convolution conceptree "
            "canonizes; register a rule for it or replace it with nn.Conv2d"
        )
    return conv


def _canonize_standardized_convs(model: nn.Module) -> None:
    """Replace every weight-standardised convolution by the plain one it computes (exact: the
    standardised weight depends on parameters only, so in eval mode it is a constant)."""
    targets = [(name, m) for name, m in model.named_modules() if type(m).__name__ in STANDARDIZED_CONVS]
    for name, module in targets:
        _set_submodule(model, name, _plain_conv(module, name))


_REPARAMETERIZE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


@torch.no_grad()
def _reparameterize(model: nn.Module, example: Tensor | None) -> nn.Module:
    """Fuse re-parameterisable blocks into the single convolutions they are at inference (timm's
    ``reparameterize_model``: RepVGG, MobileOne, FastViT, RepViT, RepGhost), checked to compute
    the same logits on a random input of the example's shape."""
    if not any(hasattr(m, name) for m in model.modules() for name in _REPARAMETERIZE_METHODS):
        return model
    from timm.models._manipulate import reparameterize_model

    probe = None if example is None else torch.randn(tuple(example.shape), generator=torch.Generator().manual_seed(0)).to(example)
    want = None if probe is None else model(probe)
    fused = reparameterize_model(model, inplace=True).eval()  # ``model`` is canonize's own copy
    if probe is not None:
        got = fused(probe)
        if not (isinstance(want, Tensor) and isinstance(got, Tensor) and want.shape == got.shape
                and torch.allclose(want, got, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6)):
            raise UnsupportedModelError(
                f"fusing the re-parameterisable blocks of {type(model).__name__} changed its output; "
                "explain it unfused with reparameterize=False"
            )
    return fused


def canonize(model: nn.Module, zennit_compat: ZennitCompat | None = None, example: Tensor | None = None,
             reparameterize: bool = True) -> fx.GraphModule:
    """Copy, trace and canonize ``model`` (BatchNorm merged into the preceding layer).

    Parameters
    ----------
    model : torch.nn.Module
        A classifier; it is not modified.
    zennit_compat : {None, "zennit", "zennit-0.4"}
        Keep zennit's residual ``1/sqrt(1+eps)`` scaling of merged BatchNorms (see
        :class:`ZennitMergedBatchNorm`); default None merges exactly.
    example : Tensor, optional
        An input ``(1, C, H, W)`` for models whose ``forward`` branches on the input size:
        the trace follows it when symbolic tracing fails (module docstring), and checks the
        fused blocks of ``reparameterize``.
    reparameterize : bool
        Fuse re-parameterisable multi-branch blocks (RepVGG, MobileOne, FastViT, RepViT,
        RepGhost: ``fuse``/``reparameterize`` methods, through timm's ``reparameterize_model``)
        into the single convolutions the model is at inference, as BatchNorm is merged
        (default). Their training-time branches are near-cancelling sums where the ``Norm``
        rule of a residual addition is unstable: RepViT-M1's heatmap missed its logit by 130x
        unfused and by 1e-4 fused (``benchmarks/results/architectures.json``).

    Returns
    -------
    torch.fx.GraphModule
        Eval-mode traced copy in which every BatchNorm that directly follows a conv/dense
        layer (its only consumer) is merged into it and every weight-standardised
        convolution (timm's ``StdConv2d``, ``ScaledStdConv2d`` and their ``Same`` variants,
        as in NFNets and BiT) is a plain convolution with its standardised weight. Other BatchNorms (pre-activation, as in
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
    if reparameterize:
        model = _reparameterize(model, example)
    _canonize_standardized_convs(model)
    traced = _trace(model, example)
    merged = False
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        bn: Any = traced.get_submodule(str(node.target))
        if not _is_batchnorm(bn):
            continue
        parent = node.args[0] if node.args else None
        layer = (
            traced.get_submodule(str(parent.target))
            if isinstance(parent, fx.Node) and parent.op == "call_module"
            else None
        )
        if (
            layer is None
            or not isinstance(parent, fx.Node)
            or not isinstance(layer, (nn.Conv2d, nn.Linear))
            or len(parent.users) != 1
            or not bn.track_running_stats
        ):
            continue  # pre-activation BatchNorm (e.g. DenseNet): kept, explained by the pass rule
        _merge_batchnorm(layer, bn)
        _set_submodule(model, node.target, _bn_replacement(bn, zennit_compat))
        merged = True
    if merged:
        traced = _trace(model, example)
    _batch_first_permutes(traced)
    _stacked_sums(traced)
    return traced


def _permute_dims(node: fx.Node) -> tuple[int, ...] | None:
    """The dims of a ``permute`` node (method or function), or None."""
    if node.target not in ("permute", torch.permute) or len(node.args) < 2:
        return None
    dims = node.args[1:] if node.target == "permute" and len(node.args) > 2 else node.args[1]
    if not (isinstance(dims, (tuple, list)) and all(isinstance(d, int) and d >= 0 for d in dims)):
        return None
    return tuple(dims)


def _batch_first_permutes(graph_module: fx.GraphModule) -> None:
    """Rewrite ``x.permute(2, 0, 3, 1, 4).unbind(0)`` (timm's split of a packed qkv) to keep the batch first.

    The engine's relevance batches ride on the batch dimension, so a permutation that moves it is refused;
    but where the permuted tensor is only unbound or indexed along its first dimension, the same values
    come from ``x.permute(0, 2, 3, 1, 4).unbind(1)``: the batch stays first and the split moves one place.
    Other uses of such a permutation are left for the engine to refuse.
    """
    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        dims = _permute_dims(node) if node.op in ("call_method", "call_function") else None
        if dims is None or dims[0] == 0 or 0 not in dims:
            continue
        users = list(node.users)

        def splits_first(user: fx.Node) -> bool:
            if user.target in ("unbind", torch.unbind):
                dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
                return isinstance(dim, int) and dim == 0
            return user.target is operator.getitem and isinstance(user.args[1], int)

        if not users or not all(splits_first(user) for user in users):
            continue
        new_dims = (0, *(d for d in dims if d != 0))
        with graph.inserting_after(node):
            moved = graph.call_method("permute", (node.args[0], *new_dims))
        for user in users:
            if user.target is operator.getitem:
                with graph.inserting_after(user):
                    picked = graph.call_method("select", (moved, 1, user.args[1]))
                user.replace_all_uses_with(picked)
                graph.erase_node(user)
            else:
                user.args = (moved, 1)
                user.kwargs = {}
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        graph_module.recompile()


def _stacked_sums(graph_module: fx.GraphModule) -> None:
    """Rewrite ``torch.stack(xs, 0).sum(0)`` / ``.mean(0)`` (CrossViT's two heads, EfficientViM's stage
    outputs) as ``xs[0] + xs[1] + ...`` (times ``1/len(xs)``): the same values, without a new leading
    dimension in front of the batch, which the engine's relevance batches cannot cross."""
    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.target is not torch.stack or len(node.users) != 1 or not node.args or not isinstance(node.args[0], (list, tuple)):
            continue
        stack_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        (user,) = node.users
        if stack_dim != 0 or user.target not in ("sum", "mean", torch.sum, torch.mean) or user.args[0] is not node:
            continue
        dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
        if dim not in (0, (0,), [0]) or user.kwargs.get("keepdim", False) or set(user.kwargs) - {"dim", "keepdim"}:
            continue
        pieces = list(node.args[0])
        with graph.inserting_before(user):
            total = pieces[0]
            for piece in pieces[1:]:
                total = graph.call_function(operator.add, (total, piece))
            if user.target in ("mean", torch.mean):
                total = graph.call_function(operator.mul, (total, 1.0 / len(pieces)))
        user.replace_all_uses_with(total)
        graph.erase_node(user)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.lint()
        graph_module.recompile()


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
        convolution, as in ConvNeXt), ``"token"`` (an ``nn.Linear`` on a token sequence
        ``(B, N, C)``, as in a vision transformer) or ``"linear"``.
    channels : int
        Number of output channels (features).
    default : bool
        Selected when no layers are named: every conv and pointwise layer, and of the token
        layers those that feed an activation (a transformer block's MLP hidden layer; not the
        patch embedding, the qkv, the attention output or the MLP output projections).
    """

    name: str
    kind: str
    channels: int
    default: bool = True


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
            module = graph_module.get_submodule(str(current.target))
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


#: activations after which a token layer is a transformer MLP's hidden layer (module class or function names)
_ACTIVATIONS = frozenset({"gelu", "relu", "silu", "quick_gelu", "hardswish", "GELU", "GELUTanh", "QuickGELU", "ReLU",
                          "SiLU", "Hardswish", "Mish", "mish"})


def _feeds_activation(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether an activation reads ``node``'s output directly."""
    for user in node.users:
        if user.op == "call_module":
            name = type(graph_module.get_submodule(str(user.target))).__name__
        elif user.op in ("call_function", "call_method"):
            name = getattr(user.target, "__name__", str(user.target))
        else:
            continue
        if name in _ACTIVATIONS:
            return True
    return False


class _ShapeProbe(fx.Interpreter):
    """Runs the traced model once and keeps every node's output shape."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, torch.Size] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.shapes[n] = out.shape
        return out


_ADDS = {operator.add, torch.add, "add"}


def token_layers(graph_module: fx.GraphModule, example: Tensor | None
                 ) -> tuple[set[str], dict[str, tuple[fx.Node, int]]]:
    """The token layers of a transformer, found by running the model once on ``example``.

    Returns the names of the ``nn.Linear`` modules that read a token sequence ``(B, N, C)`` (a dense
    layer acts per token like a 1x1 convolution per position; only the input's rank tells it from a
    classifier's head), and the **residual stream** after each block: module name -> ``(node, channels)``
    of the node that returns the module's output, for every module whose output is a token sequence made
    by a residual addition (timm's ``blocks.3``). Only a graph with more than one dense layer, or with a
    reshape into five or more dimensions (windows), is run (a CNN's single head needs no run). Modules that
    run on windows folded into the batch are marked (``node.meta["folded_batch"]``): they are not layers.
    """
    linears = [node for node in graph_module.graph.nodes
               if node.op == "call_module" and isinstance(graph_module.get_submodule(str(node.target)), nn.Linear)]
    # windows folded into the batch are spelled as a view/reshape into 5 or more dimensions (Swin, EfficientViT)
    windows = any(node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) >= 6
                  for node in graph_module.graph.nodes)
    if (len(linears) < 2 and not windows) or example is None:
        return set(), {}
    param = next(iter(graph_module.parameters()), None)
    if param is not None:
        example = example.to(device=param.device, dtype=param.dtype)
    probe = _ShapeProbe(graph_module)
    try:
        with torch.no_grad():
            probe.run(example)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own code on the example
        warnings.warn(f"the model fails on the example input {tuple(example.shape)} ({str(exc).splitlines()[0][:120]}); "
                      "its token layers (a transformer's) are not found: pass example_input of the model's input size",
                      stacklevel=3)
        return set(), {}
    shapes = probe.shapes
    batch = int(example.shape[0])
    for node in linears:  # a dense layer on a rank-3 or rank-6 input is not a 1x1 conv on a channels-last map
        if node.args and isinstance(node.args[0], fx.Node) and node.args[0] in shapes:
            node.meta["input_rank"] = len(shapes[node.args[0]])
    for node, shape in shapes.items():  # a layer run on windows folded into the batch (EfficientViT-MSRA)
        if node.op == "call_module" and len(shape) and int(shape[0]) != batch:
            node.meta["folded_batch"] = int(shape[0])
    # a sequence whose leading dimension is not the batch (TNT's pixel tokens: patches folded into the batch)
    # is not the image's tokens
    tokens = {str(node.target) for node in linears
              if node.args and isinstance(node.args[0], fx.Node) and len(shapes.get(node.args[0], ())) == 3
              and shapes[node.args[0]][0] == batch}
    last: dict[str, fx.Node] = {}  # module -> the last node run inside it
    for node in graph_module.graph.nodes:
        for path in (node.meta.get("nn_module_stack") or {}).values():
            name = path[0] if isinstance(path, tuple) else str(path)
            if name:
                last[name] = node
    streams = {name: (node, int(shapes[node][-1])) for name, node in last.items()
               if node.op in ("call_function", "call_method") and node.target in _ADDS and len(shapes.get(node, ())) == 3
               and shapes[node][0] == batch}
    return tokens, streams


def list_layers(graph_module: fx.GraphModule, kinds: tuple[str, ...] = ("conv",),
                tokens: set[str] | frozenset[str] = frozenset(),
                streams: Mapping[str, tuple[fx.Node, int]] | None = None) -> list[LayerInfo]:
    """Conv (and optionally linear) layers in execution order.

    ``"conv"`` includes the pointwise ``nn.Linear`` layers on channels-last maps (kind
    ``"pointwise"``): they are 1x1 convolutions, and their outputs are channels like any
    convolution's; and the ``nn.Linear`` layers named in ``tokens`` (:func:`token_layers`, kind
    ``"token"``): per-token dense layers, whose channels have a map on the patch grid; and the residual
    streams of ``streams`` (:func:`token_layers`, kind ``"stream"``, not selected by default): a block's
    output, whose channels carry all the relevance that passes the block.
    """
    at_node = {node: (name, width) for name, (node, width) in (streams or {}).items()}
    layers: list[LayerInfo] = []
    seen: set[str] = set()
    shared: set[str] = set()
    folded: set[str] = set()
    pointwise: set[fx.Node] = set()
    varying: set[fx.Node] = set()  # nodes whose value depends on the input
    for node in graph_module.graph.nodes:
        if (node.op == "placeholder" or any(arg in varying for arg in node.all_input_nodes)) and not _reads_shape(node):
            varying.add(node)
        if node in at_node and "conv" in kinds:
            name, width = at_node[node]
            layers.append(LayerInfo(name, "stream", width, False))
            continue
        if node.op != "call_module" or node not in varying:
            continue  # a layer on constants only (a relative-position MLP on fixed coordinates) has no neurons
        if "folded_batch" in node.meta:
            folded.add(str(node.target))  # its channels have one map per window, not one on the image
            continue
        module: Any = graph_module.get_submodule(str(node.target))
        default = True
        rank = node.meta.get("input_rank")  # known where the shape probe ran (token_layers)
        if isinstance(module, nn.Linear) and node.target not in tokens and (
                rank == 4 or rank is None and _reads_channels_last(graph_module, node, pointwise)):
            pointwise.add(node)
        if isinstance(module, nn.Conv2d) and "conv" in kinds:
            kind, channels = "conv", module.out_channels
        elif node in pointwise and "conv" in kinds:
            kind, channels = "pointwise", module.out_features
        elif node.target in tokens and "conv" in kinds:
            kind, channels = "token", module.out_features
            default = _feeds_activation(graph_module, node)
        elif isinstance(module, nn.Linear) and node not in pointwise and "linear" in kinds:
            kind, channels = "linear", module.out_features
        else:
            continue
        if node.target in seen:
            shared.add(str(node.target))
            continue
        seen.add(node.target)
        layers.append(LayerInfo(node.target, kind, channels, default))
    if folded:
        warnings.warn(f"{len(folded)} modules run on windows folded into the batch are not layers (a channel would have "
                      f"one map per window): {', '.join(sorted(folded)[:4])}{', ...' if len(folded) > 4 else ''}",
                      stacklevel=3)
    if shared:  # CoaT's convolutional position encoding, shared by the blocks of a stage
        warnings.warn(f"modules called more than once in forward() are not layers (a channel would have one map per "
                      f"call); their calls are explained, not listed: {', '.join(sorted(shared))}", stacklevel=3)
    return [layer for layer in layers if layer.name not in shared]


def _reads_shape(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``: sizes, not values (a position grid built from them is a constant,
    as the engine's forward pass finds: its ``depends`` skips values that hold no tensor)."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim", "device", "dtype")
    return node.op == "call_method" and node.target in ("size", "dim", "numel")


def select_layers(layers: list[LayerInfo], patterns: list[str] | None, exclude: list[str] | None = None) -> list[LayerInfo]:
    """Layers whose names match any of ``patterns`` (fnmatch globs) and none of ``exclude``.

    Raises
    ------
    InputError
        If a pattern matches no layer (the message lists close matches).
    """
    names = [layer.name for layer in layers]
    chosen = {layer.name for layer in layers if layer.default} if not patterns else set()
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
