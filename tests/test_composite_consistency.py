"""Silent mismatches of the LRP composite, fixed: ``Composite.stabilizer`` reaches the norm rules
(it was a hard-coded constant there), and added rules are part of its JSON form and equality
(an explanation made with a custom rule used to reload and trace as if made without it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptree import Composite
from conceptree.attribution import CRPEngine
from conceptree.attribution.rules import stabilize


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + self.b(h)  # residual sum: the norm rule
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def test_the_composites_stabilizer_reaches_the_norm_rules():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(1, 3, 6, 6)
    results = {}
    for eps in (1e-6, 0.5):
        engine = CRPEngine(model, Composite(stabilizer=eps))
        forward = engine.forward(x)
        add = next(node for node in forward.rules if node.name == "add")
        rule = forward.rules[add]
        relevance = torch.randn(1, *forward.shapes[add][1:])
        (_, r0), (_, r1) = rule.backward(relevance)
        # the norm rule's formula with this stabiliser
        total = rule.values[0] + rule.values[1]
        expected = rule.values[0] * relevance / stabilize(total, eps)
        assert torch.allclose(r0, expected, rtol=1e-5, atol=1e-7)
        results[eps] = engine.attribute(x).heatmap
    assert not torch.allclose(results[1e-6], results[0.5])


def relu_passes(ctx):
    """A custom rule (the built-in behaviour, under a name of its own)."""
    from conceptree.attribution import rules

    return rules.PassRule(ctx.arg0)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.b(self.act(self.a(x))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def test_a_custom_rule_survives_save_load_and_trace(tmp_path):
    import pytest

    from conceptree import ConceptExplainer, Explanation, InputError
    from conceptree.concepts.options import ConceptOptions

    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 12, 12)
    custom = Composite().with_rule(nn.ReLU, relu_passes)
    options = ConceptOptions(max_neurons=None, k_range=(2, 3))
    explainer = ConceptExplainer(model, composite=custom, options=options)
    explanation = explainer.explain(x)
    assert explanation.to_dict()["composite"]["extra_rules"] == [
        ["torch.nn.modules.activation.ReLU", f"{__name__}.relu_passes"]]
    explanation.save(tmp_path / "e")
    back = Explanation.load(tmp_path / "e")
    assert back.composite == custom and back.composite != Composite()  # used to reload without the rule
    plain = ConceptExplainer(model, options=options)
    with pytest.raises(InputError, match="other layers or LRP rules"):
        plain.trace(back, [x])  # used to be accepted
    same = ConceptExplainer.for_explanation(model, back, composite=Composite().with_rule(nn.ReLU, relu_passes))
    comparison = same.trace(back, [x])
    assert comparison is not None
    with pytest.raises(InputError, match="cannot be restored"):
        ConceptExplainer.for_explanation(model, back)  # the names alone cannot rebuild the rule


# --------------------------------------------------------------------------- a composite is data
#: ``Composite().to_dict()`` of the previous release (before the layer maps), printed by it verbatim
OLD_DEFAULT = {'name': 'epsilon-plus-flat', 'epsilon': 1e-06, 'stabilizer': 1e-06, 'zero_bias': True,
               'dead_units': 'flat', 'extra_rules': []}


def _composites():
    from conceptree.attribution.rule_table import conv_variant
    from conceptree.attribution.rules import EpsilonConvRule
    from conceptree.attribution.specs import Epsilon, Flat, Gamma, Norm

    return [
        Composite(),
        Composite("epsilon-plus", zero_bias=False, dead_units="drop"),
        Composite(epsilon=1e-3, stabilizer=1e-4),
        Composite(layer_map={"conv": Gamma(gamma=0.5, stabilizer=1e-5), "norm": Norm(stabilizer=0.1)},
                  first_layer_map={"conv": Flat(stabilizer=1e-3)}),
        Composite(first_layer_map={}).with_rule(nn.Linear, Gamma(gamma=2.0)).with_rule(nn.ReLU, relu_passes),
        Composite().with_rule(nn.Conv2d, conv_variant(EpsilonConvRule, epsilon=0.25)),
        Composite(layer_map={"linear": Epsilon(epsilon=0.5)}),
    ]


def test_every_composite_round_trips_through_json_with_its_parameters():
    import json

    for composite in _composites():
        data = json.loads(json.dumps(composite.to_dict()))
        back = Composite.from_dict(data)
        assert back == composite and back.to_dict() == data
    # every parameter is written down
    data = _composites()[3].to_dict()
    assert data["layer_map"]["conv"] == {"rule": "gamma", "gamma": 0.5, "stabilizer": 1e-5}
    assert data["layer_map"]["norm"] == {"rule": "norm", "stabilizer": 0.1}
    assert data["first_layer_map"] == {"conv": {"rule": "flat", "stabilizer": 1e-3}}
    assert _composites()[4].to_dict()["extra_rules"] == [
        ["torch.nn.modules.linear.Linear", {"rule": "gamma", "gamma": 2.0, "stabilizer": 1e-6}],
        ["torch.nn.modules.activation.ReLU", f"{__name__}.relu_passes"]]


def test_composites_that_differ_in_any_parameter_are_unequal_and_their_keys_mismatch():
    from conceptree.attribution.rule_table import conv_variant
    from conceptree.attribution.rules import GammaConvRule
    from conceptree.attribution.specs import Gamma
    from conceptree.compatibility import composite_key, index_key, key_mismatch

    pairs = [
        (Composite(layer_map={"conv": Gamma(gamma=0.25)}), Composite(layer_map={"conv": Gamma(gamma=0.5)})),
        (Composite().with_rule(nn.Conv2d, conv_variant(GammaConvRule, gamma=0.25)),
         Composite().with_rule(nn.Conv2d, conv_variant(GammaConvRule, gamma=0.5))),
        (Composite().with_rule(nn.Conv2d, Gamma(gamma=0.25)), Composite().with_rule(nn.Conv2d, Gamma(gamma=0.5))),
        (Composite(epsilon=1e-6), Composite(epsilon=1e-2)),
        (Composite(stabilizer=1e-6), Composite(stabilizer=1e-2)),
        (Composite(), Composite(first_layer_map={})),
    ]
    for a, b in pairs:
        assert a != b
        key = index_key("h", composite_key(a), ["l"], None, "predicted")
        assert key_mismatch(key, "h", composite_key(b), ["l"], None) == ["LRP rules"]
        assert key_mismatch(key, "h", composite_key(a), ["l"], None) == []
        assert Composite.from_dict(composite_key(a)) != b
    assert Composite(layer_map={"conv": Gamma(gamma=0.5)}) == Composite(layer_map={"conv": Gamma(gamma=0.5)})


def test_the_previous_releases_composite_dicts_load_and_match():
    from conceptree import InputError
    from conceptree.compatibility import composite_key, index_key, key_difference, key_mismatch

    assert Composite.from_dict(OLD_DEFAULT) == Composite()
    old_custom = {**OLD_DEFAULT, "name": "epsilon-plus", "stabilizer": 0.5, "zero_bias": False,
                  "extra_rules": [["torch.nn.modules.activation.ReLU", f"{__name__}.relu_passes"]]}
    back = Composite.from_dict(old_custom)
    assert back == Composite("epsilon-plus", stabilizer=0.5, zero_bias=False).with_rule(nn.ReLU, relu_passes)
    assert back.stabilizer == 0.5 and back.layer_rule("conv").params() == {"stabilizer": 0.5}
    with pytest.raises(InputError, match="cannot be restored"):
        back.rule_table()
    # an index or dictionary key written by the previous release still matches (and only then)
    old_key = index_key("h", OLD_DEFAULT, ["l"], None, "predicted")
    assert key_mismatch(old_key, "h", composite_key(Composite()), ["l"], None) == []
    assert key_mismatch(old_key, "h", composite_key(Composite(epsilon=0.1)), ["l"], None) == ["LRP rules"]
    assert key_difference(index_key("h", composite_key(Composite()), ["l"], None, "predicted"), old_key) == []
    # what it cannot read is refused in one line
    with pytest.raises(InputError, match="unknown fields \\['alpha'\\]"):
        Composite.from_dict({**OLD_DEFAULT, "alpha": 1.0})
    with pytest.raises(InputError, match="unknown LRP rule"):
        Composite.from_dict({**Composite().to_dict(), "layer_map": {"conv": {"rule": "alpha-beta"}}})
    assert key_mismatch(old_key, "h", {"name": "x", "alpha": 1}, ["l"], None) == ["LRP rules"]


def test_presets_and_variant_tables_are_read_only():
    from conceptree.attribution import composites, rule_table, specs

    for table in (composites.PRESETS, rule_table.CONV_VARIANTS, rule_table.LINEAR_VARIANTS, specs.SPECS):
        with pytest.raises(TypeError):
            table["mine"] = None  # type: ignore[index]
    assert isinstance(composites.COMPOSITE_NAMES, tuple)
    assert isinstance(composites.PRESETS["epsilon-plus-flat"].layer_map, tuple)
    with pytest.raises(AttributeError):
        Composite().zero_bias = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        specs.Gamma().gamma = 1.0  # type: ignore[misc]


def test_layer_maps_are_checked():
    from conceptree import InputError
    from conceptree.attribution.specs import Epsilon, Norm

    with pytest.raises(InputError, match="does not apply to conv layers"):
        Composite(layer_map={"conv": Norm()})
    with pytest.raises(InputError, match="unknown layer kind 'pool'"):
        Composite(layer_map={"pool": Norm()})
    with pytest.raises(InputError, match="first_layer_map has an unknown layer kind 'norm'"):
        Composite(first_layer_map={"norm": Norm()})
    with pytest.raises(InputError, match="does not apply to norm layers"):
        Composite(layer_map={"norm": Epsilon()})


def test_reading_a_composite_does_not_import_the_engine_or_torch():
    """``conceptree.attribution.composites`` is data: importing it (and reading a saved one) loads
    neither the rule table, the rules, the engine nor torch (the package's own ``__init__`` aside)."""
    import subprocess
    import sys
    from pathlib import Path

    import conceptree

    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('conceptree'); pkg.__path__ = [{str(Path(conceptree.__file__).parent)!r}]\n"
        "sys.modules['conceptree'] = pkg\n"
        "from conceptree.attribution.composites import Composite\n"
        f"Composite.from_dict({OLD_DEFAULT!r}).to_dict()\n"
        "print(sorted(m for m in sys.modules if m.startswith('conceptree.attribution')), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['conceptree.attribution', 'conceptree.attribution.composites', 'conceptree.attribution.specs'] False"
