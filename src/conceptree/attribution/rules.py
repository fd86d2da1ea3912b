"""Batched LRP rules, one object per graph node.

Each rule is built once per forward pass from the node's (batch-1) inputs, stores the
quantities that do not depend on the upper relevance (modified weights and inputs,
stabilised denominators) and then maps relevance batches ``R`` of shape
``(B, *activation.shape[1:])`` to its inputs. All rules are linear in ``R``, which is what
lets one forward pass serve any number of conditional maps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError

#: stabiliser of the norm rules when none is given (``Norm().stabilizer``'s default).
NORM_STABILIZER = 1e-6


def channels_last(t: Tensor) -> Tensor:
    """4-D tensors in channels-last layout: the CPU (oneDNN) transposed convolutions run 1.4-2.5x
    faster on it (measured here on depthwise and 1x1 layers); other tensors unchanged."""
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (zennit's ``stabilize``)."""
    return z + ((z == 0).to(z) + z.sign()) * eps


class Rule:
    """Maps a relevance batch at a node's output to its tensor inputs."""

    inputs: tuple[fx.Node, ...] = ()
    #: The node's activations are channels-last ``(N, H, W, C)`` (a dense layer applied per
    #: position, :class:`PointwiseLinearRule`): the engine permutes its layer relevance.
    channels_last: bool = False

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        raise NotImplementedError

    def use_channels_last(self) -> None:
        """Store 4-D rule tensors channels-last (:func:`channels_last`).

        The engine calls it once per forward pass before the first batch of conditional
        maps, where the faster transposed convolutions repay the copies; a pass that serves
        one backward per image (:meth:`CRPEngine.attribute`, ``attribute_batch``) skips it.
        """

    def cast(self, dtype: torch.dtype) -> Rule:
        """A shallow copy whose floating tensors (also inside lists, tuples and nested rules)
        are cast to ``dtype``, memory format kept: the same rule for a cheaper batched pass."""
        new = copy.copy(self)
        for key, value in vars(self).items():
            setattr(new, key, _cast(value, dtype))
        return new


def _init_parameters(rule: Rule, composite: Any, params: dict[str, Any]) -> None:
    """Store a conv/dense variant's parameters on ``rule``: those given, else (the previous
    release's way, a rule built with a composite) the composite's attribute of that name, else
    the class default. A parameter is one named in the class's ``parameters`` or a public
    numeric class attribute (a subclass's ``gamma = 0.25``)."""
    cls = type(rule)
    declared: tuple[str, ...] = getattr(cls, "parameters", ())
    for key, value in params.items():
        if key not in declared and (key.startswith("_") or type(getattr(cls, key, None)) not in (int, float)):
            raise TypeError(f"{cls.__name__} has no parameter {key!r}; its parameters are {', '.join(declared)}")
        setattr(rule, key, value)
    if composite is not None:
        for key in declared:
            if key not in params and hasattr(composite, key):
                setattr(rule, key, getattr(composite, key))


def _cast(value, dtype: torch.dtype):
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Rule):
        return value.cast(dtype)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class PassRule(Rule):
    """Identity: elementwise activations, dropout, identity, ``contiguous``."""

    def __init__(self, inp: fx.Node) -> None:
        self.inputs = (inp,)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(self.inputs[0], relevance)]


class ModifiedInPlaceRule(Rule):
    """A tensor that ``forward`` writes into in place (``attn[..., i:, i:] = ...``) after it was computed
    (MViTv2's relative-position term on the attention logits, a softmax gate's input): relevance that
    reaches it would miss the write, so it is refused rather than misattributed."""

    def __init__(self, inp: fx.Node | None, what: str) -> None:
        self.inputs = () if inp is None else (inp,)
        self.what = what

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        if bool(relevance.abs().max() > 0):
            raise UnsupportedModelError(
                f"relevance reached {self.what}, which forward() modifies in place; write it out of place "
                "(torch.where, torch.cat or index_put) so that the write has its own node"
            )
        return [(inp, relevance) for inp in self.inputs]


class RefusedRule(Rule):
    """A node no rule explains (an unregistered op, an einsum the table cannot read) whose output may
    still never receive relevance: the query and key side of attention, a positional term on the
    attention logits. Relevance that reaches it raises the refusal it was built with."""

    def __init__(self, error: UnsupportedModelError) -> None:
        self.error = error

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        if bool(relevance.abs().max() > 0):
            raise UnsupportedModelError(str(self.error))
        return []


class GateRule(Rule):
    """A gate (softmax over branches) that the rules around it never pass relevance to; relevance
    that reaches it anyway means it is not a gate here, and is refused rather than dropped."""

    #: what the op is explained as, and the fix, in the refusal
    explained_as = "a gate over branches (ResNeSt, SKNet); return logits, not probabilities, or register a rule for it"

    def __init__(self, inp: fx.Node, what: str) -> None:
        self.inputs = (inp,)
        self.what = what

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        if bool(relevance.abs().max() > 0):
            raise UnsupportedModelError(f"relevance reached {self.what}, which conceptree explains only as {self.explained_as}")
        return [(self.inputs[0], relevance)]


class StatisticRule(GateRule):
    """A normalisation's statistic (``x.pow(2).mean()``, ``x.norm()``, ``rsqrt``): held constant, as a
    LayerNorm's deviation is, so the products and divisions that apply it pass relevance to the features."""

    explained_as = ("a normalisation's statistic, held constant; register a rule for it if it is a feature "
                    "(Composite().with_rule)")


class ProductRule(Rule):
    """``y = a * b`` of two activations: AttnLRP's uniform rule, ``R_a = R_b = R / 2`` (each
    summed over the dimensions its operand was broadcast along)."""

    def __init__(self, inputs: Sequence[fx.Node], shapes: Sequence[torch.Size], out_shape: torch.Size) -> None:
        self.inputs = tuple(inputs)
        self.shapes = [tuple(shape[1:]) for shape in shapes]
        self.out_shape = tuple(out_shape[1:])
        for shape in self.shapes:
            if len(shape) != len(self.out_shape):
                raise UnsupportedModelError(
                    f"product of activations of ranks {[len(s) + 1 for s in self.shapes]}; multiply tensors of equal rank"
                )

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        half = relevance / 2
        result = []
        for node, shape in zip(self.inputs, self.shapes):
            dims = [i + 1 for i, (n, m) in enumerate(zip(shape, self.out_shape)) if n == 1 and m != 1]
            result.append((node, half.sum(dims, keepdim=True) if dims else half))
        return result


