"""The rule table: every CNN family conserves relevance, each new rule equals its formula, and
zennit agrees where it has the same rules."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conceptree import Composite
from conceptree.attribution import CRPEngine, rule_table, rules

from . import helpers
from .test_conservation import assert_conserved

FAMILIES = [
    ("torchvision", "efficientnet_b0"), ("torchvision", "mobilenet_v3_large"), ("torchvision", "regnet_y_400mf"),
    ("torchvision", "convnext_tiny"), ("torchvision", "shufflenet_v2_x1_0"), ("torchvision", "densenet121"),
    ("timm", "efficientnet_b0"), ("timm", "mobilenetv3_small_100"), ("timm", "regnety_002"),
    ("timm", "convnext_atto"), ("timm", "densenet121"), ("timm", "resnet18"),
]


def family_model(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        model = getattr(torchvision.models, name)() if source == "torchvision" else timm.create_model(name, pretrained=False)
        return helpers.randomize_batchnorm(model)


@pytest.mark.parametrize("source,name", FAMILIES)
def test_every_family_conserves_relevance(source, name):
    """Sampled channels of every layer: sum(y_p) = r_p; the class heatmap sums to the logit."""
    model = family_model(source, name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    attribution = assert_conserved(CRPEngine(model), x)
    logit = float(attribution.logits[attribution.target])
    assert float(attribution.heatmap.sum()) == pytest.approx(logit, rel=1e-3, abs=1e-6)


def rule_of(engine: CRPEngine, x: torch.Tensor, name: str):
    forward = engine.forward(x)
    (node,) = [n for n in forward.rules if n.name == name]
    return node, forward.rules[node], forward


class Gated(nn.Module):
    """Squeeze-excitation gate and a layer scale: ``x * sigmoid(fc(mean(x)))``, ``gamma * x``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Conv2d(6, 6, 1)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        gated = y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))
        scaled = self.gamma * gated
        return self.head(scaled.mean((2, 3)))


def test_gate_rule_gives_the_gated_features_all_relevance():
    """Slow formula: with the gate g held constant, the z-rule gives R_x = x g / (x g) R = R."""
    model = Gated().eval()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 8, 8)
    relevance = torch.randn(4, 6, 8, 8)
    for name in ("mul", "mul_1"):
        node, rule, _ = rule_of(engine, x, name)
        (target, got), = rule.backward(relevance)
        feature = node.args[0] if name == "mul" else node.args[1]
        assert target is feature
        torch.testing.assert_close(got, relevance)
    attribution = engine.attribute(x)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[attribution.target]), rel=1e-4)
    assert float(attribution.channel_relevance("fc").abs().sum()) == 0.0  # the gate branch gets none


