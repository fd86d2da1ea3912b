"""Engine behaviour: batched start step, determinism, functional ops, bad input."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conceptree import Composite, InputError, UnsupportedModelError
from conceptree.attribution import CRPEngine

from . import helpers


class Functional(nn.Module):
    """Functional ops in forward: torch.add, cat, pad, slicing, stack+sum, F.relu, view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.conv3 = nn.Conv2d(16, 8, 3, stride=2, padding="same" if False else 1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)))
        b = F.relu(self.conv2(a))
        c = torch.cat([a, torch.add(a, b)], dim=1)
        c = F.pad(c[:, :, 1:, 1:], (0, 1, 0, 1))
        d = F.relu(self.conv3(c))
        d = torch.stack([d, d * 1.0 if False else d], dim=-1).sum(-1)
        d = F.adaptive_avg_pool2d(d, 4)
        return self.fc(d.view(d.size(0), -1))


@pytest.fixture
def functional_model():
    torch.manual_seed(0)
    return helpers.randomize_batchnorm(Functional())


def test_functional_ops_conserve(functional_model):
    engine = CRPEngine(functional_model)
    x = torch.randn(1, 3, 16, 16)
    attribution = engine.attribute(x)
    neurons = engine.neuron_maps(attribution, batch_size=3)
    assert len(neurons) == 8 + 8 + 8
    scale = max(float(attribution.channel_relevance(layer.name).abs().max()) for layer in engine.layers)
    assert abs(neurons.map_sums - neurons.relevance).max() <= 1e-4 * scale


def test_start_step_equals_masked_full_backward(functional_model):
    """The 1/C start step (selected filters only) equals masking the layer and running the full rule."""
    engine = CRPEngine(functional_model)
    attribution = engine.attribute(torch.randn(1, 3, 16, 16))
    forward = attribution.forward
    for layer in ("conv2", "conv3"):  # grouped and plain convolutions
        node = engine._graph.node(layer)
        rule = forward.rules[node]
        rel = attribution.layer_relevance[layer].unsqueeze(0)
        channels = torch.tensor([0, 3, 7])
        fast = rule.backward_channels(rel, channels)[0][1]
        masked = torch.zeros((3, *rel.shape[1:]))
        masked[torch.arange(3), channels] = rel[0, channels]
        slow = rule.backward(masked)[0][1]
        assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-7)


def test_maps_do_not_depend_on_batch_size_or_order():
    model = helpers.cifar_model()
    engine = CRPEngine(model)
    x = torch.randn(1, 3, 32, 32)
    attribution = engine.attribute(x)
    a = engine.neuron_maps(attribution, batch_size=7, channels={"layer2.0.conv1": [5, 1, 30]})
    b = engine.neuron_maps(attribution, batch_size=2, channels={"layer2.0.conv1": [5, 1, 30]})
    assert (a.maps == b.maps).all() or torch.allclose(torch.from_numpy(a.maps), torch.from_numpy(b.maps), atol=1e-9)
    again = engine.neuron_maps(engine.attribute(x), batch_size=7, channels={"layer2.0.conv1": [5, 1, 30]})
    assert (a.maps == again.maps).all()


def test_skip_connection_relevance_is_excluded():
    """A map of the last conv of a residual block excludes what flows around it: the maps of
    that layer sum to the layer total, which is less than the block output's relevance."""
    engine = CRPEngine(helpers.torchvision_model("resnet18"))
    attribution = engine.attribute(torch.randn(1, 3, 64, 64))
    layer_total = float(attribution.layer_relevance["layer1.1.conv2"].sum())
    neurons = engine.neuron_maps(attribution, channels={"layer1.1.conv2": range(64)})
    assert neurons.maps.sum() == pytest.approx(layer_total, rel=1e-4)
    # the block's input (layer1.0 output) carries relevance that bypasses layer1.1.conv2
    assert float(attribution.input_relevance.sum()) > layer_total * 1.01