class ScaleRule(Rule):
    """Multiplication by a constant, relevance scaled like a gradient (zennit 0.4 merged BN)."""

    def __init__(self, inp: fx.Node, scale: float) -> None:
        self.inputs = (inp,)
        self.scale = scale

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(self.inputs[0], relevance * self.scale)]


class ReshapeRule(Rule):
    """``view``/``reshape``/``flatten``: relevance follows the elements."""

    def __init__(self, inp: fx.Node, in_shape: torch.Size, out_shape: torch.Size, what: str) -> None:
        self.folds = in_shape[0] != out_shape[0]
        if self.folds and not (_folds_batch(in_shape, out_shape) or _folds_batch(out_shape, in_shape)):
            raise UnsupportedModelError(
                f"{what} mixes the batch dimension ({tuple(in_shape)} -> {tuple(out_shape)}); "
                "keep the batch dimension first and separate"
            )
        self.inputs = (inp,)
        self.in_shape = tuple(in_shape[1:])

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        if self.folds:  # windows folded into (or out of) the batch: the relevance batch stays outermost
            return [(self.inputs[0], relevance.reshape((-1,) + self.in_shape))]
        return [(self.inputs[0], relevance.reshape((relevance.shape[0],) + self.in_shape))]


def _folds_batch(small: Sequence[int], large: Sequence[int]) -> bool:
    """Whether ``large[0]`` is ``small[0]`` times the next dimensions of ``small`` (windows folded into the
    batch, as Swin's window partition does), the rest of ``small`` being ``large[1:]`` reshaped."""
    merged, j = small[0], 1
    while merged < large[0] and j < len(small):
        merged *= small[j]
        j += 1
    return merged == large[0] and math.prod(small[j:]) == math.prod(large[1:])


def _vjp_linear(fn: Callable[[Tensor], Tensor], in_shape: Sequence[int], relevance: Tensor) -> Tensor:
    """Vector-Jacobian product of a linear, batch-wise op ``fn`` applied to ``(B, *in_shape)``."""
    zeros = torch.zeros(
        (relevance.shape[0], *in_shape), dtype=relevance.dtype, device=relevance.device, requires_grad=True
    )
    with torch.enable_grad():
        out = fn(zeros)
        (grad,) = torch.autograd.grad(out, zeros, grad_outputs=relevance)
    return grad


class IndexRule(Rule):
    """Linear bookkeeping ops (slicing, constant padding): relevance follows the gradient."""

    def __init__(self, inp: fx.Node, fn: Callable[[Tensor], Tensor], in_shape: torch.Size) -> None:
        self.inputs = (inp,)
        self.fn = fn
        self.in_shape = tuple(in_shape[1:])

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(self.inputs[0], _vjp_linear(self.fn, self.in_shape, relevance))]


class NormPoolRule(Rule):
    """Average pooling with zennit's ``Norm`` rule: ``R_in = x * pool^T(R / stab(pool(x)))``."""

    def __init__(
        self, inp: fx.Node, fn: Callable[[Tensor], Tensor], x: Tensor, out: Tensor, global_mean: bool = False,
        eps: float = NORM_STABILIZER,
    ) -> None:
        self.inputs = (inp,)
        self.fn = fn
        self.x = x
        self.global_mean = global_mean
        self.inv_z = 1.0 / stabilize(out, eps)

    def use_channels_last(self) -> None:
        self.x, self.inv_z = channels_last(self.x), channels_last(self.inv_z)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        if self.global_mean:
            # global average pool: its transpose is a broadcast divided by H*W
            area = self.x.shape[-1] * self.x.shape[-2]
            return [(self.inputs[0], self.x * ((relevance * self.inv_z) / area))]
        grad = _vjp_linear(self.fn, tuple(self.x.shape[1:]), relevance * self.inv_z)
        return [(self.inputs[0], self.x * grad)]


class UnsqueezedRule(Rule):
    """A 1-D op explained by its 2-D rule on a height-1 view: relevance ``(B, C, L)`` enters the inner
    rule as ``(B, C, 1, L)`` and leaves squeezed (``nn.Conv1d`` through the conv rule, pooling)."""

    def __init__(self, inner: Rule) -> None:
        self.inner = inner
        self.inputs = inner.inputs

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(node, part.squeeze(2)) for node, part in self.inner.backward(relevance.unsqueeze(2))]


class MaxPoolRule(Rule):
    """Max pooling: relevance goes to the maximum of each window (the gradient)."""

    def __init__(self, inp: fx.Node, x: Tensor, indices: Tensor) -> None:
        self.inputs = (inp,)
        self.in_shape = tuple(x.shape[1:])
        self.indices = indices.flatten(2)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        batch, channels = relevance.shape[:2]
        out = relevance.new_zeros((batch, channels, math.prod(self.in_shape[1:])))
        out.scatter_add_(2, self.indices.expand(batch, -1, -1), relevance.flatten(2))
        return [(self.inputs[0], out.view((batch, *self.in_shape)))]


class SumRule(Rule):
    """Residual addition with zennit's ``Norm`` rule: ``R_i = x_i * R / stab(sum_j x_j)``.

    With ``flat_zero`` (the composite's ``dead_units="flat"``), an element whose sum is exactly
    zero splits its relevance equally among the addends instead: there the shares ``x_i / 0``
    are undefined, and relevance can reach it only from a dead unit's flat spread above (all
    addends zero, as after ReLUs with zero-initialised affine biases in HGNetV2), which the
    ``Norm`` rule would drop (22 % of HGNetV2-B0's logit, measured).
    """

    def __init__(self, inputs: Sequence[fx.Node], values: Sequence[Tensor], out: Tensor, eps: float = NORM_STABILIZER,
                 flat_zero: bool = False) -> None:
        for value in values:
            if value.shape != out.shape:
                raise UnsupportedModelError(
                    f"broadcasting addition {tuple(value.shape)} + ... -> {tuple(out.shape)} is not "
                    "supported; add tensors of equal shape"
                )
        self.inputs = tuple(inputs)
        self.values = list(values)
        self.inv_z = 1.0 / stabilize(out, eps)
        self.flat: Tensor | None = None
        if flat_zero:
            zero = out == 0
            if bool(zero.any()):
                self.inv_z = self.inv_z.masked_fill(zero, 0.0)
                self.flat = zero.to(out.dtype) / len(self.values)

    def use_channels_last(self) -> None:
        self.values = [channels_last(v) for v in self.values]
        self.inv_z = channels_last(self.inv_z)
        if self.flat is not None:
            self.flat = channels_last(self.flat)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        scaled = relevance * self.inv_z
        if self.flat is None:
            return [(node, value * scaled) for node, value in zip(self.inputs, self.values)]
        even = relevance * self.flat
        return [(node, value * scaled + even) for node, value in zip(self.inputs, self.values)]


