"""Rules and tracing for the rest of the timm CNN zoo (issue 27): each rule against a slow
formula, conservation on the families they unlock, and tracing that follows an example input."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from conceptree import Composite
from conceptree.attribution import CRPEngine, rule_table
from conceptree.attribution import rules as R
from conceptree.attribution.tracing import canonize, guards
from conceptree.errors import InputError, UnsupportedModelError

from . import helpers
from .test_conservation import assert_conserved


def rule_at(engine: CRPEngine, x: torch.Tensor, predicate):
    forward = engine.forward(x)
    (node,) = [n for n in forward.rules if predicate(n)]
    return node, forward.rules[node], forward


def heatmap_matches_logit(engine: CRPEngine, x: torch.Tensor, rel: float = 1e-4):
    attribution = engine.attribute(x)
    logit = float(attribution.logits[attribution.target])
    assert float(attribution.heatmap.sum()) == pytest.approx(logit, rel=rel, abs=1e-6)
    return attribution


# --------------------------------------------------------------------------- upsampling
class _Up(nn.Module):
    def __init__(self, mode: str, functional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        self.mode, self.functional = mode, functional
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.functional:
            kw = {} if self.mode == "nearest" else {"align_corners": False}
            y = F.interpolate(y, scale_factor=2, mode=self.mode, **kw)
        else:
            y = self.up(y)
        return self.fc(y.mean((2, 3)))


def _interpolation_matrix(fn, shape) -> torch.Tensor:
    """W with fn(x).flatten() = W @ x.flatten(), from the images of the basis vectors."""
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return fn(basis).reshape(n, -1).T  # (out, in)


@pytest.mark.parametrize("mode,functional", [("bilinear", False), ("bilinear", True), ("nearest", False), ("bicubic", True)])
def test_upsampling_gives_source_pixels_relevance_in_proportion_to_their_contributions(mode, functional):
    """Slow formula: R_j = sum_i W_ij x_j R_i / y_i for the interpolation matrix W (per channel)."""
    torch.manual_seed(0)
    model = _Up(mode, functional).eval().double()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    is_up = (lambda n: n.target is F.interpolate) if functional else (lambda n: n.target == "up")
    node, rule, forward = rule_at(engine, x, is_up)
    act = torch.relu(model.conv(x))[0]  # (4, 5, 4)
    rel = torch.randn(2, 4, 10, 8, dtype=torch.float64)
    (_, got), = rule.backward(rel)
    kw = {} if mode == "nearest" else {"align_corners": False}
    W = _interpolation_matrix(lambda t: F.interpolate(t[:, None], scale_factor=2, mode=mode, **kw), (5, 4))
    for c in range(4):
        xc = act[c].flatten()
        y = W @ xc
        for b in range(2):
            if mode == "nearest":  # bookkeeping: each copy's relevance back to its source
                want = W.T @ rel[b, c].flatten()
            else:
                share = rel[b, c].flatten() / (y + 1e-6 * torch.where(y >= 0, 1.0, -1.0))
                want = xc * (W.T @ share)
            torch.testing.assert_close(got[b, c].flatten(), want, rtol=1e-6, atol=1e-9)
    assert float(got.sum()) == pytest.approx(float(rel.sum()), rel=1e-5) if mode == "nearest" else True
    heatmap_matches_logit(engine, x)


# --------------------------------------------------------------------------- weight standardisation
@pytest.mark.parametrize("cls", ["StdConv2d", "ScaledStdConv2d", "ScaledStdConv2dSame"])
def test_weight_standardised_convs_canonize_to_plain_convs_with_the_standardised_weight(cls):
    """Slow formula: w' = (w - mean) / sqrt(var + eps) per output channel (times gain * scale)."""
    torch.manual_seed(0)
    conv = getattr(timm.layers, cls)(3, 5, 3, stride=2)
    with torch.no_grad():
        conv.weight.normal_()
        if hasattr(conv, "gain"):
            conv.gain.uniform_(0.5, 1.5)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)).eval()
    graph = canonize(model)
    plain = graph.get_submodule("0")
    assert type(plain).__name__ in ("Conv2d", "Conv2dSame")
    w = conv.weight.detach().double().reshape(5, -1)
    mean, var = w.mean(1, keepdim=True), w.var(1, unbiased=False, keepdim=True)
    want = (w - mean) / torch.sqrt(var + conv.eps)
    if hasattr(conv, "gain"):
        want = want * (conv.gain.detach().double().reshape(5, 1) * conv.scale)
    torch.testing.assert_close(plain.weight.detach().double().reshape(5, -1), want, rtol=1e-5, atol=1e-6)
    x = torch.randn(1, 3, 11, 9)
    torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-6)
    engine = CRPEngine(model)
    assert [layer.name for layer in engine.layers] == ["0"]
    heatmap_matches_logit(engine, x)


