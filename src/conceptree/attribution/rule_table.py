"""Which LRP rule a graph node gets: a table from module types, functions and method names to
rule factories, as zennit's composites map layer types to rules.

A factory receives a :class:`RuleContext` (the node, its evaluated inputs and output, the
module for ``call_module`` nodes, and whether the layer reads the model input) and returns a
:class:`~conceptree.attribution.rules.Rule`. The table is data: :func:`default_rules` gives
the built-in entries, and :meth:`Composite.with_rule` adds a user's own, which take
precedence::

    from conceptree.attribution import Composite, rules
    composite = Composite().with_rule(MyActivation, lambda ctx: rules.PassRule(ctx.arg0))

The parameterised rules (conv, dense and norm layers) come from the composite's layer map and
first-layer map as specifications with their parameters (:mod:`conceptree.attribution.specs`):
the built-in entries ask :meth:`RuleContext.rule` for the specification of their layer kind
and build the rule class it names (:data:`CONV_VARIANTS`, :data:`LINEAR_VARIANTS`) with its
parameters. A specification added for a key (``Composite().with_rule(nn.Conv2d, Gamma(gamma=0.5))``)
replaces the layer map's for the nodes of that key.

Module keys match by ``isinstance`` (the most specific class in the module's MRO wins), or
by class name as ``"module:ClassName"`` (for third-party classes that need not be
importable, e.g. zennit's stack-and-sum ``Sum``); function keys match by identity, method keys
(``str``) by the method name with any trailing ``_`` removed.

Rules of the CNN families beyond ResNet/VGG (each with its reasoning and reference)
-------------------------------------------------------------------------------
* **Elementwise activations** (ReLU family, SiLU/Swish, GELU, Hardswish, Mish, ELU, SELU,
  Sigmoid/Hardsigmoid/Tanh used as activations, Softplus, MetaFormer's StarReLU): *pass* — relevance goes to the
  input unchanged. This is zennit's ``Pass`` rule for activations; the LRP literature treats
  a monotone elementwise activation as part of the neuron whose relevance it passes on
  (Montavon et al. 2019, "Layer-wise relevance propagation: an overview"; LXT/AttnLRP,
  Achtibat et al. 2024, uses the identity for SiLU/GELU).
* **Multiplicative gates** ``y = x * g`` (squeeze-excitation ``x * sigmoid(fc(pool(x)))``,
  ConvNeXt's layer scale ``gamma * x``): the gate is held constant, so ``y`` is linear in
  ``x`` and the z-rule gives ``R_x = (x g / y) R = R``; *all* relevance goes to the gated
  features and none to the gate branch (AttnLRP's treatment of gating; Ali et al. 2022,
  "XAI for Transformers", hold the gating factor constant as well). The gate is the operand
  that is constant, broadcast (fewer elements), or produced by a sigmoid-type activation.
  Conservation holds exactly at the product.
* **Products of two activations** ``y = a * b`` where neither is a gate or a constant (gated
  linear units as in MambaOut, StarNet's "star" ``a * b``, FocalNet's modulation): the uniform
  rule of AttnLRP (Achtibat et al. 2024, "AttnLRP: attention-aware layer-wise relevance
  propagation for transformers", Prop. 3.3): ``R_a = R_b = R / 2``, summed over the dimensions
  an operand was broadcast along. Conserving.
* **LayerNorm / LayerNorm2d / GroupNorm** on feature maps: the statistics are held constant:
  ``y = (x - mu) / sigma * gamma + beta`` is then affine in ``x`` and, with biases kept out of
  the denominators as in every other rule here (``zero_bias=True``), relevance passes
  unchanged. Conserving.
* **LayerNorm on a token sequence** ``(B, N, C)`` (a transformer's): only ``sigma`` is held
  constant and the centring is linear (Ali et al. 2022; AttnLRP's identity rule for the
  normalisation, as LXT implements it), the epsilon rule through the affine map with the bias
  ``beta`` in the denominator: it absorbs its share. Passing relevance unchanged there hands a
  feature that is mostly ``beta`` its full relevance, and the residual sum below it, near
  zero, splits that into cancelling shares in the 1e4s (measured on the MNIST ViT).
* **Attention** (timm's ``Attention``, ``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``,
  and attention written out as ``softmax(q k^T) @ v`` with ``matmul``/``bmm``/``einsum``): CP-LRP
  (Ali et al. 2022; LXT's default for ViTs): the attention weights are a gate, held constant, and
  the epsilon rule runs through the product to the values; the queries and keys receive nothing. A
  product of two activations (neither a gate) is split by AttnLRP's uniform rule, as ``a * b``. The
  weights stay a gate through dropout and a dense layer across heads (CaiT's talking heads).
* **Token bookkeeping**: ``repeat`` and ``repeat_interleave`` (copies, relevance summed), ``select``, ``roll`` (Swin's shifted
  windows), ``swapaxes``; ``F.linear`` with a constant weight is a dense layer; ``F.normalize`` holds
  the norm constant. A ``view``/``reshape`` that folds windows into the batch (Swin's window
  partition) or back is index bookkeeping too: the relevance batch stays outermost, and the
  propagation hands each relevance row's block of window rows to the rules below as the pass's
  own batch.
* **BatchNorm that cannot be merged** (pre-activation, e.g. DenseNet's ``norm1`` after a
  concatenation) and timm's fused ``BatchNormAct2d``: an elementwise affine map (plus its
  activation), so the same *pass* rule; conserving.
* **permute, transpose, channel shuffle, view, chunk/split + indexing**: index bookkeeping —
  relevance follows the elements (the vector-Jacobian product of the linear index map).
* **Stochastic depth / DropPath / Dropout**: identity in eval mode (they trace to it).
* **Upsampling** (``nn.Upsample``, ``F.interpolate``; HRNet's fuse layers): each output pixel
  is a fixed, non-negative mix of source pixels, ``y_i = sum_j w_ij x_j``. Relevance goes to the
  source pixels in proportion to their contributions, ``R_j = sum_i (w_ij x_j / y_i) R_i`` (the
  z-rule of a linear map, as zennit's ``Norm`` rule for average pooling); ``nearest`` copies
  pixels, so this is exact bookkeeping there (each copy's relevance back to its source).
  Conserving.
* **Softmax and sigmoid gates over branches** (ResNeSt's split attention, SKNet's selective
  kernels: ``sum_k x_k * softmax(a)_k``): the softmax is a gate like a squeeze-excitation
  sigmoid — held constant, all relevance to the gated features, none to the gate branch. A
  gate is recognised through reshapes/transposes back to the sigmoid or softmax that made it.
  A softmax that receives relevance anyway (a model that returns probabilities) is refused.
* **Functional convolution with a constant filter** (``F.conv2d`` in ``forward``: TResNet's
  anti-aliasing blur): the convolution's rule (z+), as for ``nn.Conv2d``. Its channels are not
  neurons (a fixed filter is not learned). A filter that depends on the input is refused.
* **Division by a constant** (``(head(x) + head_dist(x)) / 2``): scaling, relevance unchanged.
* **Constant addends and constant tensors** (``x + c``, ``torch.zeros``/``full``/``ones_like``
  built in ``forward``): a constant is a bias — it receives no relevance and, as biases are
  kept out of every rule's denominator here (``zero_bias=True``), the activation keeps all of
  it. Conserving. Weight-standardised convolutions (NFNets, BiT) are canonized before tracing
  into plain convolutions with their standardised weight (:mod:`conceptree.attribution.tracing`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from . import rules as R
from .specs import Custom, Epsilon, Norm, RuleSpec
from .tracing import TIMM_RMS_NORMS

RuleKey = type | Callable | str
RuleFactory = Callable[["RuleContext"], R.Rule | None]


@dataclass
class RuleContext:
    """What a rule factory sees of one graph node.

    Attributes
    ----------
    node : fx.Node
    module : nn.Module or None
        The called module (``call_module`` nodes).
    args, kwargs : tuple, dict
        The node's evaluated arguments (batch-1 tensors for activations).
    out : Tensor
        The node's output.
    first : bool
        The node is a conv/linear layer that reads the model input and the composite uses
        the flat rule there.
    composite : Composite
    depends : set of fx.Node
        Nodes whose value depends on the model input (others are constants).
    values : dict
        Value of every node evaluated so far (batch-1 forward pass).
    owner : fx.GraphModule
        The traced model (to look up the modules of other nodes).
    validate : bool
        Check that the module computes what the rule assumes (e.g. a plain convolution).
        The engine sets it on its first forward pass only: a module's code does not change
        between passes, and the check costs one extra convolution per layer.
    constants : dict
        The engine's store for values that depend only on a module and its input's shape
        (clamped weights, flat-rule denominators), reused across forward passes.
    override : RuleSpec or None
        A specification added with :meth:`Composite.with_rule` for this node's key: it replaces
        the layer map's for the node (:meth:`rule`). Set by the table's entry, not the engine.
    """

    node: fx.Node
    module: nn.Module | None
    args: tuple
    kwargs: dict
    out: Tensor
    first: bool
    composite: object
    depends: set
    values: dict
    owner: fx.GraphModule
    validate: bool = True
    constants: dict = field(default_factory=dict)
    override: RuleSpec | None = None
    override_used: bool = False

    def first_rule(self, kind: str) -> RuleSpec | None:
        """The first-layer map's rule of ``kind`` if this node reads the model input, else None."""
        if not self.first:
            return None
        return dict(getattr(self.composite, "first_layer_map", ())).get(kind)

    def rule(self, kind: str) -> RuleSpec:
        """The specification of this node's rule for a layer ``kind`` (``conv``, ``linear``,
        ``norm``): the first-layer map's where the node reads the input, else the override
        added for the node's key, else the composite's layer map."""
        first = self.first_rule(kind)
        if first is not None:
            return first
        if self.override is not None:
            if (self.override.rule == "norm") != (kind == "norm"):
                raise InputError(f"the rule {self.override.label} added for node '{self.node.name}' does not apply to "
                                 f"its {kind} layer; add a {'Norm' if kind == 'norm' else 'conv/dense'} rule for this key")
            self.override_used = True
            return self.override
        return self.composite.layer_rule(kind)

    def norm_stabilizer(self) -> float:
        """``stabilizer`` of the node's norm rule (sums, average pooling, reductions, upsampling)."""
        spec = self.rule("norm")
        if not isinstance(spec, Norm):
            raise InputError(f"the norm layers' rule must be Norm(stabilizer=...), got {spec.label}")
        return spec.stabilizer

    @property
    def arg0(self) -> fx.Node | None:
        return self.node.args[0] if self.node.args else None

    @property
    def x(self):
        return self.args[0] if self.args else None

    def unsupported(self, what: str) -> UnsupportedModelError:
        """The one-line error for an op this table cannot explain, with the registration hint."""
        return UnsupportedModelError(
            f"unsupported {what} at node '{self.node.name}' ({self.node.format_node()[:80]}); "
            "register a rule for it: Composite().with_rule(KEY, lambda ctx: conceptree.attribution.rules.PassRule(ctx.arg0)) "
            "(see conceptree.attribution.rule_table)"
        )


