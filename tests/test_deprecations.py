"""Renamed public names keep working for one release and say where they went (README: API changes)."""

from __future__ import annotations

import importlib
import sys

import pytest

import conceptree


@pytest.mark.parametrize("name, module", [
    ("CRPEngine", "conceptree.attribution"), ("Attribution", "conceptree.attribution"),
    ("NeuronMaps", "conceptree.attribution"), ("PRESETS", "conceptree.concepts.options"),
    ("Preprocessing", "conceptree.models.loading"),
])
def test_old_top_level_names_warn_and_are_the_new_objects(name, module):
    with pytest.warns(DeprecationWarning, match=f"conceptree.{name} moved to {module}"):
        old = getattr(conceptree, name)
    assert old is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old, new", [
    ("conceptree.report", "conceptree.render.report"), ("conceptree.notebook", "conceptree.render.notebook"),
    ("conceptree.concepts.graph", "conceptree.concepts.flows"), ("conceptree.attribution.graph", "conceptree.attribution.tracing"),
    ("conceptree.evaluation.cub_parts", "conceptree.datasets.cub_parts"), ("conceptree.compare", "conceptree.comparison"),
    ("conceptree.colours", "conceptree.render.colours"), ("conceptree.report_graph", "conceptree.render.flows_svg"),
    ("conceptree.evaluation.images", "conceptree.datasets.images"),
    ("conceptree.evaluation.cub_expert", "conceptree.datasets.cub_expert"),
    ("conceptree.evaluation.faces_parts", "conceptree.datasets.faces_parts"),
])
def test_moved_modules_warn_and_reexport(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    public = [n for n in dir(importlib.import_module(new)) if not n.startswith("_")]
    assert public and all(getattr(module, n) is getattr(importlib.import_module(new), n) for n in public)


def test_the_old_compare_module_is_callable_as_the_function(monkeypatch):
    monkeypatch.delitem(sys.modules, "conceptree.compare", raising=False)
    with pytest.warns(DeprecationWarning):
        module = importlib.import_module("conceptree.compare")
    assert callable(module) and module.compare is sys.modules["conceptree.explain"].compare


def test_renamed_functions_and_types_warn():
    from conceptree.dictionary import features
    from conceptree.models import loading

    with pytest.warns(DeprecationWarning, match="LoadedModel"):
        assert loading.ModelSpec is loading.LoadedModel
    with pytest.warns(DeprecationWarning, match="index_features"):
        with pytest.raises(TypeError):
            features.neuron_features()


def test_replace_of_a_composite_parameter_changes_its_rules():
    from dataclasses import replace

    from conceptree import Composite

    changed = replace(Composite(), epsilon=1e-3, stabilizer=1e-4)
    assert changed == Composite(epsilon=1e-3, stabilizer=1e-4) != Composite()
    assert (changed.epsilon, changed.stabilizer) == (1e-3, 1e-4)


def test_presets_are_read_only():
    from conceptree.concepts.options import DEFAULT_HIERARCHY, PRESETS

    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["default"]  # type: ignore[index]
    with pytest.raises(TypeError):
        DEFAULT_HIERARCHY["with_index"] = "tree"  # type: ignore[index]


def test_the_top_level_holds_what_a_user_needs():
    assert set(conceptree.__all__) >= {"explain", "compare", "ConceptExplainer", "Explanation", "ConceptOptions",
                                       "Composite", "load_model", "build_index", "build_dictionary", "explain_many",
                                       "ConceptreeError", "InputError", "ModelError"}
    assert all(callable(getattr(conceptree, name)) for name in ("build_index", "build_dictionary", "explain_many"))
    assert not {"CRPEngine", "Attribution", "NeuronMaps", "PRESETS"} & set(conceptree.__all__)