class ReduceRule(Rule):
    """``sum``/``mean`` over non-batch dims (e.g. zennit's stack-and-sum) with the ``Norm`` rule."""

    def __init__(self, inp: fx.Node, x: Tensor, out: Tensor, dims: tuple[int, ...], keepdim: bool, mean: bool,
                 eps: float = NORM_STABILIZER) -> None:
        if 0 in dims:
            raise UnsupportedModelError("a sum/mean over the batch dimension cannot be explained; reduce other dims")
        self.inputs = (inp,)
        self.x = x
        self.dims = tuple(sorted(dims))
        self.keepdim = keepdim
        self.scale = 1.0 / math.prod(x.shape[d] for d in dims) if mean else 1.0
        self.inv_z = 1.0 / stabilize(out, eps)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        scaled = relevance * self.inv_z * self.scale
        if not self.keepdim:
            for dim in self.dims:
                scaled = scaled.unsqueeze(dim)
        return [(self.inputs[0], self.x * scaled)]


class CatRule(Rule):
    """``torch.cat``: split the relevance along the concatenation axis. ``None`` marks a constant
    piece (a tensor built from shapes only): its slice of relevance is not passed on, as a bias's."""

    def __init__(self, inputs: Sequence[fx.Node | None], sizes: Sequence[int], dim: int) -> None:
        self.pieces = tuple(inputs)
        self.inputs = tuple(n for n in inputs if n is not None)
        self.sizes = list(sizes)
        self.dim = dim

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        parts = torch.split(relevance, self.sizes, dim=self.dim)
        return [(node, part) for node, part in zip(self.pieces, parts) if node is not None]

    def absorbed(self, relevance: Tensor) -> Tensor | None:
        """``(B,)`` float64: the relevance on the constant pieces (a class token's); None without any."""
        if None not in self.pieces:
            return None
        parts = torch.split(relevance, self.sizes, dim=self.dim)
        return sum(part.double().flatten(1).sum(1) for node, part in zip(self.pieces, parts) if node is None)  # type: ignore[return-value]


class StackRule(Rule):
    """``torch.stack``: unbind the relevance along the new axis (``None``: a constant piece)."""

    def __init__(self, inputs: Sequence[fx.Node | None], dim: int) -> None:
        self.pieces = tuple(inputs)
        self.inputs = tuple(n for n in inputs if n is not None)
        self.dim = dim

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(node, part) for node, part in zip(self.pieces, torch.unbind(relevance, dim=self.dim)) if node is not None]


def conv_transpose(
    grad: Tensor, weight: Tensor, size: Sequence[int], stride, padding, dilation, groups: int
) -> Tensor:
    """Input-gradient of a convolution (``size`` = input shape), via ``conv_transpose2d``.

    Measured here 15-30 % faster than ``torch.nn.grad.conv2d_input`` on depthwise layers
    (it expands a dummy input, which pushes the CPU backend to a slower kernel).
    """
    out_padding = [
        size[2 + i] - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1)
        for i in range(2)
    ]
    return F.conv_transpose2d(grad, weight, None, stride, padding, out_padding, groups, dilation)