# --------------------------------------------------------------------------- factories
#: the rule class of each conv/dense specification (:mod:`conceptree.attribution.specs`), read-only
CONV_VARIANTS: Mapping[str, type[R.ConvRule]] = MappingProxyType({
    "zplus": R.ZPlusConvRule, "epsilon": R.EpsilonConvRule, "flat": R.FlatConvRule, "gamma": R.GammaConvRule})
LINEAR_VARIANTS: Mapping[str, type[R.LinearRule]] = MappingProxyType({
    "zplus": R.ZPlusLinearRule, "epsilon": R.EpsilonLinearRule, "flat": R.FlatLinearRule, "gamma": R.GammaLinearRule})


def _variant(spec: RuleSpec, variants: Mapping[str, type], ctx: RuleContext) -> tuple[type, dict[str, Any], Any]:
    """``(rule class, parameters, legacy composite)`` of a conv/dense specification: a built-in
    one by name; a :func:`conv_variant`/:func:`linear_variant` by its class, given the composite
    too (subclasses written for the previous release read their parameters from it)."""
    if isinstance(spec, Custom):
        cls = getattr(spec.target, "variant", None)
        base = R.ConvRule if variants is CONV_VARIANTS else R.LinearRule
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise InputError(f"the rule {spec.label} for node '{ctx.node.name}' is not a "
                             f"{'conv_variant' if variants is CONV_VARIANTS else 'linear_variant'}; pass one "
                             "(conceptree.attribution.rule_table) or a specification such as Gamma(gamma=0.25)")
        return cls, spec.params(), ctx.composite
    if spec.rule not in variants:
        raise InputError(f"the rule {spec.label} does not apply to node '{ctx.node.name}'; use one of "
                         f"{', '.join(variants)}")
    return variants[spec.rule], spec.params(), None


def build_conv(ctx: RuleContext, spec: RuleSpec, module: nn.Conv2d, name: str) -> R.Rule:
    """The conv rule of ``spec`` with its parameters (and the composite's ``zero_bias``, ``dead_units``)."""
    if isinstance(spec, Custom) and getattr(spec.target, "variant", None) is None:
        return spec(ctx)  # a plain factory(ctx) in the layer map
    cls, params, legacy = _variant(spec, CONV_VARIANTS, ctx)
    return cls(ctx.arg0, module, ctx.x, ctx.out, legacy, name, ctx.validate, ctx.constants,
               zero_bias=ctx.composite.zero_bias, dead_units=ctx.composite.dead_units, **params)


def build_linear(ctx: RuleContext, spec: RuleSpec, pointwise: RuleSpec) -> R.Rule:
    """The dense rule of ``spec``; on a channels-last map ``(1, H, W, C)`` the layer is a 1x1
    convolution (ConvNeXt's pointwise layers) and gets the conv rule ``pointwise``."""
    if isinstance(ctx.x, Tensor) and ctx.x.ndim == 4:
        cls, params, legacy = _variant(pointwise, CONV_VARIANTS, ctx)
        return R.PointwiseLinearRule(ctx.arg0, ctx.module, ctx.x, ctx.out, cls, legacy, ctx.node.target,
                                     ctx.validate, ctx.constants, zero_bias=ctx.composite.zero_bias,
                                     dead_units=ctx.composite.dead_units, **params)
    if isinstance(spec, Custom) and getattr(spec.target, "variant", None) is None:
        return spec(ctx)
    cls, params, legacy = _variant(spec, LINEAR_VARIANTS, ctx)
    return cls(ctx.arg0, ctx.module, ctx.x, ctx.out, legacy, zero_bias=ctx.composite.zero_bias, **params)


def _check_parameters(variant: type, params: Mapping[str, Any]) -> None:
    declared = getattr(variant, "parameters", ())
    for key in params:
        if key not in declared and (key.startswith("_") or type(getattr(variant, key, None)) not in (int, float)):
            raise InputError(f"{variant.__qualname__} has no parameter {key!r}; its parameters are {', '.join(declared)}")


def conv_variant(variant: type[R.ConvRule], **params: Any) -> Custom:
    """The table entry of a convolution explained with the rule class ``variant`` and its
    parameters (the first-layer map's rule where the layer reads the input). A new LRP variant
    is one :class:`~.rules.ConvRule` subclass and one row:
    ``Composite().with_rule(nn.Conv2d, conv_variant(MyGammaConvRule, gamma=0.5))``. The
    parameters are part of the composite's equality and JSON form."""
    _check_parameters(variant, params)
    name = f"{variant.__module__}.conv_variant({variant.__qualname__})"

    def factory(ctx: RuleContext) -> R.Rule:
        return build_conv(ctx, ctx.first_rule("conv") or spec, ctx.module, ctx.node.target)

    factory.variant = variant  # type: ignore[attr-defined]
    spec = Custom(name=name, parameters=tuple(sorted(params.items())), target=factory)
    return spec


