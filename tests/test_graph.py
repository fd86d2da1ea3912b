"""Concept flows (first passage) against a slow formula built on the plain masked propagation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conceptree.attribution import CRPEngine
from conceptree.attribution._propagate import propagate, propagate_absorbing
from conceptree.comparison import lost_parts
from conceptree.concepts import Concept, Neuron, find_concepts
from conceptree.concepts.features import neuron_features
from conceptree.concepts.flows import EDGE_SHARE, ConceptFlows, concept_flows
from conceptree.concepts.options import ConceptOptions
from conceptree.explainer import ConceptExplainer
from conceptree.explanation import Explanation
from conceptree.models.loading import Preprocessing
from conceptree.render.flows_svg import graph_svg

from .helpers import cifar_model


@pytest.fixture(scope="module")
def explained(cifar_image):
    engine = CRPEngine(cifar_model(), dtype=torch.float64)
    attribution = engine.attribute(cifar_image)
    neurons = neuron_features(engine, attribution, "layer", max_neurons=150, map_size=(8, 8))
    concepts = find_concepts(neurons, k=6).concepts
    return engine, attribution, concepts


def slow_flows(engine, attribution, concepts) -> tuple[np.ndarray, np.ndarray]:
    """``(absorbed (k, k), to_input (k,))`` from the private ``propagate`` with per-row masks: each member
    of a concept is a batch row; at each absorbing layer the arrivals are recorded with every
    *other* absorbing layer masked (so only first passages reach it)."""
    forward = attribution.forward
    owner = {}
    for c, concept in enumerate(concepts):
        for layer, chans in concept.groups().items():
            owner.setdefault(layer, np.full(attribution.layer_relevance[layer].shape[0], -1))[chans] = c
    k = len(concepts)
    absorbed, to_input = np.zeros((k, k)), np.zeros(k)
    for c, concept in enumerate(concepts):
        members = [(n.layer, n.channel) for n in concept.neurons]
        start = {}
        for row, (layer, ch) in enumerate(members):
            node = engine._graph.node(layer)
            rel = attribution.layer_relevance[layer]
            start.setdefault(node, rel.new_zeros((len(members), *rel.shape)))[row, ch] = rel[ch]
        start = {node: engine._graph.node_layout(forward, node, rel) for node, rel in start.items()}

        def masks(keep_layer, members=members):
            out = {}
            for layer, who in owner.items():
                node = engine._graph.node(layer)
                rel = attribution.layer_relevance[layer]
                m = torch.ones((len(members), rel.shape[0], 1, 1), dtype=rel.dtype)
                for row, (mlayer, _) in enumerate(members):
                    if layer not in (keep_layer, mlayer):  # a member's own start is never masked
                        m[row, torch.as_tensor(who >= 0)] = 0.0
                out[node] = engine._graph.node_layout(forward, node, m)
            return out

        for layer, who in owner.items():
            node = engine._graph.node(layer)
            _, recorded = propagate(engine._graph, forward, start, masks=masks(layer), record=[node])
            if node not in recorded:
                continue
            rel = recorded[node]  # a conv layer of the ResNet: channels-first
            per_channel = rel.double().flatten(2).sum(2).numpy()  # (rows, channels), starts included
            for row, (mlayer, _) in enumerate(members):
                if mlayer == layer:  # this row's start sits here: nothing arrives at its own layer
                    continue
                absorbed[c] += np.bincount(who[who >= 0], weights=per_channel[row, who >= 0], minlength=k)
        input_rel, _ = propagate(engine._graph, forward, start, masks=masks(None))
        to_input[c] = float(input_rel.double().sum())
    return absorbed, to_input


def test_flows_equal_a_slow_formula_and_rows_sum_to_one(explained):
    engine, attribution, concepts = explained
    flows = concept_flows(engine, attribution, concepts, batch_size=4, dtype=None)
    absorbed, to_input = slow_flows(engine, attribution, concepts)
    scale = np.array([c.relevance for c in concepts])
    expected = absorbed / scale[:, None]
    np.testing.assert_allclose(np.diag(expected), flows.self_share, atol=1e-9)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(expected, flows.flows, atol=1e-9)
    np.testing.assert_allclose(to_input / scale, flows.to_input, atol=1e-9)
    total = flows.flows.sum(1) + flows.self_share + flows.to_input + flows.leak
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert np.all(np.abs(flows.leak) < 0.05)  # z+ and epsilon lose little (bias terms)
    again = ConceptFlows.from_dict(flows.to_dict())
    assert np.array_equal(again.flows, flows.flows)
    fast = concept_flows(engine, attribution, concepts)  # the default: float32 batches of the float64 pass
    np.testing.assert_allclose(fast.flows, flows.flows, atol=1e-5)
    np.testing.assert_allclose(fast.to_input, flows.to_input, atol=1e-5)
    assert attribution.forward.rules[engine._graph.node(engine.layers[0].name)].inv_z.dtype == torch.float64


def test_without_absorbers_it_is_the_plain_propagation(explained):
    engine, attribution, _ = explained
    forward = attribution.forward
    layer = engine.layers[-1].name
    node = engine._graph.node(layer)
    rel = attribution.layer_relevance[layer][None]
    start = {node: engine._graph.node_layout(forward, node, rel)}
    plain, _ = propagate(engine._graph, forward, start)
    absorbing, taken = propagate_absorbing(engine._graph, forward, start, {})
    assert torch.equal(plain, absorbing) and taken == {}


def _whole_layer_concept(rank: int, layer: str, relevance: torch.Tensor) -> Concept:
    per_channel = relevance.double().flatten(1).sum(1)
    neurons = [Neuron(layer, int(c), float(per_channel[c])) for c in range(len(per_channel))]
    return Concept(rank=rank, relevance=float(per_channel.sum()), share=0.0, representative=neurons[0],
                   neurons=neurons, layer_histogram={layer: len(neurons)}, index=np.arange(len(neurons)))


def test_a_concept_of_every_neuron_reproduces_the_unconditioned_layer_relevance(cifar_image):
    """On a chain of convs every layer is a cut: concept A = every channel of the top conv carries
    all the relevance, and what it brings to B = every channel of a lower conv is the plain pass's
    relevance of that layer, channel by channel (and likewise B to C)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10)).eval()
    engine = CRPEngine(model, dtype=torch.float64)
    attribution = engine.attribute(cifar_image)
    names = [layer.name for layer in engine.layers]
    assert len(names) == 3
    concepts = [_whole_layer_concept(rank, name, attribution.layer_relevance[name])
                for rank, name in enumerate(reversed(names), start=1)]
    flows = concept_flows(engine, attribution, concepts, dtype=None)
    for upper, lower in ((0, 1), (1, 2)):
        brought = flows.flows[upper, lower] * concepts[upper].relevance
        assert brought == pytest.approx(concepts[lower].relevance, rel=1e-9)
    assert flows.flows[0, 2] == 0.0 and np.all(np.triu(flows.flows.T) == 0.0)  # first passage; only downwards
    np.testing.assert_allclose(flows.to_input[:2], 0.0, atol=1e-12)
    forward = attribution.forward
    top, middle = engine._graph.node(names[-1]), engine._graph.node(names[1])
    start = {top: engine._graph.node_layout(forward, top, attribution.layer_relevance[names[-1]][None])}
    ones = engine._graph.node_layout(forward, middle, torch.ones((1, 12, 1, 1), dtype=torch.float64))
    _, taken = propagate_absorbing(engine._graph, forward, start, {middle: ones})
    expected = attribution.layer_relevance[names[1]].double().flatten(1).sum(1)
    torch.testing.assert_close(taken[middle][0], expected, atol=1e-12, rtol=1e-9)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()