def _same_pads(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """TF-style 'same' padding as timm's ``Conv2dSame`` computes it: [left, right, top, bottom]."""
    pads: list[int] = []
    for size, k, s, d in zip(reversed(in_size), reversed(kernel), reversed(stride), reversed(dilation)):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


def conv_geometry(module: nn.Conv2d, x: Tensor, name: str) -> tuple[list[int], tuple[int, int]]:
    """Explicit input padding (F.pad order) and conv padding that reproduce ``module(x)``."""
    if module.padding_mode != "zeros":
        raise UnsupportedModelError(
            f"conv '{name}' uses padding_mode={module.padding_mode!r}; only zero padding is supported"
        )
    if type(module).__name__ == "Conv2dSame":
        pads = _same_pads(x.shape[-2:], module.kernel_size, module.stride, module.dilation)
        return pads, (0, 0)
    if type(module) is not nn.Conv2d:
        raise UnsupportedModelError(
            f"conv '{name}' is a {type(module).__name__} with a custom forward(); use nn.Conv2d "
            "(or timm's Conv2dSame) so that LRP rules apply"
        )
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [0, 0, 0, 0], (0, 0)
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads, (0, 0)
    return [0, 0, 0, 0], tuple(module.padding)  # type: ignore[return-value]


class ConvRule(Rule):
    """An LRP rule of a 2-D convolution (BatchNorm already merged): the base of the variants.

    The base holds what every variant shares: the geometry (explicit padding), the check that
    the module computes a plain convolution, the stabilised denominator and the batched
    backward pass. A variant (zennit's shape: one class per rule) only says how the
    contributions are formed, in :meth:`contributions`: :class:`ZPlusConvRule`,
    :class:`EpsilonConvRule`, :class:`FlatConvRule`, :class:`GammaConvRule`. A variant's
    hyperparameters are constructor keywords stored on the rule (:attr:`parameters`, e.g.
    ``GammaConvRule(..., gamma=0.5)``) and read from ``self`` in :meth:`contributions`. A new
    variant is one subclass (its parameters as class defaults, named in ``parameters``)
    registered with :func:`conceptree.attribution.rule_table.conv_variant`, which takes the values.

    ``terms`` holds ``(input_factor, weight)`` pairs; the input relevance is
    ``sum_t input_factor_t * convT(weight_t, R * inv_z)`` (``input_factor`` None = 1), with
    ``inv_z = 1 / stab(z)`` (or exactly ``1 / z`` and the flat rule on dead units, see below).
    """

    #: ``z`` is a sum of non-negative terms, so it may be divided exactly where ``z > 0`` and a
    #: dead unit (``z == 0``) spreads its relevance flat (``Composite(dead_units="flat")``)
    nonnegative: bool = False
    #: the constructor's keyword parameters (a variant adds its own, e.g. ``epsilon``, ``gamma``)
    parameters: ClassVar[tuple[str, ...]] = ("stabilizer", "zero_bias", "dead_units")
    #: stabiliser of the denominator (zennit's ``stabilizer``)
    stabilizer: float = 1e-6
    #: biases left out of the denominator (``Composite.zero_bias``)
    zero_bias: bool = True
    #: ``"flat"``: a dead unit of a non-negative variant spreads its relevance (``Composite.dead_units``)
    dead_units: str = "flat"

    def __init__(self, inp: fx.Node, module: nn.Conv2d, x: Tensor, out: Tensor, composite: Any = None,
                 name: str = "conv", validate: bool = True, constants: dict | None = None, **params: Any) -> None:
        """``params``: the variant's parameters (:attr:`parameters`), e.g. ``stabilizer=1e-6``.
        ``composite`` (optional, the previous release's way) gives those not passed and is handed
        to :meth:`contributions` for variants that read it."""
        _init_parameters(self, composite, params)
        self.inputs = (inp,)
        self.name = name
        self.pads, self.padding = conv_geometry(module, x, name)
        self.stride = module.stride
        self.dilation = module.dilation
        self.groups = module.groups
        xp = F.pad(x, self.pads) if any(self.pads) else x
        self.padded_shape = tuple(xp.shape[1:])
        weight, bias = module.weight, module.bias
        check = F.conv2d(xp, weight, bias, self.stride, self.padding, self.dilation, self.groups) if validate else out
        if check.shape != out.shape or validate and not torch.allclose(
                check, out, rtol=1e-4, atol=1e-5 * float(out.abs().max()) + 1e-6):
            raise UnsupportedModelError(
                f"conv '{name}' ({type(module).__name__}) does not compute a plain convolution; "
                "replace its custom forward with nn.Conv2d"
            )
        use_bias = bias is not None and not self.zero_bias
        # values that depend only on the module and the input's shape are kept per engine
        const = constants if constants is not None else {}

        def constant(what: str, make: Callable[[], Tensor]) -> Tensor:
            key = (name, what, tuple(x.shape), x.dtype)
            if key not in const:
                const[key] = make()
            return const[key]

        self.terms: list[tuple[Tensor | None, Tensor]]
        self.terms, z, eps = self.contributions(xp, weight, bias if use_bias else None, composite, constant)
        # dead_units="flat": z+ is a sum of non-negative terms, so R * (x_i w_i / z) needs no
        # stabiliser when z > 0 (each share is <= 1) and conserves exactly. A unit with z == 0
        # (active through its bias alone, e.g. a depthwise window of zeros) has no positive
        # input to credit; its relevance is spread uniformly over its receptive field (the
        # flat rule) instead of being dropped. Layers without such units pay nothing.
        self.has_dead_units = False
        if self.nonnegative and self.dead_units == "flat":
            dead = z <= 1e-30
            self.inv_z = (1.0 / z).masked_fill_(dead, 0.0)
            if bool(dead.any()):
                def make_count() -> Tensor:
                    ones_x = F.pad(torch.ones_like(x[:1]), self.pads) if any(self.pads) else torch.ones_like(x[:1])
                    kernel = torch.ones((self.groups, 1, *weight.shape[2:]), dtype=weight.dtype, device=weight.device)
                    count = F.conv2d(ones_x[:, :1].expand(-1, self.groups, -1, -1).contiguous(), kernel, None,
                                     self.stride, self.padding, self.dilation, self.groups)
                    return (count * (x.shape[1] // self.groups)).repeat_interleave(z.shape[1] // self.groups, dim=1)

                count = constant("flat_count", make_count)  # (1, C_out, H, W): inputs under each unit
                kernel = torch.ones((self.groups, 1, *weight.shape[2:]), dtype=weight.dtype, device=weight.device)
                self.flat_share = torch.where(dead, 1.0 / count.clamp(min=1), 0.0)  # (1, C_out, H, W)
                self.flat_kernel = kernel[:1]
                self.has_dead_units = True
        else:
            self.inv_z = 1.0 / stabilize(z, eps)

    def use_channels_last(self) -> None:
        self.inv_z = channels_last(self.inv_z)
        self.terms = [(None if f is None else channels_last(f), channels_last(w)) for f, w in self.terms]
        if self.has_dead_units:
            self.flat_share = channels_last(self.flat_share)

    def _crop(self, rel: Tensor) -> Tensor:
        left, right, top, bottom = self.pads
        if not any(self.pads):
            return rel
        height, width = rel.shape[-2:]
        return rel[..., top : height - bottom, left : width - right]

    def _flat_backward(self, relevance: Tensor, total: Tensor) -> None:
        """Add the flat-rule input relevance of the dead units of ``relevance`` to ``total``.

        ``flat_share`` is zero outside dead units, so this is dense: per group, sum the
        output channels, transpose an all-ones kernel, broadcast over the group's inputs.
        """
        batch = relevance.shape[0]
        c_in_total, height, width = self.padded_shape
        c_in = c_in_total // self.groups
        spread = relevance * self.flat_share
        if self.groups == 1:
            per_group = spread.sum(1, keepdim=True)
        elif spread.shape[1] == self.groups:
            per_group = spread
        else:
            per_group = spread.reshape(batch, self.groups, -1, *spread.shape[2:]).sum(2)
        kernel = self.flat_kernel.expand(self.groups, -1, -1, -1)
        grad = conv_transpose(per_group, kernel, (batch, self.groups, height, width),
                              self.stride, self.padding, self.dilation, self.groups)
        if c_in == 1 or self.groups == 1:
            total.add_(grad)  # one input per group, or one group broadcast over all inputs
        else:
            total.add_(grad.repeat_interleave(c_in, dim=1))

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        size = (relevance.shape[0], *self.padded_shape)
        scaled = relevance * self.inv_z
        total: Tensor | None = None
        for factor, weight in self.terms:
            grad = conv_transpose(scaled, weight, size, self.stride, self.padding, self.dilation, self.groups)
            if factor is not None:
                grad.mul_(factor)
            total = grad if total is None else total.add_(grad)
        assert total is not None
        if self.has_dead_units:
            self._flat_backward(relevance, total)
        return [(self.inputs[0], self._crop(total))]

    def backward_channels(self, relevance: Tensor, channels: Tensor) -> list[tuple[fx.Node, Tensor]]:
        """Backward of ``relevance`` masked to one output channel per batch row.

        Equal to ``backward(R_b)`` with ``R_b`` = ``relevance`` (batch 1) zeroed outside
        channel ``channels[b]``, at 1/C of the cost: only the selected filters are transposed.
        """
        batch = channels.numel()
        c_in_total, height, width = self.padded_shape
        c_in = c_in_total // self.groups
        c_out_per_group = self.inv_z.shape[1] // self.groups
        group_of = channels // c_out_per_group
        in_index = group_of[:, None] * c_in + torch.arange(c_in, device=channels.device)[None, :]  # (B, c_in)
        total: Tensor | None = None
        scaled = (relevance * self.inv_z)[0, channels].unsqueeze(0)  # (1, B, H, W)
        for factor, weight in self.terms:
            grad = conv_transpose(
                scaled, weight[channels], (1, batch * c_in, height, width),
                self.stride, self.padding, self.dilation, batch,
            ).view(batch, c_in, height, width)
            if factor is not None:
                grad = grad * (factor[0] if self.groups == 1 else factor[0][in_index])
            total = grad if total is None else total + grad
        assert total is not None
        if self.has_dead_units:
            spread = (relevance * self.flat_share)[0, channels].unsqueeze(0)  # (1, B, H, W), 0 if not dead
            kernel = self.flat_kernel.expand(batch, -1, -1, -1)
            flat = conv_transpose(spread, kernel, (1, batch, height, width), self.stride, self.padding, self.dilation, batch)
            total = total + flat.view(batch, 1, height, width)
        if self.groups != 1:
            full = total.new_zeros((batch, c_in_total, height, width))
            full.scatter_(1, in_index[:, :, None, None].expand(-1, -1, height, width), total)
            total = full
        return [(self.inputs[0], self._crop(total))]

    def conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The module's convolution (after the explicit padding) with another weight and bias."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def contributions(self, xp: Tensor, weight: Tensor, bias: Tensor | None, composite: Any,
                      constant: Callable[[str, Callable[[], Tensor]], Tensor]
                      ) -> tuple[list[tuple[Tensor | None, Tensor]], Tensor, float]:
        """The variant: ``(terms, z, eps)`` for the padded input ``xp`` ``(1, C, H, W)``.

        ``bias`` is None when biases are left out (``zero_bias``); ``constant(what, make)``
        caches a value that depends only on the weight and the input's shape. A variant reads
        its parameters from ``self`` (``composite`` is the constructor's, usually None).
        """
        raise NotImplementedError


class ZPlusConvRule(ConvRule):
    """z+: ``z = W+ x+ + W- x- (+ b+)``, the positive contributions (zennit's ``ZPlus``)."""

    nonnegative = True

    def contributions(self, xp, weight, bias, composite, constant):  # type: ignore[no-untyped-def]
        w_pos = constant("w_pos", lambda: weight.clamp(min=0))
        has_negative = bool(xp.min() < 0)
        x_pos = xp.clamp(min=0) if has_negative else xp
        z = self.conv(x_pos, w_pos, bias.clamp(min=0) if bias is not None else None)
        terms: list[tuple[Tensor | None, Tensor]] = [(x_pos, w_pos)]
        if has_negative:
            x_neg = xp.clamp(max=0)
            w_neg = constant("w_neg", lambda: weight.clamp(max=0))
            z = z + self.conv(x_neg, w_neg)
            terms.append((x_neg, w_neg))
        return terms, z, self.stabilizer


class EpsilonConvRule(ConvRule):
    """epsilon: ``z = W x (+ b)``, stabilised by ``epsilon``."""

    parameters: ClassVar[tuple[str, ...]] = (*ConvRule.parameters, "epsilon")
    epsilon: float = 1e-6

    def contributions(self, xp, weight, bias, composite, constant):  # type: ignore[no-untyped-def]
        return [(xp, weight)], self.conv(xp, weight, bias), self.epsilon


class GammaConvRule(ConvRule):
    """LRP-gamma (Montavon et al. 2019; zennit's ``Gamma``): ``z = (W + gamma W+) x (+ b + gamma b+)``,
    stabilised by ``stabilizer``."""

    parameters: ClassVar[tuple[str, ...]] = (*ConvRule.parameters, "gamma")
    gamma: float = 0.25

    def contributions(self, xp, weight, bias, composite, constant):  # type: ignore[no-untyped-def]
        gamma = self.gamma
        modified = constant(f"gamma_w:{gamma!r}", lambda: weight + gamma * weight.clamp(min=0))
        bias = bias + gamma * bias.clamp(min=0) if bias is not None else None
        return [(xp, modified)], self.conv(xp, modified, bias), self.stabilizer


class FlatConvRule(ConvRule):
    """flat: weights and inputs set to one, relevance spread uniformly over the receptive field
    (the layer that reads the input)."""

    def contributions(self, xp, weight, bias, composite, constant):  # type: ignore[no-untyped-def]
        ones_w = constant("ones_w", lambda: torch.ones_like(weight))
        # ones on the image, zeros on the explicit padding (as the padded input's zeros)
        ones_x = lambda: F.pad(torch.ones_like(self._crop(xp)), self.pads) if any(self.pads) else torch.ones_like(xp)  # noqa: E731
        z = constant("flat_z", lambda: self.conv(ones_x(), ones_w))
        return [(None, ones_w)], z, self.stabilizer


class PointwiseLinearRule(Rule):
    """A dense layer applied at every position of a channels-last map: a 1x1 convolution.

    ConvNeXt (torchvision, and timm without ``conv_mlp``) implements its pointwise layers as
    ``nn.Linear`` on ``(1, H, W, C)`` tensors. Mathematically each is a 1x1 convolution, so it
    gets the convolution's rule (z+, or flat if it reads the input) through a
    :class:`ConvRule` on the channels-first view: the same relevance as timm's ``conv_mlp``
    variant with ``nn.Conv2d`` layers, including the dead-unit handling and the batched
    per-channel backward. Relevance arrives and leaves channels-last (the node's layout);
    :meth:`backward_channels` takes it channels-first, like the engine's layer relevance.
    """

    channels_last = True

    def __init__(self, inp: fx.Node, module: nn.Linear, x: Tensor, out: Tensor, variant: type[ConvRule],
                 composite: Any = None, name: str = "pointwise", validate: bool = True, constants: dict | None = None,
                 **params: Any) -> None:
        self.inputs = (inp,)
        conv = nn.Conv2d(module.in_features, module.out_features, 1, bias=module.bias is not None).to(module.weight)
        with torch.no_grad():
            conv.weight.copy_(module.weight[:, :, None, None])
            if module.bias is not None:
                cast(Tensor, conv.bias).copy_(module.bias)
        self.conv = variant(inp, conv, x.permute(0, 3, 1, 2), out.permute(0, 3, 1, 2), composite, name, validate, constants,
                            **params)

    def use_channels_last(self) -> None:
        self.conv.use_channels_last()

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        ((inp, rel),) = self.conv.backward(relevance.permute(0, 3, 1, 2))
        return [(inp, rel.permute(0, 2, 3, 1))]

    def backward_channels(self, relevance: Tensor, channels: Tensor) -> list[tuple[fx.Node, Tensor]]:
        """:meth:`ConvRule.backward_channels` with ``relevance`` channels-first ``(1, C, H, W)``."""
        ((inp, rel),) = self.conv.backward_channels(relevance, channels)
        return [(inp, rel.permute(0, 2, 3, 1))]


class LinearRule(Rule):
    """An LRP rule of a dense layer: the base of the variants (:class:`EpsilonLinearRule`,
    :class:`ZPlusLinearRule`, :class:`FlatLinearRule`), which say how the contributions are
    formed (:meth:`contributions`), as for :class:`ConvRule`."""

    #: the constructor's keyword parameters (a variant adds its own, e.g. ``epsilon``, ``gamma``)
    parameters: ClassVar[tuple[str, ...]] = ("stabilizer", "zero_bias")
    stabilizer: float = 1e-6
    zero_bias: bool = True

    def __init__(self, inp: fx.Node, module: nn.Linear, x: Tensor, out: Tensor, composite: Any = None,
                 **params: Any) -> None:
        """``params``: the variant's parameters (:attr:`parameters`); ``composite`` as for :class:`ConvRule`."""
        _init_parameters(self, composite, params)
        self.inputs = (inp,)
        bias = module.bias if module.bias is not None and not self.zero_bias else None
        self.terms: list[tuple[Tensor | None, Tensor]]
        self.terms, z, eps = self.contributions(x, module.weight, bias, composite)
        self.inv_z = 1.0 / stabilize(z, eps)

    def contributions(self, x: Tensor, weight: Tensor, bias: Tensor | None, composite: Any
                      ) -> tuple[list[tuple[Tensor | None, Tensor]], Tensor, float]:
        """The variant: ``(terms, z, eps)`` for the input ``x`` ``(1, F)``."""
        raise NotImplementedError

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        scaled = relevance * self.inv_z
        total: Tensor | None = None
        for factor, weight in self.terms:
            grad = scaled @ weight
            part = grad if factor is None else grad * factor
            total = part if total is None else total + part
        assert total is not None
        return [(self.inputs[0], total)]


class EpsilonLinearRule(LinearRule):
    """epsilon: ``z = W x (+ b)``, stabilised by ``epsilon``."""

    parameters: ClassVar[tuple[str, ...]] = (*LinearRule.parameters, "epsilon")
    epsilon: float = 1e-6

    def contributions(self, x, weight, bias, composite):  # type: ignore[no-untyped-def]
        return [(x, weight)], F.linear(x, weight, bias), self.epsilon


class GammaLinearRule(LinearRule):
    """LRP-gamma: ``z = (W + gamma W+) x (+ b + gamma b+)``, stabilised by ``stabilizer``."""

    parameters: ClassVar[tuple[str, ...]] = (*LinearRule.parameters, "gamma")
    gamma: float = 0.25

    def contributions(self, x, weight, bias, composite):  # type: ignore[no-untyped-def]
        modified = weight + self.gamma * weight.clamp(min=0)
        bias = bias + self.gamma * bias.clamp(min=0) if bias is not None else None
        return [(x, modified)], F.linear(x, modified, bias), self.stabilizer


class ZPlusLinearRule(LinearRule):
    """z+: ``z = W+ x+ + W- x- (+ b+)``."""

    def contributions(self, x, weight, bias, composite):  # type: ignore[no-untyped-def]
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        z = F.linear(x_pos, w_pos, bias.clamp(min=0) if bias is not None else None) + F.linear(x_neg, w_neg)
        return [(x_pos, w_pos), (x_neg, w_neg)], z, self.stabilizer


class FlatLinearRule(LinearRule):
    """flat: weights and inputs set to one (a dense layer that reads the model input)."""

    def contributions(self, x, weight, bias, composite):  # type: ignore[no-untyped-def]
        ones_w = torch.ones_like(weight)
        return [(None, ones_w)], F.linear(torch.ones_like(x), ones_w), self.stabilizer


class AttentionRule(Rule):
    """CP-LRP through self-attention (Ali et al., ICML 2022; LXT's default for ViTs): the attention
    weights ``A = softmax(Q K^T / sqrt(d))`` are held constant, so the attention output
    ``out = W_o (A V) (+ b_o)`` is linear in the values ``V = W_v x_v (+ b_v)``. Relevance goes by the
    epsilon rule through the output projection, the weighted sum over tokens and the value projection
    to the value input, none to the queries and keys (their effect is the constant ``A``).

    ``value_input`` ``(1, N, E_in)``, ``attention`` ``(1, heads, N, N)``; relevance batches ``(B, N, E)``
    (``(N, B, E)`` when not ``batch_first``). Biases are left out of the denominators when ``zero_bias``
    (as the dense rule), so relevance is conserved up to ``epsilon``. Build it from a module with
    :meth:`for_multihead` (``nn.MultiheadAttention``) or :meth:`for_timm` (timm's ``Attention``).
    """

    parameters: ClassVar[tuple[str, ...]] = ("epsilon", "zero_bias")
    epsilon: float = 1e-6
    zero_bias: bool = True

    def __init__(self, value_node: fx.Node, value_input: Tensor, attention: Tensor, w_v: Tensor,
                 b_v: Tensor | None, w_o: Tensor, b_o: Tensor | None, *, batch_first: bool = True,
                 **params: Any) -> None:
        _init_parameters(self, None, params)
        self.inputs = (value_node,)
        self.batch_first = batch_first
        heads = attention.shape[1]
        width = w_v.shape[0] // heads

        def split(t: Tensor) -> Tensor:  # (1, N, E) -> (1, heads, N, width)
            return t.unflatten(-1, (heads, width)).transpose(1, 2)

        v = split(F.linear(value_input, w_v, b_v))
        mixed = attention @ v  # (1, heads, N, width): A V, no bias
        self.attention, self.values, self.value_input = attention, v, value_input
        self.mixed = mixed.transpose(1, 2).flatten(-2)  # (1, N, E)
        self.w_o, self.w_v = w_o, w_v
        self.inv_out = 1.0 / stabilize(F.linear(self.mixed, w_o, None if self.zero_bias else b_o), self.epsilon)
        self.inv_mixed = 1.0 / stabilize(mixed, self.epsilon)
        self.inv_v = 1.0 / stabilize(split(F.linear(value_input, w_v, None if self.zero_bias else b_v)), self.epsilon)
        self.heads, self.width = heads, width

    @classmethod
    def for_multihead(cls, value_node: fx.Node, module: nn.MultiheadAttention, query: Tensor, key: Tensor,
                      value: Tensor, **params: Any) -> AttentionRule:
        """The rule of an ``nn.MultiheadAttention`` call on ``query``, ``key``, ``value`` (its layout)."""
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise UnsupportedModelError("nn.MultiheadAttention with separate key/value sizes, bias_k or add_zero_attn "
                                        "has no attention rule; register one for it")
        batch_first = bool(module.batch_first)
        q_in, k_in, v_in = (t if batch_first else t.transpose(0, 1) for t in (query, key, value))
        heads, width = module.num_heads, module.embed_dim // module.num_heads
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
        b_q, b_k, b_v = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
        q = F.linear(q_in, w_q, b_q).unflatten(-1, (heads, width)).transpose(1, 2)
        k = F.linear(k_in, w_k, b_k).unflatten(-1, (heads, width)).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width), dim=-1)
        return cls(value_node, v_in, attention, w_v, b_v, module.out_proj.weight, module.out_proj.bias,
                   batch_first=batch_first, **params)

    @classmethod
    def for_timm(cls, value_node: fx.Node, module: Any, x: Tensor, **params: Any) -> AttentionRule:
        """The rule of timm's ``Attention`` (ViT, DeiT, ...) on ``x`` ``(1, N, E)``: ``qkv`` one dense
        layer, ``q_norm``/``k_norm`` (part of the constant ``A``), ``proj``. Gated attention and a norm
        between the attention and ``proj`` (``scale_norm``) are refused."""
        if getattr(module, "gate", None) is not None or not isinstance(getattr(module, "norm", nn.Identity()),
                                                                          nn.Identity):
            raise UnsupportedModelError(f"timm {type(module).__name__} with a gate or scale_norm has no attention rule; "
                                        "register one for it")
        heads, width = module.num_heads, module.head_dim
        qkv = module.qkv(x).reshape(x.shape[0], x.shape[1], 3, heads, width).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        attention = torch.softmax((q * module.scale) @ k.transpose(-2, -1), dim=-1)
        w_v = module.qkv.weight[2 * heads * width:]
        b_v = module.qkv.bias[2 * heads * width:] if module.qkv.bias is not None else None
        return cls(value_node, x, attention, w_v, b_v, module.proj.weight, module.proj.bias, **params)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        rel = relevance if self.batch_first else relevance.transpose(0, 1)  # (B, N, E)
        rel_mixed = self.mixed * ((rel * self.inv_out) @ self.w_o)  # output projection, epsilon
        rel_mixed = rel_mixed.unflatten(-1, (self.heads, self.width)).transpose(1, 2)  # (B, heads, N, width)
        rel_values = self.values * (self.attention.transpose(-1, -2) @ (rel_mixed * self.inv_mixed))  # A constant
        scaled = (rel_values * self.inv_v).transpose(1, 2).flatten(-2)  # (B, N, E)
        rel_in = self.value_input * (scaled @ self.w_v)  # value projection, epsilon
        return [(self.inputs[0], rel_in if self.batch_first else rel_in.transpose(0, 1))]