class Shuffle(nn.Module):
    """Channel shuffle (view, transpose, view), chunk and a permuted LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        y = torch.transpose(y.view(b, 2, c // 2, h, w), 1, 2).contiguous().view(b, c, h, w)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        left, right = y.chunk(2, dim=1)
        return self.head((left + right).mean((2, 3)))


def test_bookkeeping_and_layernorm_rules_equal_their_formulas():
    model = Shuffle().eval()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 6, 6)
    forward = engine.forward(x)
    by_name = {n.name: (n, r) for n, r in forward.rules.items()}
    rel = torch.randn(3, 4, 2, 6, 6)  # at the transpose's output (b, c//2, 2, h, w)
    (_, got), = by_name["transpose"][1].backward(rel)
    torch.testing.assert_close(got, rel.transpose(1, 2))  # relevance follows the elements back
    rel = torch.randn(3, 6, 6, 8)
    (_, got), = by_name["permute"][1].backward(rel)
    torch.testing.assert_close(got, rel.permute(0, 3, 1, 2))
    (_, got), = by_name["norm"][1].backward(rel)  # statistics held constant: relevance passes
    torch.testing.assert_close(got, rel)
    rel = torch.randn(3, 4, 6, 6)
    items = [name for name in by_name if name.startswith("getitem")]
    assert len(items) == 2
    full = torch.zeros(3, 8, 6, 6)
    for i, name in enumerate(items):
        (source, got), = by_name[name][1].backward(rel)
        assert source.name == "permute_1"  # read through chunk from the chunked tensor
        full += got
        torch.testing.assert_close(got[:, 4 * i : 4 * i + 4], rel)
    torch.testing.assert_close(full, torch.cat([rel, rel], 1))
    attribution = engine.attribute(x)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[attribution.target]), rel=1e-4)


def test_unmerged_batchnorm_passes_relevance():
    """DenseNet-style pre-activation BatchNorm (after a concatenation) is kept, pass rule."""

    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 4, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.norm(torch.cat([self.a(x), self.b(x)], 1))
            return self.head(self.conv(F.relu(y)).mean((2, 3)))

    model = helpers.randomize_batchnorm(PreAct())
    engine = CRPEngine(model)
    assert isinstance(engine.graph_module.get_submodule("norm"), nn.BatchNorm2d)  # not merged
    x = torch.randn(1, 3, 6, 6)
    node, rule, _ = rule_of(engine, x, "norm")
    rel = torch.randn(2, 8, 6, 6)
    (_, got), = rule.backward(rel)
    torch.testing.assert_close(got, rel)
    assert_conserved(engine, x)


def test_stochastic_depth_and_drop_path_are_the_identity_in_eval_mode():
    model = family_model("torchvision", "efficientnet_b0")
    engine = CRPEngine(model)
    forward = engine.forward(torch.randn(1, 3, 32, 32))
    names = [n.name for n in forward.rules if "stochastic_depth" in n.name]
    assert names and all(type(forward.rules[n]).__name__ == "PassRule" for n in forward.rules if n.name in names)


def test_silu_model_equals_zennit_with_its_pass_rule():
    """zennit's EpsilonPlusFlat with SiLU mapped to its Pass rule (zennit has no SiLU entry)."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.rules import Pass

    torch.manual_seed(0)
    model = helpers.randomize_batchnorm(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ))
    x = torch.randn(1, 3, 16, 16)
    engine = CRPEngine(model, Composite(dead_units="drop"), zennit_compat="zennit")
    attribution = engine.attribute(x, init="one")
    composite = EpsilonPlusFlat(layer_map=[(nn.SiLU, Pass())], zero_params=["bias"], canonizers=[SequentialMergeBatchNorm()])
    with Gradient(model, composite) as attributor:
        _, ref = attributor(x.clone(), torch.eye(5)[[attribution.target]])
    err = float((attribution.input_relevance - ref[0]).abs().max() / ref[0].abs().max())
    assert err <= 1e-5


def test_table_lookup_prefers_added_rules_and_the_most_specific_class():
    table = Composite().with_rule(nn.Conv2d, rule_table.pass_rule).rule_table()
    assert table[nn.Conv2d] is rule_table.pass_rule
    default = Composite().rule_table()
    assert default[nn.Conv2d] is rule_table.conv_rule and default[nn.SiLU] is rule_table.pass_rule
    from conceptree.attribution.tracing import canonize

    graph = canonize(nn.Sequential(timm.layers.Conv2dSame(3, 4, 3)))  # a Conv2d subclass, traced as a leaf
    node = next(n for n in graph.graph.nodes if n.op == "call_module")
    assert rule_table.lookup(default, node, graph.get_submodule(node.target)) is rule_table.conv_rule