def test_layer_selection_with_globs():
    engine = CRPEngine(helpers.torchvision_model("resnet18"), layers=["layer4.*"], exclude_layers=["*downsample*"])
    assert [layer.name for layer in engine.layers] == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"
    ]


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.zeros(2, 3, 32, 32), "one image"),
        (torch.zeros(1, 1, 32, 32), "expects 3"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float tensor"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        ("image.png", "torch.Tensor"),
    ],
)
def test_bad_input_tensor(bad, message):
    engine = CRPEngine(helpers.cifar_model())
    with pytest.raises(InputError, match=message):
        engine.attribute(bad)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(InputError, match="close matches: .*layer1.0.conv1"):
        CRPEngine(helpers.cifar_model(), layers=["layer1.0.conv"])


def test_target_out_of_range():
    engine = CRPEngine(helpers.cifar_model())
    with pytest.raises(InputError, match="outside the model's 10 classes"):
        engine.attribute(torch.randn(1, 3, 32, 32), target=10)


def test_training_mode_is_switched_to_eval_with_a_warning():
    model = helpers.cifar_model().train()
    with pytest.warns(UserWarning, match="training mode"):
        engine = CRPEngine(model)
    assert model.training  # the user's model is untouched
    assert not engine.graph_module.training


class _Exp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.exp(self.conv(x)).mean((2, 3)))


class _ExpMethod(_Exp):
    def forward(self, x):
        return self.fc(self.conv(x).exp().mean((2, 3)))


class _Ratio(_Exp):
    def forward(self, x):
        y = self.conv(x)
        return self.fc((y / torch.sigmoid(y)).mean((2, 3)))


class _Softmin(_Exp):
    def __init__(self):
        super().__init__()
        self.soft = nn.Softmin(dim=1)

    def forward(self, x):
        return self.fc(self.soft(self.conv(x)).mean((2, 3)))


class _Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.up(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "model,message",
    [(_Exp(), "unsupported function exp"), (_ExpMethod(), r"unsupported method \.exp\(\)"),
     (_Ratio(), "division by an activation"), (_Softmin(), "unsupported module Softmin 'soft'")],
)
def test_unsupported_ops_are_named_with_the_registration_hint(model, message):
    with pytest.raises(UnsupportedModelError, match=message) as info:
        CRPEngine(model.eval()).attribute(torch.randn(1, 3, 8, 8))
    assert "with_rule" in str(info.value) and "\n" not in str(info.value)


def test_a_registered_rule_explains_a_custom_module():
    """Nearest upsampling registered as index bookkeeping: relevance follows the copied pixels."""
    from conceptree.attribution import rule_table

    torch.manual_seed(0)
    model = _Upsample().eval()
    composite = Composite().with_rule(
        nn.Upsample, lambda ctx: rule_table.index_rule(ctx, ctx.arg0, ctx.x, ctx.module))
    assert Composite() != composite  # added rules are part of the composite's identity (by name)
    assert composite.to_dict()["extra_rules"][0][0] == "torch.nn.modules.upsampling.Upsample"
    engine = CRPEngine(model, composite)
    attribution = engine.attribute(torch.randn(1, 3, 8, 8))
    r = attribution.channel_relevance("conv")
    assert float(attribution.heatmap.sum()) == pytest.approx(float(r.sum()), rel=1e-4)
    with pytest.raises(InputError, match="callable factory"):
        Composite().with_rule(nn.Upsample, "pass")


def test_composite_name_is_checked():
    with pytest.raises(InputError, match="unknown composite"):
        Composite("alpha-beta")


def test_one_layer_lookup_names_unknown_and_unselected_layers():
    engine = CRPEngine(helpers.cifar_model(), layers=["layer1.*"])
    attribution = engine.attribute(torch.randn(1, 3, 32, 32))
    assert engine.names == [layer.name for layer in engine.layers] and all(n.startswith("layer1.") for n in engine.names)
    for call in (lambda: engine.neuron_maps(attribution, channels={"layer1.0.conv9": [0]}),
                 lambda: engine.group_maps(attribution, [{"layer1.0.conv9": [0]}]),
                 lambda: engine.absorbing_flows(attribution, [{"layer1.0.conv9": [0]}]),
                 lambda: engine.conditional_heatmaps(attribution.forward, [{"layer1.0.conv9": [0]}])):
        with pytest.raises(InputError, match=r"unknown layer 'layer1.0.conv9'; known: .*layer1.0.conv1"):
            call()
    with pytest.raises(InputError, match="'layer2.0.conv1' is not among the engine's selected layers"):
        engine.group_maps(attribution, [{"layer2.0.conv1": [0]}])  # exists in the model, not selected
    with pytest.raises(InputError, match="out of range"):
        engine.group_maps(attribution, [{"layer1.0.conv1": [999]}])


