"""Silent mismatches of the LRP composite, fixed: ``Composite.stabilizer`` reaches the norm rules
(it was a hard-coded constant there), and added rules are part of its JSON form and equality
(an explanation made with a custom rule used to reload and trace as if made without it)."""

from __future__ import annotations

import torch
from torch import nn

from conceptree import Composite, CRPEngine
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
