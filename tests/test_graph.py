"""Concept flows (first passage) against a slow formula built on the plain masked propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptree.attribution import CRPEngine
from conceptree.concepts import find_concepts
from conceptree.concepts.features import neuron_features
from conceptree.concepts.graph import ConceptFlows, concept_flows

from .helpers import cifar_model


@pytest.fixture(scope="module")
def explained(cifar_image):
    engine = CRPEngine(cifar_model(), dtype=torch.float64)
    attribution = engine.attribute(cifar_image)
    neurons = neuron_features(engine, attribution, "layer", max_neurons=150, map_size=(8, 8))
    concepts = find_concepts(neurons, k=6).concepts
    return engine, attribution, concepts


def slow_flows(engine, attribution, concepts) -> tuple[np.ndarray, np.ndarray]:
    """``(absorbed (k, k), to_input (k,))`` from ``engine.propagate`` with per-row masks: each member
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
            node = engine.node_of_layer(layer)
            rel = attribution.layer_relevance[layer]
            start.setdefault(node, rel.new_zeros((len(members), *rel.shape)))[row, ch] = rel[ch]
        start = {node: engine.node_layout(forward, node, rel) for node, rel in start.items()}

        def masks(keep_layer, members=members):
            out = {}
            for layer, who in owner.items():
                node = engine.node_of_layer(layer)
                rel = attribution.layer_relevance[layer]
                m = torch.ones((len(members), rel.shape[0], 1, 1), dtype=rel.dtype)
                for row, (mlayer, _) in enumerate(members):
                    if layer not in (keep_layer, mlayer):  # a member's own start is never masked
                        m[row, torch.as_tensor(who >= 0)] = 0.0
                out[node] = engine.node_layout(forward, node, m)
            return out

        for layer, who in owner.items():
            node = engine.node_of_layer(layer)
            _, recorded = engine.propagate(forward, start, masks=masks(layer), record=[node])
            if node not in recorded:
                continue
            rel = recorded[node]  # a conv layer of the ResNet: channels-first
            per_channel = rel.double().flatten(2).sum(2).numpy()  # (rows, channels), starts included
            for row, (mlayer, _) in enumerate(members):
                if mlayer == layer:  # this row's start sits here: nothing arrives at its own layer
                    continue
                absorbed[c] += np.bincount(who[who >= 0], weights=per_channel[row, who >= 0], minlength=k)
        input_rel, _ = engine.propagate(forward, start, masks=masks(None))
        to_input[c] = float(input_rel.double().sum())
    return absorbed, to_input


def test_flows_equal_a_slow_formula_and_rows_sum_to_one(explained):
    engine, attribution, concepts = explained
    flows = concept_flows(engine, attribution, concepts, batch_size=4)
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


def test_without_absorbers_it_is_the_plain_propagation(explained):
    engine, attribution, _ = explained
    forward = attribution.forward
    layer = engine.layers[-1].name
    node = engine.node_of_layer(layer)
    rel = attribution.layer_relevance[layer][None]
    start = {node: engine.node_layout(forward, node, rel)}
    plain, _ = engine.propagate(forward, start)
    absorbing, taken = engine.propagate_absorbing(forward, start, {})
    assert torch.equal(plain, absorbing) and taken == {}