def linear_variant(variant: type[R.LinearRule], pointwise: type[R.ConvRule] = R.ZPlusConvRule,
                   **params: Any) -> Custom:
    """The table entry of a dense layer explained with the rule class ``variant`` and its
    parameters; on a channels-last map ``(1, H, W, C)`` it is a 1x1 convolution (ConvNeXt's
    pointwise layers) and gets the conv variant ``pointwise`` (without the parameters)."""
    _check_parameters(variant, params)
    name = f"{variant.__module__}.linear_variant({variant.__qualname__}, {pointwise.__qualname__})"
    point = conv_variant(pointwise)

    def factory(ctx: RuleContext) -> R.Rule:
        return build_linear(ctx, ctx.first_rule("linear") or spec, ctx.first_rule("conv") or point)

    factory.variant = variant  # type: ignore[attr-defined]
    spec = Custom(name=name, parameters=tuple(sorted(params.items())), target=factory)
    return spec


def conv_rule(ctx: RuleContext) -> R.Rule:
    """A convolution: the composite's ``conv`` rule (z+ in the presets; flat on the first layer)."""
    return build_conv(ctx, ctx.rule("conv"), ctx.module, ctx.node.target)


def linear_rule(ctx: RuleContext) -> R.Rule:
    """A dense layer: the composite's ``linear`` rule (epsilon in the presets), its ``conv`` rule
    on channels-last maps."""
    if isinstance(ctx.x, Tensor) and ctx.x.ndim == 4:  # a 1x1 convolution: an added rule replaces the conv rule
        return build_linear(ctx, ctx.composite.layer_rule("linear"), ctx.rule("conv"))
    return build_linear(ctx, ctx.rule("linear"), ctx.composite.layer_rule("conv"))


def pass_rule(ctx: RuleContext) -> R.Rule:
    return R.PassRule(ctx.arg0)


def merged_batchnorm_rule(ctx: RuleContext) -> R.Rule:
    if getattr(ctx.module, "scales_relevance", False):
        return R.ScaleRule(ctx.arg0, ctx.module.scale)
    return R.PassRule(ctx.arg0)


def reshape_rule(ctx: RuleContext) -> R.Rule:
    what = f"'{ctx.node.target}'" if ctx.module is not None else getattr(ctx.node.target, "__name__", str(ctx.node.target))
    return R.ReshapeRule(ctx.arg0, ctx.x.shape, ctx.out.shape, what)