class MatmulRule(Rule):
    """``y = a @ b`` (attention written with matrix products): the epsilon rule through the product.

    An operand that is a gate (a softmax: attention weights, held constant as in CP-LRP) or a constant
    receives nothing and the other the whole z-rule, ``R_b = b * (a^T (R / y))``: ``attn @ v`` is linear
    in the values. Two activations (``q @ k^T`` when relevance reaches it, XCA's products) share it by
    AttnLRP's uniform rule, each half of its own z-rule. ``a`` ``(..., n, k)``, ``b`` ``(..., k, m)``;
    relevance batches broadcast over the leading dimensions as the forward's did.
    """

    def __init__(self, nodes: Sequence[fx.Node | None], a: Tensor, b: Tensor, out: Tensor, epsilon: float) -> None:
        self.pieces = tuple(nodes)
        self.inputs = tuple(n for n in nodes if n is not None)
        self.a, self.b = a, b
        self.inv_y = 1.0 / stabilize(out, epsilon)
        self.share = 0.5 if all(n is not None for n in nodes) else 1.0

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        scaled = relevance * self.inv_y * self.share
        out = []
        a_node, b_node = self.pieces
        if a_node is not None:
            out.append((a_node, _unbroadcast(self.a * (scaled @ self.b.transpose(-1, -2)), self.a.shape)))
        if b_node is not None:
            out.append((b_node, _unbroadcast(self.b * (self.a.transpose(-1, -2) @ scaled), self.b.shape)))
        return out