def test_convnext_pointwise_linear_layers_are_neurons_equal_to_their_conv_form():
    """ConvNeXt's ``nn.Linear`` on channels-last maps are 1x1 convolutions: exposed as neuron
    layers, and explained exactly like timm's ``conv_mlp`` variant with the same weights."""
    torch.manual_seed(0)
    linear = helpers.randomize_batchnorm(timm.create_model("convnext_atto", conv_mlp=False, pretrained=False)).eval()
    conv = timm.create_model("convnext_atto", conv_mlp=True, pretrained=False).eval()
    state = {k: v.reshape(conv.state_dict()[k].shape) for k, v in linear.state_dict().items()}
    conv.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(conv(x), linear(x), rtol=1e-4, atol=1e-5)

    eng_linear, eng_conv = CRPEngine(linear), CRPEngine(conv)
    kinds = {layer.name: layer.kind for layer in eng_linear.layers}
    assert kinds["stages.0.blocks.0.mlp.fc1"] == "pointwise" and kinds["stages.3.blocks.1.mlp.fc2"] == "pointwise"
    assert [(i.name, i.channels) for i in eng_linear.layers] == [(i.name, i.channels) for i in eng_conv.layers]
    assert "head.fc" not in kinds  # the classifier stays a dense layer

    a_lin, a_conv = eng_linear.attribute(x), eng_conv.attribute(x)
    torch.testing.assert_close(a_lin.heatmap, a_conv.heatmap, rtol=1e-3, atol=1e-6 * float(a_conv.heatmap.abs().max()))
    layer = "stages.1.blocks.0.mlp.fc1"
    assert a_lin.layer_relevance[layer].shape == a_conv.layer_relevance[layer].shape  # (C, h, w)
    top = a_conv.channel_relevance(layer).abs().argsort(descending=True)[:6].tolist()
    maps_lin = eng_linear.neuron_maps(a_lin, channels={layer: top})
    maps_conv = eng_conv.neuron_maps(a_conv, channels={layer: top})
    scale = float(abs(maps_conv.maps).max())
    assert abs(maps_lin.maps - maps_conv.maps).max() <= 1e-3 * scale
    assert abs(maps_lin.map_sums - maps_lin.relevance).max() <= 1e-4 * abs(maps_lin.relevance).max()

    # conditions on a pointwise layer mask its channels as on the conv form
    cond_lin, rec_lin = eng_linear.conditional_heatmaps(x, [{layer: top[:2]}, {layer: []}], record_layers=[layer])
    cond_conv, rec_conv = eng_conv.conditional_heatmaps(x, [{layer: top[:2]}, {layer: []}], record_layers=[layer])
    torch.testing.assert_close(cond_lin, cond_conv, rtol=1e-3, atol=1e-6 * float(cond_conv.abs().max()))
    torch.testing.assert_close(rec_lin[layer], rec_conv[layer].permute(0, 2, 3, 1), rtol=1e-3, atol=1e-7)
    assert int((rec_lin[layer][0].abs().sum((0, 1)) > 0).sum()) <= 2  # only the kept channels carry relevance
    kept = float(a_lin.channel_relevance(layer)[top[:2]].sum())
    group = eng_linear.group_maps(a_lin, [{layer: top[:2]}])
    assert float(group.sum()) == pytest.approx(kept, rel=1e-3, abs=1e-6 * abs(kept))


class GammaConvRule(rules.ConvRule):
    """LRP-gamma (Montavon et al. 2019): positive weights strengthened, ``w + gamma * w+``."""

    gamma = 0.25

    def contributions(self, xp, weight, bias, composite, constant):
        modified = weight + self.gamma * weight.clamp(min=0)
        return [(xp, modified)], self.conv(xp, modified), composite.stabilizer