def test_conditional_maps_leave_the_callers_attribution_unchanged():
    """Batches of maps run on a channels-last copy of the pass, made once per attribution."""
    engine = CRPEngine(helpers.cifar_model())
    attribution = engine.attribute(torch.randn(1, 3, 32, 32))
    forward = attribution.forward
    before = {node: dict(vars(rule)) for node, rule in forward.rules.items()}
    first = engine.neuron_maps(attribution, channels={"layer2.0.conv1": [1, 2]})
    engine.group_maps(attribution, [{"layer2.0.conv1": [1]}, {"layer1.0.conv2": [0, 3]}])
    engine.absorbing_flows(attribution, [{"layer2.0.conv1": [1]}], dtype=torch.float64)
    assert not forward.channels_last_rules and attribution.forward is forward
    for node, rule in forward.rules.items():  # the very same tensors, in their own layout
        assert all(value is before[node][key] for key, value in vars(rule).items())
    copy = engine._channels_last(forward)
    assert copy is engine._channels_last(forward) and copy.channels_last_rules  # converted once per attribution
    again = engine.neuron_maps(engine.attribute(attribution.forward.input), channels={"layer2.0.conv1": [1, 2]})
    assert (first.maps == again.maps).all()
    gc.collect()
    assert engine._layout is None  # the copy of a pass that is gone is not held


def test_absorbing_flows_of_one_group_in_one_layer_is_its_group_map():
    """Nothing of a single one-layer group can be absorbed below it: everything reaches the input
    (or leaks), and its input maps are the group's summed conditional map."""
    engine = CRPEngine(helpers.cifar_model(), dtype=torch.float64)
    attribution = engine.attribute(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    groups = [{"layer2.0.conv1": [1, 5, 9]}, {"layer1.1.conv2": [0, 2]}]
    flows = engine.absorbing_flows(attribution, groups[:1])
    torch.testing.assert_close(flows.input_maps, engine.group_maps(attribution, groups[:1]), rtol=1e-12, atol=1e-14)
    assert flows.absorbed.shape == (1, 1) and float(flows.absorbed[0, 0]) == 0.0
    expected = float(attribution.layer_relevance["layer2.0.conv1"][[1, 5, 9]].double().sum())
    assert float(flows.start[0]) == pytest.approx(expected, rel=1e-12)
    assert float(flows.to_input[0]) == pytest.approx(float(flows.input_maps[0].double().sum()), rel=1e-9)
    both = engine.absorbing_flows(attribution, groups, batch_size=1)
    assert float(both.absorbed[0, 1]) != 0.0 and float(both.absorbed[1, 0]) == 0.0  # relevance flows downwards only


def test_node_level_methods_are_deprecated_aliases():
    engine = CRPEngine(helpers.cifar_model())
    attribution = engine.attribute(torch.randn(1, 3, 32, 32))
    with pytest.warns(DeprecationWarning, match="node_of_layer"):
        node = engine.node_of_layer("layer1.0.conv1")
    with pytest.warns(DeprecationWarning, match="layer_node"):
        assert engine.layer_node("layer1.0.conv1") is node is engine._graph.node("layer1.0.conv1")
    rel = attribution.layer_relevance["layer1.0.conv1"][None]
    with pytest.warns(DeprecationWarning, match="node_layout"):
        start = {node: engine.node_layout(attribution.forward, node, rel)}
    with pytest.warns(DeprecationWarning, match="propagate"):
        input_rel, _ = engine.propagate(attribution.forward, start)
    torch.testing.assert_close(input_rel.sum(1), engine.group_maps(attribution, [{"layer1.0.conv1": range(16)}]))
    with pytest.warns(DeprecationWarning, match="propagate_absorbing"):
        engine.propagate_absorbing(attribution.forward, start, {})
    with pytest.warns(DeprecationWarning, match="fine_nodes"):
        assert {n.op for n in engine.fine_nodes(attribution.forward, (8, 8))} >= {"placeholder"}