def test_the_graph_is_saved_drawn_and_traced(tmp_path):
    """explain -> explanation.json's concept_flows -> reload equal -> the report's SVG has one path per
    edge >= 5% and the cards link them; trace on the same image gives the same flows and loses no part."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
    model = tiny_model()
    explainer = ConceptExplainer(model, preprocessing=Preprocessing(resize=32, crop=32),
                                 options=ConceptOptions(k_range=(3, 5), max_neurons=100, precision="float64",
                                                            hierarchy="none"))
    ref = explainer.explain(photo)
    assert ref.flows is not None and ref.flows.k == ref.concepts.k
    assert "graph_s" in ref.timings
    out = ref.save(tmp_path / "ref")
    saved = json.loads((out / "explanation.json").read_text())
    assert len(saved["concept_flows"]["flows"]) == ref.concepts.k
    again = Explanation.load(out)
    assert np.array_equal(again.flows.flows, ref.flows.flows)
    page = (out / "report.html").read_text()
    edges = int((ref.flows.flows[ref.flows.defined] >= EDGE_SHARE).sum())  # rows of positive concepts only
    svg = graph_svg(ref)
    assert svg.count("<path ") == edges and svg.count("<circle ") == ref.concepts.k
    assert "What each concept is made of" in page and page.count("<b>made of</b>") == ref.concepts.k
    for c, d in zip(*np.nonzero((ref.flows.flows >= EDGE_SHARE) & ref.flows.defined[:, None])):
        assert f"#{ref.concepts.concepts[c].rank} is made of #{ref.concepts.concepts[d].rank}:" in svg

    result = explainer.trace(ref, [photo])
    here = result.images[0]
    np.testing.assert_allclose(here.flows.flows, ref.flows.flows, atol=1e-9)
    assert here.lost_parts == {}
    assert "made of" in (result.save(tmp_path / "cmp") / "comparison.html").read_text()

    no_graph = ConceptExplainer(model, preprocessing=Preprocessing(resize=32, crop=32),
                                options=explainer.options.replace(graph=False)).explain(photo)
    assert no_graph.flows is None and graph_svg(no_graph) == ""


def test_lost_parts_flags_edges_that_fell_below_the_fraction():
    def flows(matrix):
        m = np.asarray(matrix, float)
        z = np.zeros(len(m))
        return ConceptFlows(m, z, z, z, np.ones(len(m)))

    reference = flows([[0, 0.30, 0.10], [0, 0, 0.20], [0, 0, 0]])
    here = flows([[0, 0.16, 0.04], [0, 0, 0.50], [0, 0, 0]])
    assert lost_parts(reference, here, [1, 2, 3], 0.5) == {1: [3]}  # 0.16 >= 0.15 kept; 0.04 < 0.05 lost
    assert reference.made_of(0) == [(1, 0.30), (2, 0.10)] and reference.feeds(2) == [(1, 0.20), (0, 0.10)]


def test_shares_of_a_concept_without_positive_relevance_are_not_read():
    """A concept whose members' relevance sums to <= 0 has mixed-sign parts whose ratios to R_C are
    not proportions (seen on a face: 262 %); it is kept in the matrix, not listed or counted."""
    from conceptree.concepts.flows import ConceptFlows

    flows = np.array([[0.0, 0.6, 0.2], [0.3, 0.0, 0.1], [2.6, -1.9, 0.0]])
    f = ConceptFlows(flows, np.zeros(3), np.zeros(3), 1 - flows.sum(1), np.array([2.0, 1.0, -0.1]))
    assert f.defined.tolist() == [True, True, False]
    assert f.made_of(2) == [] and [c for c, _ in f.feeds(0)] == [1]
    top = f.top_incoming(1)
    assert np.isnan(top[2]) and top[0] == pytest.approx(0.75)
