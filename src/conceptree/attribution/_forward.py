"""Private: the canonized model's torch.fx graph, run node by node (the engine's forward pass).

:class:`FxGraph` holds the traced model and what the engine derives from its graph once (node
order, the node of every layer, the first layers, the branch guards); :meth:`FxGraph.run` runs
one forward pass and prepares every node's LRP rule into a :class:`ForwardPass`. Nothing here is
public API: :class:`~conceptree.attribution.engine.CRPEngine` speaks of layer names and channels,
and only tests and the engine reach the graph nodes.
"""

from __future__ import annotations

import difflib
import operator
import re
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from ..errors import ConceptreeError, InputError, ModelError, UnsupportedModelError
from . import rules as R
from .composites import Composite
from .rule_table import RuleContext, lookup
from .tracing import GUARD_READS

InitRelevance = Literal["logit", "one"]


@dataclass
class ForwardPass:
    """Everything one forward pass leaves for the backward passes (an opaque, reusable handle:
    :meth:`CRPEngine.attribute` and :meth:`CRPEngine.conditional_heatmaps` accept it in place of
    an image).

    Attributes
    ----------
    input : Tensor
        The model input, shape ``(1, C, H, W)`` (``(N, C, H, W)`` for a batch pass).
    logits : Tensor
        Model output, shape ``(num_classes,)`` (``(N, num_classes)`` for a batch pass).
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
        batches of a float64 pass, where the float64 concepts are not needed to the last bit).
        A copy: this pass is left as it is."""
        if self.input.dtype == dtype:
            return self
        return ForwardPass(self.input.to(dtype), self.logits, {node: rule.cast(dtype) for node, rule in self.rules.items()},
                           self.shapes, self.channels_last_rules)

    def channels_last(self) -> ForwardPass:
        """A copy of this pass with every rule's 4-d tensors stored channels-last (the batched
        convolutions of conditional maps run faster on them); this pass is not changed. The
        engine keeps the copy of the latest pass it was asked for (:meth:`CRPEngine._channels_last`)."""
        if self.channels_last_rules:
            return self
        rules = {}
        for node, rule in self.rules.items():
            copied = rule.cast(self.input.dtype)  # a structural copy (nested rules too), tensors shared
            copied.use_channels_last()  # reassigns the copy's tensors; the original keeps its own
            rules[node] = copied
        return ForwardPass(self.input, self.logits, rules, self.shapes, True)

    def use_channels_last(self) -> None:
        """Deprecated: switches this pass's rules in place; use :meth:`channels_last` (a copy)."""
        warnings.warn("ForwardPass.use_channels_last() changes the pass in place and goes in the next release; "
                      "use forward.channels_last(), which returns a copy", DeprecationWarning, stacklevel=2)
        if not self.channels_last_rules:
            for rule in self.rules.values():
                rule.use_channels_last()
            self.channels_last_rules = True


def is_channels_last(rule: R.Rule | None) -> bool:
    """Whether a node's rule works on channels-last activations (no rule: no)."""
    return rule is not None and rule.channels_last