def _max_pool_module(ctx: RuleContext) -> R.Rule:
    m = ctx.module
    _, idx = F.max_pool2d(ctx.x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    return R.MaxPoolRule(ctx.arg0, ctx.x, idx)


def _adaptive_max_pool_module(ctx: RuleContext) -> R.Rule:
    _, idx = F.adaptive_max_pool2d(ctx.x, ctx.module.output_size, return_indices=True)
    return R.MaxPoolRule(ctx.arg0, ctx.x, idx)


def _avg_pool_module(ctx: RuleContext) -> R.Rule:
    global_mean = isinstance(ctx.module, nn.AdaptiveAvgPool2d) and tuple(ctx.out.shape[-2:]) == (1, 1)
    return R.NormPoolRule(ctx.arg0, ctx.module, ctx.x, ctx.out, global_mean, ctx.norm_stabilizer())


def conv1d_rule(ctx: RuleContext) -> R.Rule:
    """``nn.Conv1d`` on a sequence ``(B, C, L)`` (EfficientViM's projections): the composite's conv rule on
    the same convolution as a ``1 x k`` ``Conv2d`` over a height-1 map."""
    m = ctx.module
    if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
        raise ctx.unsupported(f"Conv1d '{ctx.node.target}' with padding {m.padding!r} ({m.padding_mode})")
    key = (str(ctx.node.target), "as 2-D", m.weight.dtype, m.weight.device)
    if key not in ctx.constants:
        conv = nn.Conv2d(m.in_channels, m.out_channels, (1, m.kernel_size[0]), (1, m.stride[0]), (0, m.padding[0]),
                         (1, m.dilation[0]), m.groups, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(m.weight.unsqueeze(2))
            if m.bias is not None:
                conv.bias.copy_(m.bias)
        ctx.constants[key] = conv
    flat = dataclasses.replace(ctx, args=(ctx.x.unsqueeze(2), *ctx.args[1:]), out=ctx.out.unsqueeze(2))
    return R.UnsqueezedRule(build_conv(flat, ctx.rule("conv"), ctx.constants[key], str(ctx.node.target)))


def _avg_pool_1d_module(ctx: RuleContext) -> R.Rule:
    """``nn.AvgPool1d`` (Next-ViT's token reduction): the ``Norm`` rule of average pooling."""
    return R.NormPoolRule(ctx.arg0, ctx.module, ctx.x, ctx.out, False, ctx.norm_stabilizer())


def conv_transpose_rule(ctx: RuleContext) -> R.Rule:
    """``nn.ConvTranspose2d`` (LowFormer's attention upsampling): the z-rule of the linear map,
    ``R_x = x * convT^T(R / stab(convT(x)))``, the bias kept out of ``z`` unless ``zero_bias=False`` (then it
    absorbs its share). A learned upsampling, not a detector: the plain rule, as LRP applies to pooling."""
    m = ctx.module
    if not isinstance(m.padding, tuple) or len(ctx.args) > 1:
        raise ctx.unsupported(f"ConvTranspose2d '{ctx.node.target}' with an output_size or string padding")
    weight = m.weight

    def fn(t: Tensor) -> Tensor:
        return F.conv_transpose2d(t, weight.to(t.dtype), None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)

    z = ctx.out if not ctx.composite.zero_bias or m.bias is None else fn(ctx.x)
    return R.NormPoolRule(ctx.arg0, fn, ctx.x, z, False, ctx.norm_stabilizer())


def unfold_rule(ctx: RuleContext) -> R.Rule:
    """``nn.Unfold`` / ``F.unfold`` (VOLO's outlook attention, TNT's pixel embedding): copies of the input's
    pixels, so relevance follows the copies back (its gradient, ``fold``)."""
    if ctx.module is not None:
        return index_rule(ctx, ctx.arg0, ctx.x, ctx.module)
    return index_rule(ctx, ctx.arg0, ctx.x, lambda t: F.unfold(t, *ctx.args[1:], **ctx.kwargs))


def fold_rule(ctx: RuleContext) -> R.Rule:
    """``F.fold`` / ``nn.Fold`` (VOLO's outlook attention): overlapping patches summed back into a map, so the
    ``Norm`` rule of a sum, ``R_in = x * fold^T(R / stab(fold(x)))``."""
    if ctx.module is not None:
        fn = ctx.module
    else:
        def fn(t: Tensor) -> Tensor:
            return F.fold(t, *ctx.args[1:], **ctx.kwargs)
    return R.NormPoolRule(ctx.arg0, fn, ctx.x, ctx.out, False, ctx.norm_stabilizer())


def _sum_module(ctx: RuleContext) -> R.Rule:
    if not hasattr(ctx.module, "dim"):
        raise ctx.unsupported(f"module {type(ctx.module).__name__} without a 'dim' attribute")
    return R.ReduceRule(ctx.arg0, ctx.x, ctx.out, (ctx.module.dim % ctx.x.ndim,), False, False, ctx.norm_stabilizer())


def add_rule(ctx: RuleContext) -> R.Rule:
    """Residual addition (the ``Norm`` rule); a constant addend is a bias (module docstring)."""
    if ctx.kwargs.get("alpha", 1) != 1 or len(ctx.args) != 2:
        raise ctx.unsupported("addition with alpha")
    nodes = ctx.node.args[:2]
    variable = [isinstance(n, fx.Node) and n in ctx.depends and isinstance(v, Tensor) for n, v in zip(nodes, ctx.args)]
    if all(variable):
        return R.SumRule(nodes, ctx.args, ctx.out, ctx.norm_stabilizer(), ctx.composite.dead_units == "flat")
    return _constant_operand(ctx, nodes, variable, "addition")


def _constant_operand(ctx: RuleContext, nodes, variable: list[bool], what: str) -> R.Rule:
    """``x + c`` / ``x - c`` / ``c - x`` with a constant ``c``: a bias, all relevance to ``x``; with
    ``zero_bias=False`` the bias absorbs its share, ``R_x = x R / (x + c)`` (as a dense layer's bias
    then does; a position embedding under LXT's gradient x input)."""
    feature = variable.index(True)
    if tuple(ctx.args[feature].shape) != tuple(ctx.out.shape):
        raise ctx.unsupported(f"{what} of a constant that broadcasts the activation")
    if not ctx.composite.zero_bias:
        sign = -1.0 if what == "subtraction" and feature == 1 else 1.0
        return R.SumRule([nodes[feature]], [sign * ctx.args[feature]], ctx.out, ctx.norm_stabilizer())
    return R.PassRule(nodes[feature])


def sub_rule(ctx: RuleContext) -> R.Rule:
    """``a - b`` is the sum ``a + (-b)``: the ``Norm`` rule with the contributions ``a`` and ``-b``
    (PoolFormer's ``pool(x) - x``); a constant operand is a bias (module docstring)."""
    if ctx.kwargs.get("alpha", 1) != 1 or len(ctx.args) != 2:
        raise ctx.unsupported("subtraction with alpha")
    nodes = ctx.node.args[:2]
    variable = [isinstance(n, fx.Node) and n in ctx.depends and isinstance(v, Tensor) for n, v in zip(nodes, ctx.args)]
    if all(variable):
        return R.SumRule(nodes, [ctx.args[0], -ctx.args[1]], ctx.out, ctx.norm_stabilizer(),
                         ctx.composite.dead_units == "flat")
    return _constant_operand(ctx, nodes, variable, "subtraction")


def constant_rule(ctx: RuleContext) -> None:
    """A tensor built in ``forward`` from shapes only (``torch.zeros(x.shape)``, ``ones_like``):
    a constant, not an activation (the engine treats it like a parameter)."""
    return None


#: functions and methods that build tensors whose values do not depend on the input's values
CONSTANT_FUNCTION_KEYS = (torch.zeros, torch.ones, torch.full, torch.empty, torch.zeros_like, torch.ones_like,
                          torch.full_like, torch.empty_like, torch.arange)
CONSTANT_METHOD_KEYS = ("new_zeros", "new_ones", "new_full", "new_empty")


def interpolate_rule(ctx: RuleContext) -> R.Rule:
    """``nn.Upsample``/``F.interpolate``: source pixels get relevance in proportion to their
    contributions; ``nearest`` copies them (module docstring)."""
    if ctx.module is not None:
        module = ctx.module
        mode = module.mode
        fn: Callable[[Tensor], Tensor] = module
    else:
        rest, kw = ctx.args[1:], ctx.kwargs
        mode = kw.get("mode", rest[2] if len(rest) > 2 else "nearest")
        fn = lambda t: F.interpolate(t, *rest, **kw)  # noqa: E731
    if mode in ("nearest", "nearest-exact"):
        return index_rule(ctx, ctx.arg0, ctx.x, fn)
    return R.NormPoolRule(ctx.arg0, fn, ctx.x, ctx.out, False, ctx.norm_stabilizer())


def functional_conv_rule(ctx: RuleContext) -> R.Rule:
    """``F.conv2d(x, w, ...)`` with a constant filter ``w``: the convolution's rule (module docstring)."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, ctx.args)) | ctx.kwargs
    node_args = dict(zip(names, ctx.node.args)) | dict(ctx.node.kwargs)
    if any(isinstance(node_args.get(k), fx.Node) and node_args[k] in ctx.depends for k in ("weight", "bias")):
        raise ctx.unsupported("convolution whose filter depends on the input")
    weight, bias = bound["weight"], bound.get("bias")
    key = (ctx.node.name, "functional_conv", tuple(weight.shape), weight.data_ptr())
    if key not in ctx.constants:
        conv = nn.Conv2d(ctx.x.shape[1], weight.shape[0], tuple(weight.shape[2:]), bound.get("stride", 1),
                         bound.get("padding", 0), bound.get("dilation", 1), bound.get("groups", 1),
                         bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        ctx.constants[key] = conv
    return build_conv(ctx, ctx.rule("conv"), ctx.constants[key], ctx.node.name)


def _dense_epsilon(ctx: RuleContext) -> float:
    """The dense layers' epsilon (the products of attention use it, as the attention rules do)."""
    return float(getattr(ctx.rule("linear"), "epsilon", 1e-6))


def select_rule(ctx: RuleContext) -> R.Rule:
    """``x.select(dim, index)``: relevance follows the elements (the batch must stay first)."""
    dim = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("dim")
    index = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("index")
    return index_rule(ctx, ctx.arg0, ctx.x, lambda t: t.select(dim, index))


def roll_rule(ctx: RuleContext) -> R.Rule:
    """``torch.roll`` (Swin's shifted windows): relevance follows the elements, rolled back; rolling the
    batch is refused."""
    shifts = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("shifts")
    dims = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("dims")
    if dims is None:
        raise ctx.unsupported("roll of the flattened tensor (no dims)")
    return index_rule(ctx, ctx.arg0, ctx.x, lambda t: torch.roll(t, shifts, dims))


def functional_linear_rule(ctx: RuleContext) -> R.Rule:
    """``F.linear(x, weight, bias)`` with a constant weight (BEiT's qkv with its assembled bias): the
    dense rule, as for ``nn.Linear``. A weight that depends on the input is refused."""
    nodes = list(ctx.node.args) + [None] * 3
    weight = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("weight")
    bias = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("bias")
    weight_node = nodes[1] if nodes[1] is not None else ctx.node.kwargs.get("weight")
    if isinstance(weight_node, fx.Node) and weight_node in ctx.depends:
        raise ctx.unsupported("F.linear with a weight computed from the input")
    module = _FunctionalLinear(weight, bias)
    spec = ctx.rule("linear")
    cls, params, legacy = _variant(spec, LINEAR_VARIANTS, ctx)
    return cls(ctx.arg0, module, ctx.x, ctx.out, legacy, zero_bias=ctx.composite.zero_bias, **params)


@dataclass
class _FunctionalLinear:
    """The weight and bias of an ``F.linear`` call, where a dense rule reads a module's."""

    weight: Tensor
    bias: Tensor | None


def matmul_rule(ctx: RuleContext) -> R.Rule | None:
    """``a @ b`` (``matmul``, ``bmm``): the epsilon rule through the product; a softmax gate (attention
    weights) or a constant operand receives nothing, two activations share by AttnLRP's uniform rule
    (:class:`~conceptree.attribution.rules.MatmulRule`)."""
    nodes = list(ctx.node.args[:2])
    a, b = ctx.args[:2]
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.ndim < 2 or b.ndim < 2 or len(ctx.kwargs) > 0:
        raise ctx.unsupported("matrix product of vectors or with keyword arguments")
    kept = _product_operands(ctx, nodes)
    return None if kept is None else R.MatmulRule(kept, a, b, ctx.out, _dense_epsilon(ctx))


def _product_operands(ctx: RuleContext, nodes) -> list | None:
    """The operands of a product that receive relevance (a gate or a constant is None); None when neither
    does (a product of constants and gates: a constant)."""
    kept = [None if _is_gate(ctx, n) else n for n in nodes]
    return None if all(k is None for k in kept) else kept


def einsum_rule(ctx: RuleContext) -> R.Rule | None:
    """``torch.einsum(equation, a, b)`` (MaxViT's attention): as :func:`matmul_rule`, through the
    einsum's vector-Jacobian product (:class:`~conceptree.attribution.rules.EinsumRule`)."""
    args = ctx.args[1] if len(ctx.args) == 2 and isinstance(ctx.args[1], (tuple, list)) else ctx.args[1:]
    nodes = ctx.node.args[1] if len(ctx.node.args) == 2 and isinstance(ctx.node.args[1], (tuple, list)) else ctx.node.args[1:]
    equation = ctx.args[0]
    if not isinstance(equation, str) or len(args) != 2 or "..." in equation:
        raise ctx.unsupported("einsum of other than two operands with explicit indices")
    inputs, _ = equation.replace(" ", "").split("->")
    first = [term[0] for term in inputs.split(",")]
    output = equation.replace(" ", "").split("->")[1]
    if len(set(first)) != 1 or output[:1] != first[0]:
        raise ctx.unsupported("einsum whose operands and output do not share a leading batch index")
    kept = _product_operands(ctx, nodes)
    return None if kept is None else R.EinsumRule(equation, kept, args[0], args[1], ctx.out, _dense_epsilon(ctx))


def sdpa_rule(ctx: RuleContext) -> R.Rule:
    """``F.scaled_dot_product_attention``: CP-LRP, the attention weights held constant
    (:class:`~conceptree.attribution.rules.ScaledDotProductAttentionRule`)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    args = {name: (ctx.args[i] if len(ctx.args) > i else ctx.kwargs.get(name)) for i, name in enumerate(names)}
    value_node = ctx.node.args[2] if len(ctx.node.args) > 2 else ctx.node.kwargs.get("value")
    return R.ScaledDotProductAttentionRule(value_node, args["query"], args["key"], args["value"], args["attn_mask"],
                                           bool(args["is_causal"]), ctx.kwargs.get("scale"), _dense_epsilon(ctx),
                                           bool(ctx.kwargs.get("enable_gqa", False)))


def softmax_rule(ctx: RuleContext) -> R.Rule:
    """A softmax is only explained as a gate: it must never receive relevance (module docstring)."""
    return R.GateRule(ctx.arg0, f"softmax '{ctx.node.name}'")


def index_rule(ctx: RuleContext, inp: fx.Node, x: Tensor, fn: Callable[[Tensor], Tensor]) -> R.Rule:
    """Relevance follows the elements of a linear index map ``fn`` (checked to keep the batch)."""
    try:
        probe = fn(torch.zeros((2, *x.shape[1:]), dtype=x.dtype, device=x.device))
    except (IndexError, RuntimeError) as error:  # unbind(0) of a tensor whose first dimension is not the batch
        raise ctx.unsupported("indexing over the batch dimension") from error
    if tuple(probe.shape) != (2, *ctx.out.shape[1:]):
        raise ctx.unsupported("indexing over the batch dimension")
    return R.IndexRule(inp, fn, x.shape)


_EXTREMA = {torch.max, torch.min, "max", "min"}
_SPLITTERS = {torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind", "tensor_split", torch.tensor_split}


def getitem_rule(ctx: RuleContext) -> R.Rule:
    index = ctx.args[1]
    source_module = _called_module(ctx, ctx.arg0)
    if isinstance(source_module, nn.MultiheadAttention) and index == 0:
        return R.PassRule(ctx.arg0)  # the attention's output: its relevance is the module node's (AttentionRule)
    if isinstance(ctx.x, Tensor):
        return index_rule(ctx, ctx.arg0, ctx.x, lambda t: t[index])
    source = ctx.arg0
    split = source.target if source.op == "call_function" else str(source.target) if source.op == "call_method" else None
    if split in _EXTREMA and index == 0 and isinstance(source.args[0], fx.Node) and len(ctx.x) == 2:
        # the values of max/min over a dimension (VOLO's aux head: the largest token): relevance goes to the
        # element that won, as for max pooling (its gradient)
        dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim")
        keepdim = source.args[2] if len(source.args) > 2 else source.kwargs.get("keepdim", False)
        if isinstance(dim, int):
            inp = source.args[0]
            winners = ctx.x[1] if keepdim else ctx.x[1].unsqueeze(dim)

            def pick(t: Tensor) -> Tensor:
                picked = t.gather(dim, winners.expand(t.shape[0], *winners.shape[1:]))
                return picked if keepdim else picked.squeeze(dim)

            return index_rule(ctx, inp, ctx.values[inp], pick)
    if split in _SPLITTERS and isinstance(source.args[0], fx.Node):
        # an item of chunk/split/unbind: one index map from the split tensor
        inp = source.args[0]
        rest, kw = source.args[1:], dict(source.kwargs)
        fn_split = getattr(torch, split) if isinstance(split, str) else split
        x = ctx.values[inp]
        return index_rule(ctx, inp, x, lambda t: fn_split(t, *rest, **kw)[index])
    raise ctx.unsupported(f"indexing of a {type(ctx.x).__name__}")


def _called_module(ctx: RuleContext, node) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return ctx.owner.get_submodule(str(node.target))
    return None


def _attention_epsilon(ctx: RuleContext) -> Epsilon:
    """The dense layers' epsilon rule, which CP-LRP uses through the value and output projections."""
    spec = ctx.rule("linear")
    if not isinstance(spec, Epsilon):
        raise InputError(f"the attention's rule uses the dense layers' epsilon rule; got {spec.label} for node "
                         f"'{ctx.node.name}'; use the epsilon rule for dense layers")
    return spec


def layer_norm_rule(ctx: RuleContext) -> R.Rule:
    """LayerNorm: on a token sequence ``(B, N, C)`` (a transformer's) the standard deviation is held
    constant and the centring is linear, the bias absorbing its share
    (:class:`~conceptree.attribution.rules.TokenLayerNormRule`, with the dense layers' epsilon); on
    feature maps (ConvNeXt's channels-last LayerNorm) the statistics are held constant and relevance
    passes unchanged (module docstring)."""
    x = ctx.x
    if not (isinstance(x, Tensor) and x.ndim == 3):
        return R.PassRule(ctx.arg0)
    if ctx.module is not None:
        weight, bias, eps, shape = ctx.module.weight, ctx.module.bias, ctx.module.eps, tuple(ctx.module.normalized_shape)
    else:  # F.layer_norm(x, normalized_shape, weight, bias, eps)
        args = list(ctx.args) + [None] * 5
        shape = tuple(args[1] if args[1] is not None else ctx.kwargs.get("normalized_shape"))
        weight = args[2] if args[2] is not None else ctx.kwargs.get("weight")
        bias = args[3] if args[3] is not None else ctx.kwargs.get("bias")
        eps = args[4] if args[4] is not None else ctx.kwargs.get("eps", 1e-5)
    if shape != (x.shape[-1],):
        raise ctx.unsupported(f"LayerNorm over {shape} of a token sequence {tuple(x.shape)}")
    spec = ctx.rule("linear")
    return R.TokenLayerNormRule(ctx.arg0, x, weight, bias, eps, epsilon=getattr(spec, "epsilon", 1e-6))


def attention_rule(ctx: RuleContext) -> R.Rule:
    """``nn.MultiheadAttention``: CP-LRP (:class:`~conceptree.attribution.rules.AttentionRule`), the
    attention weights held constant, relevance through the values by the composite's ``linear`` rule's
    ``epsilon``. Masks are refused (a masked attention is another function of the input)."""
    names = ("query", "key", "value")
    nodes = [ctx.node.args[i] if len(ctx.node.args) > i else ctx.node.kwargs.get(name) for i, name in enumerate(names)]
    values = [ctx.args[i] if len(ctx.args) > i else ctx.kwargs.get(name) for i, name in enumerate(names)]
    if any(ctx.kwargs.get(name) is not None for name in ("key_padding_mask", "attn_mask")) or len(ctx.args) > 4:
        raise ctx.unsupported("masked attention")
    spec = _attention_epsilon(ctx)
    return R.AttentionRule.for_multihead(nodes[2], ctx.module, *values, epsilon=spec.epsilon,
                                         zero_bias=ctx.composite.zero_bias)


def timm_attention_rule(ctx: RuleContext) -> R.Rule:
    """timm's ``Attention`` (ViT, DeiT, ...): CP-LRP as :func:`attention_rule`; masks are refused."""
    if len(ctx.args) > 1 and ctx.args[1] is not None or ctx.kwargs.get("attn_mask") is not None \
            or ctx.kwargs.get("is_causal"):
        raise ctx.unsupported("masked attention")
    spec = _attention_epsilon(ctx)
    return R.AttentionRule.for_timm(ctx.arg0, ctx.module, ctx.x, epsilon=spec.epsilon, zero_bias=ctx.composite.zero_bias)


def expand_rule(ctx: RuleContext) -> R.Rule | None:
    """``expand``: relevance summed over the copies. A constant expanded to the batch (a class or
    register token) stays a constant: where it joins the tokens, it absorbs its share of the relevance,
    as a bias does."""
    if ctx.arg0 not in ctx.depends:
        return None
    if not isinstance(ctx.x, Tensor) or ctx.x.ndim != ctx.out.ndim:
        raise ctx.unsupported("expand that adds dimensions")
    return R.ExpandRule(ctx.arg0, ctx.x.shape, ctx.out.shape)


def repeat_rule(ctx: RuleContext) -> R.Rule | None:
    """``x.repeat(...)``: tiled copies, relevance summed over them (the batch must not be tiled). A
    constant repeated to the batch (XCiT's class token) stays a constant, as for ``expand``."""
    if ctx.arg0 not in ctx.depends:
        return None
    reps = ctx.args[1] if len(ctx.args) == 2 and isinstance(ctx.args[1], (tuple, list)) else ctx.args[1:]
    reps = tuple(int(r) for r in reps)
    if not isinstance(ctx.x, Tensor) or len(reps) != ctx.x.ndim or reps[0] != 1:
        raise ctx.unsupported("repeat that adds dimensions or tiles the batch")
    return R.RepeatRule(ctx.arg0, ctx.x.shape, reps)


def repeat_interleave_rule(ctx: RuleContext) -> R.Rule | None:
    """``x.repeat_interleave(r, dim)`` with an integer ``r``: copies in place, relevance summed over them; a
    constant stays a constant. Along the batch (GCViT's global query, one per image, repeated to each of
    its windows) it folds copies into the batch as a window partition does (the relevance batch stays
    outermost)."""
    if ctx.arg0 not in ctx.depends:
        return None
    repeats = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("repeats")
    dim = ctx.args[2] if len(ctx.args) > 2 else ctx.kwargs.get("dim")
    if not isinstance(repeats, int) or not isinstance(dim, int) or not isinstance(ctx.x, Tensor):
        raise ctx.unsupported("repeat_interleave without an integer count and a dimension")
    return R.RepeatInterleaveRule(ctx.arg0, repeats, dim % ctx.x.ndim)


def pad_rule(ctx: RuleContext) -> R.Rule:
    """Padding: index bookkeeping. Constant padding (any value): the padded cells are
    constants, so relevance that reaches them is not passed on (with ``-inf`` before a max
    pooling, as TensorFlow's ``same`` pooling is ported, they never receive any).
    ``reflect``/``replicate``/``circular`` padding copies input pixels: each padded cell's
    relevance goes back to the pixel it copies (the map's transpose, as for slicing), so the
    sum is conserved (TResNet's and other anti-aliased stems)."""
    args, kwargs = ctx.args, ctx.kwargs
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    pad = kwargs.get("pad", args[1] if len(args) > 1 else None)
    if mode == "constant":
        return index_rule(ctx, ctx.arg0, ctx.x, lambda t: F.pad(t, pad))
    if mode in ("reflect", "replicate", "circular"):
        return index_rule(ctx, ctx.arg0, ctx.x, lambda t: F.pad(t, pad, mode=mode))
    raise ctx.unsupported(f"F.pad(mode={mode!r}, value={value!r})")


def pad_module_rule(ctx: RuleContext) -> R.Rule:
    """``nn.ZeroPad2d``/``ConstantPad2d``/``ReflectionPad2d``/``ReplicationPad2d`` (NASNet's
    cells): index bookkeeping, as :func:`pad_rule`."""
    return index_rule(ctx, ctx.arg0, ctx.x, ctx.module)


def div_rule(ctx: RuleContext) -> R.Rule:
    """``x / c`` with a constant ``c`` (RepViT's averaged heads): scaling by a constant, so the
    z-rule gives ``R_x = R`` (as for a constant gate). A divisor that depends on the input is held
    constant when it is a normaliser, broadcast over the dividend (linear attention's
    ``(kv q) / (k_sum q)``, ConViT's renormalised attention weights), as a LayerNorm's deviation is;
    an elementwise ratio of two activations is refused."""
    nodes = ctx.node.args[:2]
    if len(nodes) == 2 and all(_is_gate(ctx, n) for n in nodes) and isinstance(nodes[0], fx.Node) \
            and nodes[0] in ctx.depends:
        return R.GateRule(nodes[0], f"the ratio of gates '{ctx.node.name}'")
    variable = len(nodes) == 2 and isinstance(nodes[1], fx.Node) and nodes[1] in ctx.depends
    normaliser = variable and isinstance(ctx.args[1], Tensor) and ctx.args[1].ndim == ctx.out.ndim and any(
        d == 1 < o for d, o in zip(ctx.args[1].shape[1:], ctx.out.shape[1:]))
    if len(nodes) != 2 or (variable and not normaliser):
        raise ctx.unsupported("division by an activation")
    if ctx.kwargs.get("rounding_mode") is not None:
        raise ctx.unsupported("division with rounding")
    if not isinstance(ctx.x, Tensor) or tuple(ctx.x.shape) != tuple(ctx.out.shape):
        raise ctx.unsupported("division that broadcasts the activation")
    return R.PassRule(ctx.arg0)


def permute_rule(ctx: RuleContext) -> R.Rule:
    """``permute``/``transpose``/``swapaxes`` (function or method): relevance follows the elements."""
    rest, kw = ctx.args[1:], ctx.kwargs
    target = ctx.node.target
    name = target if isinstance(target, str) else target.__name__
    dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
    if name == "permute":
        dims = tuple(kw.get("dims", dims))
        if dims[0] % ctx.x.ndim != 0:
            raise ctx.unsupported("a permutation that moves the batch dimension")
        return index_rule(ctx, ctx.arg0, ctx.x, lambda t: t.permute(*dims))
    d0 = kw.get("dim0", kw.get("axis0", rest[0] if rest else None))
    d1 = kw.get("dim1", kw.get("axis1", rest[1] if len(rest) > 1 else None))
    return index_rule(ctx, ctx.arg0, ctx.x, lambda t: t.transpose(d0, d1))


def cat_rule(ctx: RuleContext, stack: bool = False) -> R.Rule:
    tensors, nodes = ctx.args[0], ctx.node.args[0]
    dim = ctx.kwargs.get("dim", ctx.args[1] if len(ctx.args) > 1 else 0) % ctx.out.ndim
    if dim == 0:
        raise ctx.unsupported("concatenation over the batch dimension")
    # constant pieces (torch.zeros channels of a padding shortcut) are biases: they keep their relevance
    inputs = [n if isinstance(n, fx.Node) and n in ctx.depends else None for n in nodes]
    if stack:
        return R.StackRule(inputs, dim)
    return R.CatRule(inputs, [t.shape[dim] for t in tensors], dim)


def reduce_rule(ctx: RuleContext) -> R.Rule:
    target = ctx.node.target
    mean = target is torch.mean or target == "mean"
    rest, kwargs = ctx.args[1:], ctx.kwargs
    dim = kwargs.get("dim", rest[0] if rest else None)
    keepdim = bool(kwargs.get("keepdim", rest[1] if len(rest) > 1 else False))
    if dim is None:
        raise ctx.unsupported("sum/mean over all dimensions (includes the batch)")
    dims = tuple(d % ctx.x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    return R.ReduceRule(ctx.arg0, ctx.x, ctx.out, dims, keepdim, mean, ctx.norm_stabilizer())


def avg_pool_function_rule(ctx: RuleContext) -> R.Rule:
    target, rest, kw = ctx.node.target, ctx.args[1:], ctx.kwargs
    global_mean = target is F.adaptive_avg_pool2d and tuple(ctx.out.shape[-2:]) == (1, 1)
    return R.NormPoolRule(ctx.arg0, lambda t: target(t, *rest, **kw), ctx.x, ctx.out, global_mean,
                          ctx.norm_stabilizer())


def max_pool_function_rule(ctx: RuleContext) -> R.Rule:
    _, idx = ctx.node.target(*ctx.args, **{**ctx.kwargs, "return_indices": True})
    return R.MaxPoolRule(ctx.arg0, ctx.x, idx)


#: producers whose output is a gate when multiplied with features
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", "hardsigmoid"}


_GATE_FUNCTIONS |= {F.softmax, torch.softmax, "softmax"}
#: a normalisation's statistics (RMSNorm spelled out: ``x * rsqrt(x.pow(2).mean(1) + eps)``; GRN's ``x.norm()``)
_STATISTICS = {"pow", torch.pow, operator.pow, "rsqrt", torch.rsqrt, "sqrt", torch.sqrt, "norm", torch.norm,
               torch.linalg.vector_norm, "var", torch.var, "std", torch.std}
_GATE_FUNCTIONS |= _STATISTICS
#: ops a gate may pass through between its sigmoid/softmax and the product (shape only)
_GATE_RESHAPES = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "transpose", "swapaxes", "permute", "contiguous",
                  "expand", "expand_as", torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose,
                  torch.permute, operator.getitem, F.dropout}  # F.dropout: the identity in eval mode
#: arithmetic that keeps gates gates: ConViT's ``(1 - sigmoid(g)) * softmax(a) + sigmoid(g) * softmax(p)``,
#: renormalised by its sum, is attention weights still (every operand a gate or a constant)
_GATE_ARITHMETIC = {operator.mul, torch.mul, "mul", operator.add, torch.add, "add", operator.sub, torch.sub, "sub",
                    operator.truediv, torch.div, "div", "sum", torch.sum, "mean", torch.mean}


def _is_gate(ctx: RuleContext, node) -> bool:
    if not isinstance(node, fx.Node):
        return True
    if node not in ctx.depends:
        return True  # constant (a parameter such as a layer scale)
    while node.op in ("call_function", "call_method"):
        key = node.target if node.op == "call_function" else str(node.target)
        if key in _GATE_FUNCTIONS:
            return True
        if key in _GATE_ARITHMETIC:
            return all(_is_gate(ctx, arg) for arg in node.args if isinstance(arg, fx.Node))
        if key not in _GATE_RESHAPES or not node.args or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]  # follow a reshape of the gate back to its producer
    if node.op == "call_module":
        module = ctx.owner.get_submodule(node.target)
        talking_heads = isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        if (isinstance(module, (nn.Dropout, nn.Identity, nn.Linear)) or talking_heads) and node.args \
                and isinstance(node.args[0], fx.Node):
            # attention dropout (the identity in eval mode); CaiT's talking heads mix the attention weights
            # across heads with a dense layer (EfficientFormerV2's with a 1x1 conv): weights still, constant
            # under CP-LRP
            return _is_gate(ctx, node.args[0])
        return isinstance(module, (*_GATE_MODULES, nn.Softmax)) or type(module).__name__ in (
            "HardSigmoid", "Sigmoid", "GateSigmoid")
    return False


def statistic_rule(ctx: RuleContext) -> R.Rule:
    """A normalisation's statistic (``pow``, ``sqrt``, ``rsqrt``, ``norm``, ``var``, ``std``): held constant
    (the identity rule of a norm, statistics constant); relevance that reaches it is refused."""
    return R.StatisticRule(ctx.arg0, f"'{ctx.node.name}'")


def gate_rule(ctx: RuleContext) -> R.Rule:
    """``y = x * g`` with ``g`` a gate or a constant: all relevance to ``x`` (module docstring)."""
    nodes = list(ctx.node.args[:2])
    values = list(ctx.args[:2])
    if len(nodes) != 2:
        raise ctx.unsupported("multiplication")
    shapes = [tuple(v.shape) if isinstance(v, Tensor) else () for v in values]
    gates = [_is_gate(ctx, n) for n in nodes]
    if gates[0] != gates[1]:
        feature = gates.index(False)
    elif gates[0]:  # gates multiplied (ConViT's gated positional attention): a gate, never relevant
        return R.GateRule(nodes[0], f"the product of gates '{ctx.node.name}'")
    elif shapes[0] != shapes[1] and tuple(ctx.out.shape) in shapes:  # the broadcast operand (e.g. (1, C, 1, 1)) is the gate
        feature = 0 if shapes[0] == tuple(ctx.out.shape) else 1
    else:  # two activations multiplied (gated linear units, StarNet's star, FocalNet's modulation)
        return R.ProductRule(nodes, [v.shape for v in values], ctx.out.shape)
    if not isinstance(values[feature], Tensor) or tuple(values[feature].shape) != tuple(ctx.out.shape):
        raise ctx.unsupported("multiplication that broadcasts the features")
    return R.PassRule(nodes[feature])


#: elementwise activations, normalisations held constant, dropout-type identities (module docstring)
PASS_MODULE_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
    nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Softplus, nn.PReLU,
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
)
PASS_FUNCTION_KEYS = (
    F.relu, F.relu6, torch.relu, F.leaky_relu, F.hardtanh, F.dropout, F.dropout2d, F.silu, F.gelu, F.hardswish,
    F.mish, F.elu, F.selu, torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.tanh, F.tanh, F.softplus,
    F.layer_norm, F.group_norm, F.batch_norm,
    operator.neg, torch.neg,  # -x: each element keeps its own relevance (rotary embeddings' rotate_half)
)
PASS_METHOD_KEYS = ("relu", "contiguous", "clone", "detach", "sigmoid", "tanh", "float", "to", "type_as", "neg")
RESHAPE_METHOD_KEYS = ("view", "reshape", "flatten", "squeeze", "unsqueeze")
RESHAPE_FUNCTION_KEYS = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)