# --------------------------------------------------------------------------- softmax gates
class _SplitAttention(nn.Module):
    """ResNeSt's split attention: two branches mixed by a softmax over them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.attn = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        logits = self.attn((a + b).mean((2, 3), keepdim=True))  # (1, 8, 1, 1)
        gate = F.softmax(logits.view(x.shape[0], 2, 4, 1, 1), dim=1)  # over the two branches
        mixed = a * gate[:, 0] + b * gate[:, 1]
        return self.fc(mixed.mean((2, 3)))


def test_softmax_gate_gives_the_gated_branches_all_relevance_and_the_gate_none():
    torch.manual_seed(0)
    model = _SplitAttention().eval()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 6, 6)
    forward = engine.forward(x)
    products = [n for n in forward.rules if n.target is torch.mul or n.name.startswith("mul")]
    assert len(products) == 2
    rel = torch.randn(3, 4, 6, 6)
    for node in products:
        (target, got), = forward.rules[node].backward(rel)
        assert target.name in ("relu", "relu_1")  # the branch, not the gate
        torch.testing.assert_close(got, rel)
    attribution = heatmap_matches_logit(engine, x)
    assert float(attribution.channel_relevance("attn").abs().sum()) == 0.0


def test_a_softmax_that_receives_relevance_is_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
                          nn.Softmax(dim=1)).eval()

    class Probabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = model[:5]

        def forward(self, x):
            return F.softmax(self.body(x), dim=1)

    with pytest.raises(UnsupportedModelError, match="only as a gate") as info:
        CRPEngine(Probabilities().eval()).attribute(torch.randn(1, 3, 8, 8))
    assert "\n" not in str(info.value) and "logits" in str(info.value)


# --------------------------------------------------------------------------- functional convolution
class _Blur(nn.Module):
    """TResNet's anti-aliasing: a fixed depthwise filter applied with F.conv2d in forward (or,
    for the reference, by an nn.Conv2d holding the same filter)."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (taps[:, None] * taps[None, :] / 16).expand(4, 1, 3, 3).clone())
        self.blur = nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False)
        with torch.no_grad():
            self.blur.weight.copy_(self.filt)
        self.functional = functional
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = F.pad(torch.relu(self.conv(x)), (1, 1, 1, 1), mode="reflect")
        y = F.conv2d(y, self.filt, stride=2, groups=4) if self.functional else self.blur(y)
        return self.fc(y.mean((2, 3)))