#: most class and register tokens a token sequence may carry before its patch tokens
MAX_PREFIX_TOKENS = 16


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int, int]:
    """``(prefix, h, w)`` of a sequence of ``tokens`` tokens from an ``height x width`` input.

    The patch tokens are taken to be the last ``h * w`` of the sequence, row-major on an ``h x w``
    grid with ``h = height / s`` and ``w = width / s`` for an integer patch stride ``s`` (failing that, any
    ``h x w`` grid with the input's aspect ratio: overlapping patches, a resized input); the
    ``prefix`` tokens before them (class, distillation and register tokens) have no place on the
    image. The smallest prefix (at most :data:`MAX_PREFIX_TOKENS`) that leaves such a grid wins;
    the largest stride first (ViT-style models pool no tokens, so their grid is the patch grid).

    Raises
    ------
    UnsupportedModelError
        If no prefix leaves a patch grid (tokens pooled to another shape, or appended after the patches).
    """
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        patches = tokens - prefix
        for stride in range(min(height, width), 0, -1):
            if height % stride == 0 and width % stride == 0 and (height // stride) * (width // stride) == patches:
                return prefix, height // stride, width // stride
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):  # a grid of the input resized (CrossViT's
        patches = tokens - prefix  # second branch at 224 of a 240 input) or with overlapping patches (PiT's 27 x 27)
        for rows in range(1, patches + 1):
            if patches % rows == 0 and rows * width == (patches // rows) * height:
                return prefix, rows, patches // rows
    raise UnsupportedModelError(
        f"a token layer has {tokens} tokens, which are not a patch grid of the {height}x{width} input after at "
        f"most {MAX_PREFIX_TOKENS} class/register tokens; select layers whose tokens are patches (layers=[...])"
    )


def default_example_input(model: nn.Module) -> Tensor:
    """Zeros of the model's declared input size (timm's ``pretrained_cfg`` or patch embedding,
    torchvision's ViT ``image_size``),
    else ``(1, C, 224, 224)`` with ``C`` the first convolution's input channels (3 without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    patch_size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm's, set by img_size=
    if isinstance(patch_size, tuple) and len(patch_size) == 2 and all(isinstance(v, int) for v in patch_size):
        size = (3, *patch_size) if size is None else (size[0], *patch_size)
    side = getattr(model, "image_size", None)  # torchvision's VisionTransformer
    if size is None and isinstance(side, int) and not isinstance(side, bool):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, side, side)
    if not (isinstance(size, (tuple, list)) and len(size) == 3):
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, 224, 224)
    param = next(iter(model.parameters()), None)
    if param is None:
        return torch.zeros(1, *size)
    return torch.zeros(1, *size, dtype=param.dtype, device=param.device)


#: words of a size/shape mismatch in torch's and models' messages ("mat1 and mat2 shapes cannot be
#: multiplied", "Expected ... to have 3 channels", "shape '[...]' is invalid for input of size ...").
_SHAPE_WORDS = re.compile(r"shape|size|dimension|\bdims?\b|channels|match|expected .*(?:input|tensor)", re.IGNORECASE)


def _describe(node: fx.Node) -> str:
    return f"module '{node.target}'" if node.op == "call_module" else f"{node.op.replace('call_', '')} '{node.name}'"


def _model_error(node: fx.Node, exc: BaseException, x: Tensor, ran: Collection[tuple[int, ...]] = ()) -> BaseException:
    """What the engine raises when the model's own code raised ``exc`` while running ``node`` on ``x``.

    - conceptree's own errors, out of memory (``torch.cuda.OutOfMemoryError``, ``MemoryError``):
      ``exc`` itself (re-raised unchanged);
    - a size/shape mismatch (the message speaks of shapes or sizes, or a bare ``assert``) on an
      input shape that has not run through the model before (``ran``: input shapes that did):
      :class:`~conceptree.errors.InputError`, one line naming the node, the input shape and the
      model's message;
    - anything else (the model's own failure on an input of a shape it ran before, or not about
      sizes): :class:`~conceptree.errors.ModelError` with the same line.
    """
    if isinstance(exc, (ConceptreeError, MemoryError, torch.cuda.OutOfMemoryError)):
        return exc
    message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no message"
    what = f"the model's own code failed at {_describe(node)} on an input of shape {tuple(x.shape)} " \
           f"({type(exc).__name__}: {message})"
    about_size = isinstance(exc, AssertionError) or bool(_SHAPE_WORDS.search(str(exc)))
    if about_size and tuple(x.shape) not in ran:
        return InputError(f"{what}; check the input size and preprocessing the model expects")
    return ModelError(f"{what}; the input's shape is not the cause (a failure inside the model: fix or wrap "
                      "the model, the original error is attached as __cause__)")


class FxGraph:
    """The canonized model's graph and what the engine derives from it once.

    Parameters
    ----------
    module : fx.GraphModule
        The canonized, traced model (eval mode, no in-place modules).
    composite : Composite
        LRP rules; its rule table gives every node's rule.
    pointwise : set of str
        Layers read as dense layers applied per position of channels-last maps.
    guards : dict
        Node -> the branch the trace took (:func:`~conceptree.attribution.tracing.guards`).
    example_shape : tuple
        Shape of the input the model was traced with (named in the branch error).
    """

    def __init__(self, module: fx.GraphModule, *, composite: Composite, pointwise: set[str],
                 guards: dict[fx.Node, object], example_shape: tuple[int, ...]) -> None:
        self.module = module
        self.composite = composite
        self._rules = composite.rule_table()
        self.pointwise = pointwise
        self.guards = guards
        self.example_shape = example_shape
        self.nodes: list[fx.Node] = list(module.graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.by_layer: dict[str, fx.Node] = {str(node.target): node for node in self.nodes if node.op == "call_module"}
        self.first_layers = self._find_first_layers()
        self.input_channels = self._find_input_channels()
        self._validated: set[fx.Node] = set()  # nodes whose module passed its rule's check once
        self._constants: dict = {}  # per module and input shape (RuleContext.constants)
        self._ran: set[tuple[int, ...]] = set()  # input shapes that ran through the model

    # ------------------------------------------------------------------ lookups
    def node(self, layer: str) -> fx.Node:
        """The graph node of module ``layer`` (the one lookup; raises one InputError naming the
        known layers, closest first, when there is none)."""
        node = self.by_layer.get(layer)
        if node is None:
            known = list(self.by_layer)
            close = difflib.get_close_matches(str(layer), known, n=5, cutoff=0.5)
            shown = close + [name for name in known if name not in close]
            more = f", ... ({len(known)} in all)" if len(shown) > 8 else ""
            raise InputError(f"unknown layer {layer!r}; known: {', '.join(shown[:8])}{more} "
                             "(engine.names lists the selected conv layers)")
        return node

    def output_node(self) -> fx.Node:
        """The node whose value the model returns (the first of a tuple)."""
        out = next(node for node in reversed(self.nodes) if node.op == "output")
        arg = out.args[0]
        if isinstance(arg, (tuple, list)):
            arg = arg[0]
        assert isinstance(arg, fx.Node)
        return arg

    @staticmethod
    def node_layout(forward: ForwardPass, node: fx.Node, rel: Tensor) -> Tensor:
        """Relevance given channels-first in the node's own layout: ``(B, C, h, w)`` maps, or
        ``(B, C, N)`` for a token sequence (whose own layout is ``(B, N, C)``)."""
        if is_channels_last(forward.rules.get(node)):
            return rel.permute(0, 2, 3, 1)
        if len(forward.shapes[node]) == 3:
            return rel.transpose(1, 2)
        return rel

    def fine_nodes(self, forward: ForwardPass, size: tuple[int, int]) -> frozenset[fx.Node]:
        """The nodes whose output is a channels-first feature map finer than ``size`` in both
        dimensions (the input included): where the conditional maps stop when asked to pool below
        a map size.

        A 4-d activation counts as a ``(B, C, h, w)`` map when its rule does not read it
        channels-last and ``h : w`` is the input's aspect ratio (to one pixel).
        """
        height, width = forward.input.shape[-2:]
        fine = set()
        for node, shape in forward.shapes.items():
            if len(shape) != 4 or is_channels_last(forward.rules.get(node)):
                continue
            h, w = int(shape[2]), int(shape[3])
            if h > size[0] and w > size[1] and abs(h * width - w * height) <= max(height, width):
                fine.add(node)
        if height > size[0] and width > size[1]:
            fine.update(node for node in self.nodes if node.op == "placeholder")
        return frozenset(fine)

    def _find_first_layers(self) -> set[fx.Node]:
        """conv/linear nodes that read the input without another conv/linear in between."""
        before: set[fx.Node] = set()
        first: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder":
                if not before:  # the input; later placeholders are optional arguments (their defaults)
                    before.add(node)
                continue
            if not any(inp in before for inp in node.all_input_nodes):
                continue
            if node.op == "call_module" and isinstance(self.module.get_submodule(str(node.target)), (nn.Conv2d, nn.Linear)):
                first.add(node)
            else:
                before.add(node)
        return first

    def _find_input_channels(self) -> int | None:
        """Channels the model's input must have: those of a first conv that reads the input itself
        (None when the input is rearranged first, e.g. a space-to-depth stem: the forward pass then
        reports a mismatch at the node where it fails)."""
        for node in sorted(self.first_layers, key=self.index.__getitem__):
            module = self.module.get_submodule(str(node.target))
            if isinstance(module, nn.Conv2d):
                reads_input = bool(node.args) and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder"
                return module.in_channels if reads_input else None
        return None

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def run(self, x: Tensor, batch: bool = False) -> ForwardPass:
        """Run the model once on a checked input ``x`` ``(N, C, H, W)`` and prepare every node's rule."""
        env: dict[fx.Node, object] = {}
        rules: dict[fx.Node, R.Rule] = {}
        shapes: dict[fx.Node, torch.Size] = {}
        depends: set[fx.Node] = set()
        logits: Tensor | None = None
        load = lambda arg: fx.node.map_arg(arg, cast(Callable[[fx.Node], Any], env.__getitem__))  # noqa: E731
        for node in self.nodes:
            if node.op == "placeholder":
                if env and node.args:  # an optional argument of forward() (timm's attn_mask=None): its default
                    env[node] = node.args[0]
                    continue
                if env:
                    raise UnsupportedModelError("the model's forward() takes more than one input; wrap it")
                env[node] = x
                depends.add(node)
                continue
            if node.op == "get_attr":
                env[node] = operator.attrgetter(str(node.target))(self.module)
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
                error = _model_error(node, exc, x, self._ran)
                if error is exc:
                    raise
                raise error from exc
            env[node] = out
            if node in self.guards and GUARD_READS[node.meta.get("guard_read", "bool")](out) != self.guards[node]:
                raise InputError(
                    f"the model's forward() branches on its input at node '{node.name}' and takes another branch for "
                    f"shape {tuple(x.shape)} than for the example {self.example_shape} it was traced with; "
                    "create the engine with example_input of this shape"
                )
            if node.op == "call_function" and node.target is operator.setitem:
                self._written_in_place(node, depends, rules)
                continue
            if any(inp in depends for inp in node.all_input_nodes):
                if not _holds_tensor(out):  # shapes and sizes read off the input (x.shape, x.size(1)) are not its values
                    continue
                depends.add(node)
                # tuples (chunk/split) are read through their items' rules; an attention module's tuple
                # (output, weights) has the output's relevance (rule_table.attention_rule)
                attention = node.op == "call_module" and isinstance(
                    self.module.get_submodule(str(node.target)), nn.MultiheadAttention)
                if isinstance(out, Tensor) or attention:
                    rule = self._make_rule(node, args, kwargs, out, depends, env)
                    if rule is None:  # a tensor built from shapes only (torch.zeros(x.shape)): a constant
                        depends.discard(node)
                        continue
                    shapes[node] = out.shape if isinstance(out, Tensor) else cast(tuple, out)[0].shape
                    rules[node] = rule
        assert logits is not None
        self._ran.add(tuple(x.shape))
        return ForwardPass(input=x, logits=logits[0] if not batch else logits, rules=rules, shapes=shapes)

    @staticmethod
    def _written_in_place(node: fx.Node, depends: set[fx.Node], rules: dict[fx.Node, R.Rule]) -> None:
        """``target[key] = value`` (traced with an example): a write into a constant stays a constant;
        a written tensor that depends on the input refuses relevance (:class:`~.rules.ModifiedInPlaceRule`)."""
        target = node.args[0]
        if not isinstance(target, fx.Node) or not any(inp in depends for inp in node.all_input_nodes):
            return
        rule = rules.get(target)
        depends.add(target)
        rules[target] = R.ModifiedInPlaceRule(rule.inputs[0] if rule is not None and len(rule.inputs) == 1 else None,
                                              f"node '{target.name}'")

    def _execute(self, node: fx.Node, args: tuple, kwargs: dict) -> object:
        if node.op == "call_module":
            return self.module.get_submodule(str(node.target))(*args, **kwargs)
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
        module = self.module.get_submodule(str(node.target)) if node.op == "call_module" else None
        ctx = RuleContext(node, module, args, kwargs, out, node in self.first_layers and self.composite.flat_first_layer,
                          self.composite, depends, env, self.module, node not in self._validated,
                          self._constants)
        factory = lookup(self._rules, node, module)
        try:
            if factory is None:
                if module is not None:
                    raise ctx.unsupported(f"module {type(module).__name__} '{node.target}'")
                what = "function" if node.op == "call_function" else "method"
                name = getattr(node.target, "__name__", str(node.target))
                raise ctx.unsupported(f"{what} {name if what == 'function' else '.' + name + '()'}")
            rule = factory(ctx)
        except UnsupportedModelError as error:  # refused when relevance reaches it (never, on attention logits);
            return R.RefusedRule(error)  # not marked validated: every later pass checks the node again
        self._validated.add(node)
        if node.target in self.pointwise and not (rule is not None and rule.channels_last):
            raise UnsupportedModelError(
                f"layer '{node.target}' was read as a pointwise layer on channels-last maps but its input has "
                f"shape {tuple(ctx.x.shape)}; exclude it with exclude_layers=[{node.target!r}]"
            )
        return rule


def _holds_tensor(value: object) -> bool:
    """Whether ``value`` is a tensor or a tuple/list/dict holding one (a chunk's pieces, an attention's output)."""
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def check_input(x: Tensor, expected: int | None, device: torch.device, dtype: torch.dtype, batch: bool = False) -> Tensor:
    """``x`` checked as one image ``(1, C, H, W)`` (``(N, C, H, W)`` with ``batch``; ``expected``: channels
    the model needs, None: unknown) and moved to the engine's device and type."""
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
    if expected is not None and x.shape[1] != expected:
        raise InputError(
            f"input has {x.shape[1]} channels but the model's first layer expects {expected}; "
            "convert the image (e.g. grayscale to RGB)"
        )
    if not torch.isfinite(x).all():
        raise InputError("input contains NaN or infinite values; check the preprocessing")
    return x.detach().to(device=device, dtype=dtype)


def resolve_target(logits: Tensor, target: int | None) -> int:
    if target is None:
        return int(logits.argmax())
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InputError(f"target must be a class index (int), got {target!r}")
    if not 0 <= int(target) < logits.numel():
        raise InputError(
            f"target {target} is outside the model's {logits.numel()} classes (0..{logits.numel() - 1})"
        )
    return int(target)

def init_relevance(logits: Tensor, targets: Sequence[int], init: InitRelevance | Tensor) -> Tensor:
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
