"""Inline notebook views: self-contained, scoped, small, equal after reload."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conceptree import ConceptExplainer, ConceptOptions, Explanation
from conceptree.render.notebook import MAX_BYTES, WRAPPER


@pytest.fixture(scope="module")
def explanation():
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    explainer = ConceptExplainer(model, options=ConceptOptions(k_range=(4, 6), max_neurons=200))
    x = torch.rand(1, 3, 64, 64)
    return explainer, explainer.explain(x)


def _check_self_contained(markup: str) -> None:
    assert "<script" not in markup.lower()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", markup), "external URL"
    assert "http://" not in markup and "https://" not in markup
    style = re.findall(r"<style>(.*?)</style>", markup, re.S)
    assert len(style) == 1
    selectors = [rule.split("{")[0] for rule in style[0].split("}") if "{" in rule]
    for selector in selectors:  # every rule is scoped to the wrapper: nothing leaks into the notebook
        assert all(part.strip().startswith(f".{WRAPPER}") for part in selector.split(",")), selector
    assert markup.startswith(f"<div class='{WRAPPER}'>")


def test_explanation_view_is_self_contained_small_and_reloads_equal(explanation, tmp_path):
    _, exp = explanation
    markup = exp._repr_html_()
    _check_self_contained(markup)
    assert len(markup.encode()) < MAX_BYTES
    assert f"Why {exp.target.name}?" in markup
    assert markup.count("class='card") == min(6, exp.concepts.k)
    again = Explanation.load(exp.save(tmp_path / "e", render=False))
    assert again._repr_html_() == markup


def test_show_one_concept_and_refuse_unknown(explanation):
    from conceptree.errors import InputError

    _, exp = explanation
    view = exp.show(concept=2)
    _check_self_contained(view._repr_html_())
    assert "#2</span>" in str(view) and "most relevant members" in str(view)
    assert str(exp.show()) == exp._repr_html_()
    with pytest.raises(InputError, match="no concept #99"):
        exp.show(concept=99)


def test_comparison_view(explanation):
    import torch

    explainer, exp = explanation
    comparison = explainer.trace(exp, [torch.rand(1, 3, 64, 64)])
    markup = comparison._repr_html_()
    _check_self_contained(markup)
    assert len(re.findall(r"<figcaption>#\d+ ratio ", markup)) == min(6, exp.concepts.k)
    assert np.isfinite([t.ratio for t in comparison.images[0].concepts]).all()