def test_a_functional_conv_with_a_constant_filter_gets_the_conv_rule():
    """Same relevance as an nn.Conv2d with that filter; the filter's channels are not neurons."""
    torch.manual_seed(0)
    functional = _Blur(True).eval()
    module = _Blur(False).eval()
    module.load_state_dict(functional.state_dict())
    x = torch.randn(1, 3, 9, 9)
    eng_f, eng_m = CRPEngine(functional), CRPEngine(module)
    assert [layer.name for layer in eng_f.layers] == ["conv"] and "blur" in [layer.name for layer in eng_m.layers]
    a_f, a_m = heatmap_matches_logit(eng_f, x), eng_m.attribute(x)
    torch.testing.assert_close(a_f.heatmap, a_m.heatmap, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(a_f.channel_relevance("conv"), a_m.channel_relevance("conv"), rtol=1e-5, atol=1e-8)


def test_a_conv_whose_filter_depends_on_the_input_is_refused():
    """The factory itself, on a traced ``F.conv2d(y, w)`` whose ``w`` is an activation."""

    class Dynamic(nn.Module):
        def forward(self, x, w):
            return F.conv2d(x, w, padding=1)

    graph = torch.fx.symbolic_trace(Dynamic())
    node = next(n for n in graph.graph.nodes if n.target is F.conv2d)
    x, w = torch.randn(1, 3, 6, 6), torch.randn(2, 3, 3, 3)
    ctx = rule_table.RuleContext(node, None, (x, w), {"padding": 1}, F.conv2d(x, w, padding=1), False, Composite(),
                                 set(graph.graph.nodes), {}, graph)
    with pytest.raises(UnsupportedModelError, match="filter depends on the input"):
        rule_table.functional_conv_rule(ctx)
    ctx.depends = {n for n in graph.graph.nodes if n.name == "x"}  # a constant filter: the conv rule
    assert isinstance(rule_table.functional_conv_rule(ctx), R.ConvRule)


# --------------------------------------------------------------------------- constants, sums, products
class _Arithmetic(nn.Module):
    """A constant addend, a constant tensor concatenated, a subtraction, a division by a constant
    and a product of two activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        shifted = a + 0.5                                      # constant addend: a bias
        padded = torch.cat([shifted, torch.zeros_like(a)], 1)  # constant channels
        diff = padded[:, :4] - b                               # a + (-b)
        prod = (a * b) / 2                                     # product, constant divisor
        cross = a.mean((2, 3), keepdim=True) * b.mean(1, keepdim=True)  # product, both broadcast
        return self.fc(torch.cat([diff, prod, cross], 1).mean((2, 3)))


def test_constants_subtraction_division_and_products_equal_their_formulas():
    torch.manual_seed(0)
    model = _Arithmetic().eval().double()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    forward = engine.forward(x)
    by_name = {n.name: (n, r) for n, r in forward.rules.items()}
    assert "zeros_like" not in by_name  # a constant: no rule, never an activation
    rel = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    (target, got), = by_name["add"][1].backward(rel)  # a + 0.5: all relevance to a
    assert target.name == "relu"
    torch.testing.assert_close(got, rel)

    (target, got), = by_name["cat"][1].backward(torch.randn(2, 8, 5, 5, dtype=torch.float64))
    assert target.name == "add" and got.shape == (2, 4, 5, 5)  # the zeros' slice is not passed on

    a, b = torch.relu(model.a(x)), torch.relu(model.b(x))
    (na, ra), (nb, rb) = by_name["sub"][1].backward(rel)  # R_a = a R / (a - b), R_b = -b R / (a - b)
    z = (a + 0.5) - b
    stab = z + 1e-6 * torch.where(z >= 0, 1.0, -1.0)
    torch.testing.assert_close(ra, (a + 0.5) * rel / stab)
    torch.testing.assert_close(rb, -b * rel / stab)
    torch.testing.assert_close(ra + rb, rel * z / stab)

    (target, got), = by_name["truediv"][1].backward(rel)  # / 2: relevance unchanged
    torch.testing.assert_close(got, rel)

    (na, ra), (nb, rb) = by_name["mul"][1].backward(rel)  # uniform: R/2 each
    assert (na.name, nb.name) == ("relu", "relu_1")
    torch.testing.assert_close(ra, rel / 2)
    torch.testing.assert_close(rb, rel / 2)
    (na, ra), (nb, rb) = by_name["mul_1"][1].backward(rel)  # ... summed over the dims each was broadcast along
    torch.testing.assert_close(ra, (rel / 2).sum((2, 3), keepdim=True))
    torch.testing.assert_close(rb, (rel / 2).sum(1, keepdim=True))
    heatmap_matches_logit(engine, x)


def test_an_exactly_zero_sum_splits_its_relevance_evenly():
    """Relevance spread onto dead inputs (flat rule of a dead unit) is kept at a sum whose addends
    are all zero, instead of being dropped by x_i / stab(0)."""
    values = [torch.tensor([[0.0, 2.0, -1.0]]), torch.tensor([[0.0, 1.0, 3.0]])]
    out = values[0] + values[1]
    rule = R.SumRule(["a", "b"], values, out, 1e-6, flat_zero=True)
    rel = torch.tensor([[3.0, 6.0, 4.0]])
    (_, ra), (_, rb) = rule.backward(rel)
    torch.testing.assert_close(ra, torch.tensor([[1.5, 4.0, -2.0]]))  # 0-sum: evenly; others: x_i R / z
    torch.testing.assert_close(rb, torch.tensor([[1.5, 2.0, 6.0]]))
    (_, ra), (_, rb) = R.SumRule(["a", "b"], values, out, 1e-6).backward(rel)  # zennit's Norm rule drops it
    assert float(ra[0, 0] + rb[0, 0]) == 0.0


# --------------------------------------------------------------------------- tracing with an example
class _SizeCheck(nn.Module):
    """timm VGG's pre-logits: pool up to the kernel size when the map is smaller."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.head = nn.Conv2d(4, 2, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if y.shape[-2] < 4 or y.shape[-1] < 4:
            y = F.adaptive_avg_pool2d(y, 4)
        return self.head(y).mean((2, 3))


def test_shape_dependent_branches_are_traced_with_the_example_and_guarded():
    torch.manual_seed(0)
    model = _SizeCheck().eval()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    small = torch.randn(1, 3, 6, 6)
    engine = CRPEngine(model, example_input=small)  # 6x6 -> 3x3 map: the pooling branch
    assert list(guards(engine.graph_module).values()) == [True]
    attribution = heatmap_matches_logit(engine, small)
    torch.testing.assert_close(attribution.logits, model(small)[0])
    heatmap_matches_logit(engine, torch.randn(1, 3, 4, 4))  # another size, same branch: fine
    with pytest.raises(InputError, match="takes another branch") as info:
        engine.attribute(torch.randn(1, 3, 16, 16))  # 8x8 map: the other branch
    assert "\n" not in str(info.value) and "example_input" in str(info.value)

    default = CRPEngine(model)  # no example: zeros of (1, 3, 224, 224), the no-pool branch
    assert list(guards(default.graph_module).values()) == [False, False]
    big = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(default.attribute(big).logits, model(big)[0])


def test_symbolically_traceable_models_get_no_guards():
    engine = CRPEngine(helpers.cifar_model().eval())
    assert guards(engine.graph_module) == {}


# --------------------------------------------------------------------------- the families these unlock
@pytest.mark.parametrize("name,tol", [("hrnet_w18_small", 1e-4), ("nf_resnet26", 1e-4), ("resnest14d", 1e-4),
                                      ("tresnet_m", 1e-4), ("vgg11_bn", 1e-4), ("repvit_m1", 1e-3)])
def test_families_unlocked_by_the_zoo_rules_conserve_relevance(name, tol):
    """Random weights and BatchNorm statistics (fixed seed), 64x64: sampled channels of every
    layer conserve (sum(y_p) = r_p) and the heatmap sums to the logit. RepViT (fused) misses by
    7e-4 of a layer's largest relevance, in float64 too: the ``Norm`` rule's stabiliser at the
    near-cancelling sums of its 40 residual additions (1e-5 of the relevance each, measured)."""
    torch.manual_seed(0)
    model = helpers.randomize_batchnorm(timm.create_model(name, pretrained=False))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    engine = CRPEngine(model, example_input=x)  # timm's VGG branches on the map size
    attribution = assert_conserved(engine, x, tol=tol)
    logit = float(attribution.logits[attribution.target])
    assert float(attribution.heatmap.sum()) == pytest.approx(logit, rel=1e-3, abs=1e-6)