def test_a_new_lrp_variant_is_one_subclass_and_one_table_row():
    """Gamma on the second conv, against a slow formula: R_i = sum_j x_i w'_ij R_j / sum_k x_k w'_kj."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)).eval().double()
    composite = Composite().with_rule(nn.Conv2d, rule_table.conv_variant(GammaConvRule))
    assert composite != Composite().with_rule(nn.Conv2d, rule_table.conv_variant(rules.EpsilonConvRule))
    engine = CRPEngine(model, composite)
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    forward = engine.forward(x)
    (node,) = [n for n in forward.rules if n.target == "2"]
    (first,) = [n for n in forward.rules if n.target == "0"]
    assert type(forward.rules[node]) is GammaConvRule and type(forward.rules[first]) is rules.FlatConvRule
    rel = torch.randn(2, 5, 5, 5, dtype=torch.float64)
    (_, got), = forward.rules[node].backward(rel)

    a = torch.relu(model[0](x))  # (1, 4, 7, 7), the conv's input
    w = model[2].weight
    w_mod = (w + 0.25 * w.clamp(min=0)).reshape(5, -1)  # (5, 4*3*3)
    patches = F.unfold(a, 3)[0]  # (36, 25): inputs under each output position
    contrib = w_mod[:, :, None] * patches[None]  # (5, 36, 25)
    z = contrib.sum(1)  # (5, 25)
    z = z + 1e-6 * torch.where(z >= 0, 1.0, -1.0)
    for b in range(2):
        share = (contrib * (rel[b].reshape(5, 1, 25) / z[:, None])).sum(0)  # (36, 25)
        want = F.fold(share[None], (7, 7), 3)[0]
        torch.testing.assert_close(got[b], want, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- rules carry their parameters
def _slow_conv(a: torch.Tensor, w_mod: torch.Tensor, rel: torch.Tensor, eps: float, size: int) -> torch.Tensor:
    """R_i = sum_j a_i w'_ij R_j / stab(sum_k a_k w'_kj, eps) for a 3x3 valid conv, per batch row."""
    w_mod = w_mod.reshape(w_mod.shape[0], -1)  # (C_out, C_in*9)
    patches = F.unfold(a, 3)[0]  # (C_in*9, L)
    contrib = w_mod[:, :, None] * patches[None]  # (C_out, C_in*9, L)
    z = contrib.sum(1)
    z = z + eps * torch.where(z >= 0, 1.0, -1.0)
    out = []
    for b in range(rel.shape[0]):
        share = (contrib * (rel[b].reshape(w_mod.shape[0], 1, -1) / z[:, None])).sum(0)
        out.append(F.fold(share[None], (size, size), 3)[0])
    return torch.stack(out)


def _small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)).eval().double()


def _rule_and_input(composite: Composite, target: str):
    model = _small_model()
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward = CRPEngine(model, composite).forward(x)
    (node,) = [n for n in forward.rules if n.target == target]
    return model, x, forward.rules[node]


@pytest.mark.parametrize("epsilon", [1e-2, 1e-6])
def test_the_epsilon_rule_uses_its_own_epsilon(epsilon):
    from conceptree.attribution.specs import Epsilon

    composite = Composite(layer_map={"conv": Epsilon(epsilon=epsilon)})
    model, x, rule = _rule_and_input(composite, "2")
    assert type(rule) is rules.EpsilonConvRule and rule.epsilon == epsilon
    rel = torch.randn(2, 5, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (_, got), = rule.backward(rel)
    a = torch.relu(model[0](x))
    # rtol 1e-6: torch's ``tensor * 0.01`` in rules.stabilize rounds the scalar (2e-10 here)
    torch.testing.assert_close(got, _slow_conv(a, model[2].weight, rel, epsilon, 7), rtol=1e-6, atol=1e-9)
    other = 1e-6 if epsilon == 1e-2 else 1e-2  # the parameter matters: the other value gives other numbers
    assert float(((got - _slow_conv(a, model[2].weight, rel, other, 7)).abs() / got.abs().max()).max()) > 1e-3


def test_two_gamma_values_in_one_composite_each_reach_their_layer():
    """``conv`` layers with gamma=0.1 (layer map), the dense layer with gamma=1.0 (added for nn.Linear)."""
    from conceptree.attribution.specs import Gamma

    composite = Composite(layer_map={"conv": Gamma(gamma=0.1)}).with_rule(nn.Linear, Gamma(gamma=1.0, stabilizer=1e-3))
    model, x, conv = _rule_and_input(composite, "2")
    _, _, dense = _rule_and_input(composite, "6")
    _, _, first = _rule_and_input(composite, "0")
    assert type(conv) is rules.GammaConvRule and conv.gamma == 0.1 and conv.stabilizer == 1e-6
    assert type(dense) is rules.GammaLinearRule and dense.gamma == 1.0 and dense.stabilizer == 1e-3
    assert type(first) is rules.FlatConvRule  # the first-layer map still wins
    rel = torch.randn(2, 5, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (_, got), = conv.backward(rel)
    a = torch.relu(model[0](x))
    w = model[2].weight
    torch.testing.assert_close(got, _slow_conv(a, w + 0.1 * w.clamp(min=0), rel, 1e-6, 7), rtol=1e-8, atol=1e-10)
    # the dense layer: R_i = sum_j h_i w'_ij R_j / stab(sum_k h_k w'_kj, 1e-3), w' = w + 1.0 w+
    h = model[:6](x)  # (1, 5)
    w_mod = model[6].weight + 1.0 * model[6].weight.clamp(min=0)  # (2, 5)
    z = h @ w_mod.T
    z = z + 1e-3 * torch.where(z >= 0, 1.0, -1.0)
    r_out = torch.randn(3, 2, dtype=torch.float64)
    (_, got_dense), = dense.backward(r_out)
    # rtol 1e-6: rules.stabilize rounds the scalar 1e-3 (see test_the_epsilon_rule_uses_its_own_epsilon)
    torch.testing.assert_close(got_dense, h * ((r_out / z) @ w_mod), rtol=1e-6, atol=1e-9)
    assert composite != Composite(layer_map={"conv": Gamma(gamma=0.1)}).with_rule(nn.Linear, Gamma(gamma=0.5))


def test_a_subclass_variant_takes_parameters_and_they_are_part_of_the_composite():
    """The previous release's way (a class attribute) still works; ``conv_variant(cls, gamma=...)``
    sets it per composite, and two values make two unequal composites."""
    with_default = Composite().with_rule(nn.Conv2d, rule_table.conv_variant(GammaConvRule))
    strong = Composite().with_rule(nn.Conv2d, rule_table.conv_variant(GammaConvRule, gamma=1.5))
    assert with_default != strong and strong == Composite().with_rule(nn.Conv2d, rule_table.conv_variant(GammaConvRule,
                                                                                                        gamma=1.5))
    model, x, rule = _rule_and_input(strong, "2")
    assert type(rule) is GammaConvRule and rule.gamma == 1.5 and GammaConvRule.gamma == 0.25
    rel = torch.randn(1, 5, 5, 5, dtype=torch.float64)
    (_, got), = rule.backward(rel)
    w = model[2].weight
    want = _slow_conv(torch.relu(model[0](x)), w + 1.5 * w.clamp(min=0), rel, 1e-6, 7)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    from conceptree import InputError

    with pytest.raises(InputError, match="no parameter 'gama'"):
        rule_table.conv_variant(GammaConvRule, gama=1.0)


def test_an_added_specification_on_a_parameterless_rule_is_refused():
    from conceptree import InputError
    from conceptree.attribution.specs import Gamma

    with pytest.raises(InputError, match="no parameters to set"):
        CRPEngine(_small_model(), Composite().with_rule(nn.ReLU, Gamma())).attribute(torch.randn(1, 3, 7, 7).double())


def test_the_first_layer_rule_is_the_composites_not_a_module_global():
    from conceptree.attribution.specs import Epsilon

    _, _, first = _rule_and_input(Composite(first_layer_map={"conv": Epsilon(epsilon=0.5)}), "0")
    assert type(first) is rules.EpsilonConvRule and first.epsilon == 0.5
    _, _, plain = _rule_and_input(Composite(first_layer_map={}), "0")
    assert type(plain) is rules.ZPlusConvRule
    with pytest.warns(DeprecationWarning, match="first_layer_map"):
        assert rule_table.FIRST_CONV_RULE is rules.FlatConvRule