class EinsumRule(MatmulRule):
    """``torch.einsum(equation, a, b)`` of two operands, linear in each: the epsilon rule through the product,
    as :class:`MatmulRule` (a gate or constant operand gets nothing, two activations half each). The
    vector-Jacobian product of the einsum gives ``R_b = b * d<y, R / y>/db``; the operands' first
    dimension is the batch (the relevance rows; one forward row is repeated for a batch of relevance)."""

    def __init__(self, equation: str, nodes: Sequence[fx.Node | None], a: Tensor, b: Tensor, out: Tensor,
                 epsilon: float) -> None:
        super().__init__(nodes, a, b, out, epsilon)
        self.equation = equation

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        rows = relevance.shape[0]
        a, b = (t.expand(rows, *t.shape[1:]) if t.shape[0] != rows else t for t in (self.a, self.b))
        scaled = relevance * self.inv_y * self.share
        out = []
        with torch.enable_grad():
            for node, index in zip(self.pieces, (0, 1)):
                if node is None:
                    continue
                operands = [a.detach(), b.detach()]
                operands[index] = operands[index].clone().requires_grad_(True)
                y = torch.einsum(self.equation, *operands)
                (grad,) = torch.autograd.grad(y, operands[index], scaled)
                out.append((node, operands[index].detach() * grad))
        return out


