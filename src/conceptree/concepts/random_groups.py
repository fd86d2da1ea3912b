"""Chance controls for statements about concepts: the same neurons in random groups."""

from __future__ import annotations

import numpy as np

from .concepts import Concept, Neuron


def random_partition(concepts: list[Concept], rng: np.random.Generator) -> list[Concept]:
    """The same neurons in random concepts of the same sizes and the same layer mixes.

    Within each layer, the member neurons' concept labels are permuted, so every random concept
    has exactly as many neurons of each layer as the real one of the same rank. Relevance and
    share are recomputed from the members; the representative is the most relevant member.

    Parameters
    ----------
    concepts : list[Concept]
        An explanation's concepts.
    rng : np.random.Generator

    Returns
    -------
    list[Concept]
        As many concepts, rank ``i`` with the sizes and layer histogram of ``concepts[i - 1]``.
    """
    by_layer: dict[str, list[tuple[int, Neuron]]] = {}
    for c, concept in enumerate(concepts):
        for neuron in concept.neurons:
            by_layer.setdefault(neuron.layer, []).append((c, neuron))
    members: list[list[Neuron]] = [[] for _ in concepts]
    for pairs in by_layer.values():
        labels = np.array([c for c, _ in pairs])
        for label, (_, neuron) in zip(rng.permutation(labels), pairs):
            members[label].append(neuron)
    total = sum(n.relevance for c in members for n in c)
    out = []
    for c, neurons in enumerate(members):
        neurons.sort(key=lambda n: -n.relevance)
        hist: dict[str, int] = {}
        for n in neurons:
            hist[n.layer] = hist.get(n.layer, 0) + 1
        relevance = float(sum(n.relevance for n in neurons))
        out.append(Concept(rank=c + 1, relevance=relevance, share=relevance / total if total else 0.0,
                           representative=neurons[0], neurons=neurons, layer_histogram=hist,
                           index=np.arange(len(neurons))))
    return out
