"""Concept clustering: distance, nested silhouettes, cuts, concepts and tracing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import cut_tree
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import silhouette_score

from conceptree import InputError
from conceptree.attribution import CRPEngine
from conceptree.attribution.engine import NeuronMaps
from conceptree.concepts import (
    DistanceConfig,
    cluster,
    cut_labels,
    find_concepts,
    linkage_matrix,
    nested_silhouettes,
    neuron_distance,
)

from . import helpers


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.fixture(scope="module")
def cifar_neurons(request):
    from .conftest import SHARED, shared_path

    shared_path("models", "cifar10_resnet")  # skips without ../shared (fails under CI)
    import torch

    from .conftest import _load_rgb

    pixels = _load_rgb(SHARED / "data" / "cifar10_sample" / "cat_0000.jpg", (32, 32)) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((pixels - mean) / std).unsqueeze(0)
    engine = CRPEngine(helpers.cifar_model())
    return engine.neuron_maps(engine.attribute(x), batch_size=64)


def synthetic(n=60, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, 8, 8)).astype(np.float32)
    relevance = rng.normal(size=n)
    if ties:
        maps[10:20] = maps[10]  # identical maps
        relevance[10:20] = relevance[10]  # and equal relevances -> tied distances
        maps[30:35] = 0.0
        relevance[30:35] = 0.0
    return maps, relevance


def neuron_maps(maps, relevance, layers=("a", "b")):
    n = len(relevance)
    return NeuronMaps(
        list(layers), np.arange(n) % len(layers), np.arange(n), np.asarray(relevance, float), maps, maps.reshape(n, -1).sum(1)
    )


@pytest.mark.parametrize("method", ["single", "complete", "average", "ward"])
def test_silhouettes_equal_sklearn_on_synthetic_ties(method):
    maps, relevance = synthetic()
    dist = neuron_distance(maps, relevance, DistanceConfig(map_size=None)).astype(np.float64)
    Z = linkage_matrix(dist, method)
    cuts = cut_labels(Z, list(range(2, 40)))
    scores = nested_silhouettes(dist, cuts)
    for k, labels in cuts.items():
        assert len(set(labels)) == k
        assert scores[k] == pytest.approx(silhouette_score(dist, labels, metric="precomputed"), abs=1e-9)


def test_silhouettes_equal_sklearn_on_real_explanation(cifar_neurons):
    dist = neuron_distance(cifar_neurons.maps, cifar_neurons.relevance, DistanceConfig()).astype(np.float64)
    Z = linkage_matrix(dist, "average")
    cuts = cut_labels(Z, list(range(2, 61)))
    scores = nested_silhouettes(dist, cuts)
    assert len(scores) == 59
    for k, labels in cuts.items():
        assert scores[k] == pytest.approx(silhouette_score(dist, labels, metric="precomputed"), abs=1e-9)


@pytest.mark.parametrize("method", ["single", "complete", "average", "ward"])
def test_cuts_equal_scipy_cut_tree_and_fastcluster_equals_scipy(method):
    maps, relevance = synthetic(ties=False)
    dist = neuron_distance(maps, relevance, DistanceConfig(map_size=None)).astype(np.float64)
    Z = linkage_matrix(dist, method)
    Z_scipy = scipy_linkage(squareform(dist, checks=False), method=method)
    assert np.allclose(Z[:, 2], Z_scipy[:, 2])
    ks = [2, 5, 17, 40]
    ours = cut_labels(Z, ks)
    theirs = cut_tree(Z_scipy, n_clusters=ks)
    for i, k in enumerate(ks):
        assert same_partition(ours[k], theirs[:, i])


def test_lambda_extremes_reduce_to_pure_terms():
    maps, relevance = synthetic(ties=False)
    config = DistanceConfig(map_size=None, map_norm="none", term_norm="max")
    only_maps = neuron_distance(maps, relevance, DistanceConfig(lam=1.0, map_size=None, map_norm="none", term_norm="max"))
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    d_e = np.sqrt(((flat[:, None] - flat[None]) ** 2).sum(-1))
    assert np.allclose(only_maps, d_e / d_e.max(), atol=1e-5)
    only_rel = neuron_distance(maps, relevance, DistanceConfig(lam=0.0, map_size=None, term_norm="max"))
    w = np.abs(relevance[:, None] - relevance[None])
    assert np.allclose(only_rel, w / w.max(), atol=1e-6)
    mixed = neuron_distance(maps, relevance, config)
    assert np.allclose(mixed, 0.5 * d_e / d_e.max() + 0.5 * w / w.max(), atol=1e-5)
    ward = neuron_distance(maps, relevance, DistanceConfig(map_size=None, map_norm="none", term_norm="max", exact_ward=True))
    assert np.allclose(ward, np.sqrt(0.5 * (d_e / d_e.max()) ** 2 + 0.5 * (w / w.max()) ** 2), atol=1e-5)


def test_p99_normaliser_is_the_99th_percentile_of_pair_distances():
    maps, relevance = synthetic(ties=False)
    dist = neuron_distance(maps, relevance, DistanceConfig(lam=0.0, map_size=None, term_norm="p99"))
    w = np.abs(relevance[:, None] - relevance[None])
    p99 = np.percentile(w[np.triu_indices(len(w), 1)], 99)
    assert np.allclose(dist, w / p99, atol=1e-5)


def test_ward_default_uses_the_exact_ward_distance():
    maps, relevance = synthetic(ties=False)
    result = find_concepts(neuron_maps(maps, relevance), DistanceConfig(map_size=None), k_range=(3, 12))
    assert result.method == "ward" and result.distance.exact_ward is True
    assert find_concepts(neuron_maps(maps, relevance), DistanceConfig(map_size=None), "average", (3, 12)).distance.exact_ward is False


def test_zero_maps_and_equal_relevances_give_no_nan():
    maps = np.zeros((12, 4, 4), np.float32)
    relevance = np.ones(12)
    for config in (DistanceConfig(map_size=None), DistanceConfig(map_size=None, map_norm="maxabs", term_norm="p99")):
        dist = neuron_distance(maps, relevance, config)
        assert np.isfinite(dist).all() and (dist == 0).all()
    concepts = find_concepts(neuron_maps(maps, relevance), DistanceConfig(map_size=None), k_range=(2, 5))
    assert all(np.isfinite(c.share) for c in concepts.concepts)
    assert all(np.isfinite(v) for v in concepts.silhouette_by_k.values())


def test_every_neuron_in_exactly_one_concept_and_representative_is_argmax():
    maps, relevance = synthetic()
    neurons = neuron_maps(maps, relevance)
    result = find_concepts(neurons, DistanceConfig(map_size=None), k_range=(3, 12))
    seen = np.concatenate([c.index for c in result.concepts])
    inactive = {(n.layer, n.channel) for n in result.inactive}
    assert len(inactive) == 5  # rows 30..34: zero relevance and all-zero maps
    assert sorted(seen.tolist() + [c for _, c in inactive]) == list(range(len(relevance)))
    for concept in result.concepts:
        assert concept.representative.relevance == pytest.approx(relevance[concept.index].max())
        assert concept.size == len(concept.index)
        assert sum(concept.layer_histogram.values()) == concept.size
    rels = [c.relevance for c in result.concepts]
    assert rels == sorted(rels, reverse=True)
    assert [c.rank for c in result.concepts] == list(range(1, result.k + 1))
    assert 3 <= result.k <= 12 and result.silhouette_by_k[result.k] == max(result.silhouette_by_k.values())


def test_result_does_not_depend_on_row_order():
    maps, relevance = synthetic()
    neurons = neuron_maps(maps, relevance)
    perm = np.random.default_rng(1).permutation(len(relevance))
    shuffled = NeuronMaps(neurons.layers, neurons.layer_index[perm], neurons.channel[perm], neurons.relevance[perm], neurons.maps[perm], neurons.map_sums[perm])
    a = find_concepts(neurons, DistanceConfig(map_size=None), k_range=(3, 12))
    b = find_concepts(shuffled, DistanceConfig(map_size=None), k_range=(3, 12))
    assert a.k == b.k
    assert [[(n.layer, n.channel) for n in c.neurons] for c in a.concepts] == [
        [(n.layer, n.channel) for n in c.neurons] for c in b.concepts
    ]


def test_fixed_k_and_bad_parameters():
    maps, relevance = synthetic(ties=False)
    dist = neuron_distance(maps, relevance, DistanceConfig(map_size=None))
    assert cluster(dist, "average", k=7).k == 7
    with pytest.raises(InputError, match="unknown linkage"):
        cluster(dist, "median")
    with pytest.raises(InputError, match="lam must be in"):
        DistanceConfig(lam=1.5)
    with pytest.raises(InputError, match="k range"):
        cluster(dist, "average", k_range=(9, 3))


@pytest.mark.parametrize("config", [DistanceConfig(map_size=None), DistanceConfig(map_size=None, term_norm="p99", exact_ward=True)])
def test_streamed_distance_equals_square(config):
    from conceptree.concepts import NeuronDistance

    maps, relevance = synthetic(n=150, ties=False)
    streamed = NeuronDistance(maps, relevance, config, block=16)
    square = neuron_distance(maps, relevance, config)
    assert np.allclose(streamed.condensed(), squareform(square.astype(np.float64), checks=False), atol=1e-6)
    one_hot = np.eye(150)[:, :7]
    assert np.allclose(streamed.matmul(one_hot), square.astype(np.float64) @ one_hot, atol=1e-4)
    a = cluster(streamed, "average", (3, 20))
    b = cluster(square, "average", (3, 20))
    assert a.k == b.k and same_partition(a.labels, b.labels)