def _unbroadcast(rel: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``rel`` over the dimensions (after the batch) along which an operand of ``shape`` was broadcast."""
    dims = [d for d in range(1, rel.ndim) if d < len(shape) and shape[d] == 1 and rel.shape[d] != 1]
    return rel.sum(dims, keepdim=True) if dims else rel


class ScaledDotProductAttentionRule(Rule):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, ..., scale)``: CP-LRP, the attention weights
    ``A = softmax(q k^T * scale + mask)`` held constant, the epsilon rule through ``A v`` to the values;
    the queries and keys (and a mask, such as a relative position bias) receive nothing."""

    def __init__(self, value_node: fx.Node, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None,
                 is_causal: bool, scale: float | None, epsilon: float, enable_gqa: bool = False) -> None:
        self.inputs = (value_node,)
        self.value_shape = tuple(v.shape)
        self.groups = 1
        if enable_gqa and q.ndim >= 3 and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
            # grouped-query attention: each key/value head serves q_heads / kv_heads query heads
            self.groups = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(self.groups, -3), v.repeat_interleave(self.groups, -3)
        broadcast = all(a == b or a == 1 for t in (k, v) for a, b in zip(t.shape[:-2], q.shape[:-2]))
        if k.ndim != q.ndim or v.ndim != q.ndim or not broadcast:
            raise UnsupportedModelError(f"scaled_dot_product_attention with queries {tuple(q.shape)} and keys "
                                        f"{tuple(k.shape)} (heads that neither match nor broadcast) has no rule; "
                                        "register one")
        scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if is_causal:
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        self.attention = torch.softmax(scores, dim=-1)
        self.v = v
        self.inv_y = 1.0 / stabilize(self.attention @ v, epsilon)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        rel = self.v * (self.attention.transpose(-1, -2) @ (relevance * self.inv_y))
        if self.groups > 1:  # each key/value head collects its query heads' relevance
            rel = rel.unflatten(-3, (-1, self.groups)).sum(-3)
        shared = tuple(d for d in range(1, rel.ndim - 2) if self.value_shape[d] == 1 < rel.shape[d])
        return [(self.inputs[0], rel.sum(shared, keepdim=True) if shared else rel)]  # multi-query: one head for all


class TokenLayerNormRule(Rule):
    """LayerNorm over a token's features with its standard deviation held constant (Ali et al. 2022;
    AttnLRP's identity rule for the normalisation, as LXT implements it): ``y = g (x - mean(x)) / s + b``
    is affine in ``x``; the epsilon rule through it, ``R_i = x_i sum_j W_ji R_j / (y_j + eps)`` with
    ``W_ji = g_j / s (delta_ij - 1/n)``. The bias ``b`` stays in the denominator and absorbs its share
    ``b_j / y_j``: where the centred feature is near zero, ``y_j`` is mostly bias, and a rule that
    passed ``R_j`` on unchanged (the CNN path's LayerNorm rule) hands it to a residual sum ``z`` near
    zero, whose ``x_i / z`` shares then cancel in the 1e4s (measured on the MNIST ViT).

    ``x`` ``(B, N, C)``; relevance batches ``(R, N, C)`` (one image) or ``(B, N, C)``.
    """

    parameters: ClassVar[tuple[str, ...]] = ("epsilon",)
    epsilon: float = 1e-6

    def __init__(self, inp: fx.Node, x: Tensor, weight: Tensor | None, bias: Tensor | None, norm_eps: float,
                 **params: Any) -> None:
        _init_parameters(self, None, params)
        self.inputs = (inp,)
        centred = x - x.mean(-1, keepdim=True)
        scale = 1.0 / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm_eps)
        self.scale = scale if weight is None else scale * weight
        y = centred * self.scale + (bias if bias is not None else 0.0)
        self.inv_y = 1.0 / stabilize(y, self.epsilon)
        self.x = x

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        scaled = relevance * self.inv_y * self.scale
        return [(self.inputs[0], self.x * (scaled - scaled.mean(-1, keepdim=True)))]

    def absorbed(self, relevance: Tensor) -> Tensor:
        """``(B,)`` float64: the bias's share of ``relevance`` (what :meth:`backward` does not pass on)."""
        ((_, passed),) = self.backward(relevance)
        return relevance.double().flatten(1).sum(1) - passed.double().flatten(1).sum(1)