def _timm_pass_types() -> tuple[type, ...]:
    """timm's own activation and norm classes (when timm is installed)."""
    try:
        from timm.layers import activations, norm, norm_act
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    names = ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh", "QuickGELU",
             "PReLU")
    found = [getattr(activations, n) for n in names if isinstance(getattr(activations, n, None), type)]
    found += [getattr(norm, n) for n in ("LayerNorm", "LayerNorm2d", "GroupNorm", "GroupNorm1", *TIMM_RMS_NORMS)
              if isinstance(getattr(norm, n, None), type)]
    found += [getattr(norm_act, n) for n in ("BatchNormAct2d", "GroupNormAct", "LayerNormAct", "LayerNormAct2d")
              if isinstance(getattr(norm_act, n, None), type)]
    return tuple(found)


def _torchvision_pass_keys() -> tuple:
    """torchvision's stochastic depth (traced as a function; the identity in eval mode)."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()
    return (stochastic_depth,)


def default_rules() -> dict[RuleKey, RuleFactory]:
    """The built-in table (a fresh dict; :data:`DEFAULT_RULES` is the shared one)."""
    from .tracing import ZennitMergedBatchNorm

    table: dict[RuleKey, RuleFactory] = {
        nn.Conv2d: conv_rule,
        nn.Linear: linear_rule,
        ZennitMergedBatchNorm: merged_batchnorm_rule,
        nn.Flatten: reshape_rule,
        nn.MaxPool2d: _max_pool_module,
        nn.AdaptiveMaxPool2d: _adaptive_max_pool_module,
        nn.AvgPool2d: _avg_pool_module,
        nn.AdaptiveAvgPool2d: _avg_pool_module,
        nn.AvgPool1d: _avg_pool_1d_module,
        nn.Conv1d: conv1d_rule,
        nn.ConvTranspose2d: conv_transpose_rule,
        nn.Unfold: unfold_rule,
        nn.Fold: fold_rule,
        F.fold: fold_rule,
        F.unfold: unfold_rule,
        "module:Sum": _sum_module,
        "module:StarReLU": pass_rule,  # MetaFormer's s * relu(x)**2 + b: an elementwise activation
        operator.getitem: getitem_rule,
        nn.MultiheadAttention: attention_rule,
        "expand": expand_rule,
        F.pad: pad_rule,
        torch.cat: cat_rule,
        torch.concat: cat_rule,
        torch.stack: lambda ctx: cat_rule(ctx, stack=True),
        torch.sum: reduce_rule,
        torch.mean: reduce_rule,
        "sum": reduce_rule,
        "mean": reduce_rule,
        F.adaptive_avg_pool2d: avg_pool_function_rule,
        F.avg_pool2d: avg_pool_function_rule,
        F.max_pool2d: max_pool_function_rule,
        F.adaptive_max_pool2d: max_pool_function_rule,
        operator.add: add_rule,
        operator.iadd: add_rule,
        torch.add: add_rule,
        "add": add_rule,
        operator.sub: sub_rule,
        operator.isub: sub_rule,
        torch.sub: sub_rule,
        "sub": sub_rule,
        operator.mul: gate_rule,
        operator.imul: gate_rule,
        torch.mul: gate_rule,
        "mul": gate_rule,
        torch.permute: permute_rule,
        torch.transpose: permute_rule,
        "permute": permute_rule,
        "transpose": permute_rule,
        torch.swapaxes: permute_rule,  # MaxViT's: a transpose
        "swapaxes": permute_rule,
        nn.ZeroPad2d: pad_module_rule,
        nn.ConstantPad2d: pad_module_rule,
        nn.ReflectionPad2d: pad_module_rule,
        nn.ReplicationPad2d: pad_module_rule,
        operator.truediv: div_rule,
        operator.itruediv: div_rule,
        torch.div: div_rule,
        "div": div_rule,
        nn.Upsample: interpolate_rule,
        F.interpolate: interpolate_rule,
        F.conv2d: functional_conv_rule,
        torch.conv2d: functional_conv_rule,
        F.softmax: softmax_rule,
        torch.softmax: softmax_rule,
        "softmax": softmax_rule,
        nn.Softmax: softmax_rule,
        operator.matmul: matmul_rule,
        torch.matmul: matmul_rule,
        torch.bmm: matmul_rule,
        "matmul": matmul_rule,
        "bmm": matmul_rule,
        F.scaled_dot_product_attention: sdpa_rule,
        torch.einsum: einsum_rule,
        F.linear: functional_linear_rule,
        "select": select_rule,
        torch.roll: roll_rule,
        "roll": roll_rule,
        "repeat": repeat_rule,
        "repeat_interleave": repeat_interleave_rule,
        torch.repeat_interleave: repeat_interleave_rule,
        torch.select: select_rule,
        F.normalize: pass_rule,  # x / |x| with the norm held constant, as a LayerNorm's deviation
    }
    for key in _STATISTICS:
        table[key] = statistic_rule
    for key in (*CONSTANT_FUNCTION_KEYS, *CONSTANT_METHOD_KEYS):
        table[key] = constant_rule
    for key in (*PASS_MODULE_TYPES, *_timm_pass_types(), *_torchvision_pass_keys(), *PASS_FUNCTION_KEYS, *PASS_METHOD_KEYS):
        table.setdefault(key, pass_rule)
    for key in (*RESHAPE_METHOD_KEYS, *RESHAPE_FUNCTION_KEYS):
        table[key] = reshape_rule
    for key in _timm_attention_types():
        table[key] = timm_attention_rule
    for key in (nn.LayerNorm, F.layer_norm, *_timm_layer_norms()):
        table[key] = layer_norm_rule
    return table


def _timm_layer_norms() -> tuple[type, ...]:
    """timm's LayerNorm over the last dimension (its token models'), when timm is installed."""
    try:
        from timm.layers import LayerNorm
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    return (LayerNorm,)


def _timm_attention_types() -> tuple[type, ...]:
    """timm's self-attention module (ViT, DeiT and the families that reuse it), when timm is installed."""
    try:
        from timm.layers import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    return (Attention,)


def lookup(table: Mapping[RuleKey, RuleFactory], node: fx.Node, module: nn.Module | None) -> RuleFactory | None:
    """The factory for ``node``: by the module's MRO, the function, or the method name."""
    if node.op == "call_module":
        for cls in type(module).__mro__:
            if cls in table:
                return table[cls]
        return table.get(f"module:{type(module).__name__}")
    if node.op == "call_function":
        try:
            return table.get(node.target)
        except TypeError:  # unhashable target
            return None
    name = str(node.target)
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return table.get(name)


@functools.cache
def _builtin_table() -> Mapping[RuleKey, RuleFactory]:
    """The built-in table, read-only (what an added specification's entry falls back to)."""
    return MappingProxyType(default_rules())


def spec_factory(spec: RuleSpec) -> RuleFactory:
    """The table entry of a specification added for a key (``with_rule(nn.Conv2d, Gamma(gamma=0.5))``):
    the built-in entry of the node, with ``spec`` replacing the layer map's rule."""

    def factory(ctx: RuleContext) -> R.Rule | None:
        builtin = lookup(_builtin_table(), ctx.node, ctx.module)
        if builtin is None:
            raise ctx.unsupported(f"node for the added rule {spec.label}")
        ctx.override, ctx.override_used = spec, False
        try:
            rule = builtin(ctx)
        finally:
            ctx.override = None
        if not ctx.override_used and not ctx.first:
            raise InputError(f"the rule {spec.label} was added for node '{ctx.node.name}', whose built-in rule has no "
                             "parameters to set; add it for a convolution, dense, sum or pooling layer")
        return rule

    factory.__qualname__ = factory.__name__ = f"spec_factory({spec.label})"
    return factory


def composite_table(extra_rules: tuple[tuple[object, RuleSpec], ...]) -> dict[RuleKey, RuleFactory]:
    """The built-in table with a composite's added rules on top (:meth:`Composite.rule_table`):
    a custom rule's factory itself, a built-in specification through :func:`spec_factory`."""
    table = default_rules()
    for key, spec in extra_rules:
        table[key] = spec.target if isinstance(spec, Custom) else spec_factory(spec)  # type: ignore[index,assignment]
    return table


_DEPRECATED = {"FIRST_CONV_RULE": R.FlatConvRule, "FIRST_LINEAR_RULE": R.FlatLinearRule}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warnings.warn(f"conceptree.attribution.rule_table.{name} is no longer consulted: the first layer's rule is "
                      "the composite's first_layer_map (Composite(first_layer_map={...})); the name goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return _DEPRECATED[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