class RepeatRule(Rule):
    """``x.repeat(r_1, ..., r_n)``: each output element copies one input element, so an input element's
    relevance is the sum over its ``r_1 ... r_n`` copies (``r_1 = 1``: the batch is the relevance batch's)."""

    def __init__(self, inp: fx.Node, in_shape: torch.Size, reps: Sequence[int]) -> None:
        self.inputs = (inp,)
        self.in_shape = tuple(in_shape[1:])
        self.reps = tuple(reps[1:])

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        split = [relevance.shape[0]]
        for rep, size in zip(self.reps, self.in_shape):
            split += [rep, size]
        summed = relevance.reshape(split).sum(tuple(range(1, 2 * len(self.reps), 2)))
        return [(self.inputs[0], summed)]


class RepeatInterleaveRule(Rule):
    """``x.repeat_interleave(r, dim)``: each element copied ``r`` times in place along ``dim``; an input
    element's relevance is the sum over its copies."""

    def __init__(self, inp: fx.Node, repeats: int, dim: int) -> None:
        self.inputs = (inp,)
        self.repeats, self.dim = repeats, dim

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        shape = list(relevance.shape)
        split = shape[: self.dim] + [shape[self.dim] // self.repeats, self.repeats] + shape[self.dim + 1 :]
        return [(self.inputs[0], relevance.reshape(split).sum(self.dim + 1))]


class ExpandRule(Rule):
    """``expand`` (same number of dimensions): each output element copies one input element, so an
    input element's relevance is the sum over its copies along the broadcast dimensions (the batch
    dimension is the relevance batch's)."""

    def __init__(self, inp: fx.Node, in_shape: torch.Size, out_shape: torch.Size) -> None:
        self.inputs = (inp,)
        self.summed = tuple(d for d in range(1, len(in_shape)) if in_shape[d] == 1 and out_shape[d] != 1)

    def backward(self, relevance: Tensor) -> list[tuple[fx.Node, Tensor]]:
        return [(self.inputs[0], relevance.sum(dim=self.summed, keepdim=True) if self.summed else relevance)]
