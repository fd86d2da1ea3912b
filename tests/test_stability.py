"""Concept stability (Hennig's subsampling Jaccard), k by stability, and thread-count independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import cut_tree
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import pdist, squareform

from conceptree.concepts import StabilityConfig, cut_stability, find_concepts, stability_label
from conceptree.concepts.clustering import choose_k, cluster
from conceptree.concepts.concepts import ConceptSet
from conceptree.concepts.distance import DISTANCE_BITS, DistanceConfig, NeuronDistance, quantise_features
from conceptree.concepts.linkage import cut_labels
from conceptree.concepts.options import ConceptOptions
from conceptree.concepts.stability import best_match_jaccard, sub_condensed
from conceptree.errors import InputError

from .test_concepts import neuron_maps, synthetic


def blobs(n_per: int = 20, centres: int = 3, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n_per, 4)) * spread + 6.0 * c for c in range(centres)])


def slow_stability(points: np.ndarray, k: int, config: StabilityConfig) -> np.ndarray:
    """Hennig's subsampling Jaccard written out: scipy linkage and cut, Python sets."""
    square = squareform(pdist(points))
    labels = cut_tree(scipy_linkage(pdist(points), "ward"), n_clusters=[k])[:, 0]
    n = len(points)
    m = int(round(config.fraction * n))
    rng = np.random.default_rng(config.seed)
    per_draw = []
    for _ in range(config.resamples):
        rows = np.sort(rng.choice(n, size=m, replace=False))
        new = cut_tree(scipy_linkage(squareform(square[np.ix_(rows, rows)], checks=False), "ward"), n_clusters=[k])[:, 0]
        scores = []
        for c in range(k):
            kept = {int(r) for r in rows if labels[r] == c}
            if not kept:
                scores.append(np.nan)
                continue
            best = 0.0
            for c2 in set(new.tolist()):
                other = {int(r) for r, lab in zip(rows, new) if lab == c2}
                best = max(best, len(kept & other) / len(kept | other))
            scores.append(best)
        per_draw.append(scores)
    return labels, np.nanmean(np.array(per_draw), axis=0)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_stability_equals_a_slow_reference(k):
    points = blobs(spread=1.8, seed=1)
    config = StabilityConfig(resamples=6, fraction=0.7, seed=3)
    labels, slow = slow_stability(points, k, config)
    square = squareform(pdist(points))
    fast = cut_stability(square, {k: cut_labels(scipy_linkage(pdist(points), "ward"), [k])[k]}, "ward", config)
    # same partition up to label names: compare each cluster's score through its members
    ours = cut_labels(scipy_linkage(pdist(points), "ward"), [k])[k]
    for c in range(k):
        members = labels == c
        assert len(set(ours[members])) == 1
        assert fast.scores[k][ours[members][0]] == pytest.approx(slow[c], abs=1e-12)
    # the condensed form gives the same scores as the square one
    from_condensed = cut_stability(pdist(points), {k: ours}, "ward", config)
    assert np.array_equal(from_condensed.scores[k], fast.scores[k], equal_nan=True)


def test_separated_blobs_are_stable_and_their_splits_are_not():
    points = blobs(n_per=25, spread=0.5)
    Z = scipy_linkage(pdist(points), "ward")
    cuts = cut_labels(Z, [3, 7])
    result = cut_stability(squareform(pdist(points)), cuts, "ward", StabilityConfig(resamples=10, fraction=0.5))
    assert np.all(result.scores[3] == 1.0)
    assert np.nanmin(result.scores[7]) < 0.75  # splitting a round blob is arbitrary
    assert result.jaccard[7].shape == (10, 7)


def test_stability_is_deterministic_for_a_seed():
    points = blobs(spread=2.0)
    square = squareform(pdist(points))
    cuts = cut_labels(scipy_linkage(pdist(points), "ward"), [4, 6])
    a = cut_stability(square, cuts, "ward", StabilityConfig(resamples=5, seed=7))
    b = cut_stability(square, cuts, "ward", StabilityConfig(resamples=5, seed=7))
    c = cut_stability(square, cuts, "ward", StabilityConfig(resamples=5, seed=8))
    for k in cuts:
        assert np.array_equal(a.jaccard[k], b.jaccard[k], equal_nan=True)
    assert any(not np.array_equal(a.jaccard[k], c.jaccard[k], equal_nan=True) for k in cuts)


def test_best_match_jaccard_and_absent_clusters():
    labels = np.array([0, 0, 1, 1, 1])  # cluster 2 has no drawn member
    new = np.array([0, 0, 0, 1, 1])
    best = best_match_jaccard(labels, 3, new, 2)
    assert best[0] == pytest.approx(2 / 3)  # {0,1} vs {0,1,2}
    assert best[1] == pytest.approx(2 / 3)  # {2,3,4} vs {3,4}
    assert np.isnan(best[2])


def test_sub_condensed_matches_the_square():
    d = pdist(np.random.default_rng(0).normal(size=(30, 3)))
    rows = np.array([1, 4, 5, 17, 29])
    assert np.array_equal(sub_condensed(d, 30, rows), squareform(squareform(d)[np.ix_(rows, rows)], checks=False))


def test_choose_k_rules():
    ks = [15, 16, 17, 18]
    sil = {15: 0.01, 16: 0.03, 17: 0.02, 18: 0.03}
    assert choose_k(ks, sil, {}, "silhouette") == 16  # ties to the smaller k
    assert choose_k(ks, sil, {15: 0.9, 16: 0.8, 17: 0.7, 18: 0.76}, "stability") == 18  # largest k >= 0.75
    assert choose_k(ks, sil, {15: 0.5, 16: 0.6, 17: 0.6, 18: 0.4}, "stability") == 16  # else the most stable
    with pytest.raises(InputError, match="unknown k rule"):
        choose_k(ks, sil, {15: 0.5}, "gap")


def test_options_and_config_errors():
    with pytest.raises(InputError, match="fraction"):
        StabilityConfig(fraction=1.0)
    with pytest.raises(InputError, match="resamples"):
        StabilityConfig(resamples=-1)
    with pytest.raises(InputError, match="needs stability resamples"):
        ConceptOptions(k_rule="stability", stability=StabilityConfig(resamples=0))
    with pytest.raises(InputError, match="unknown precision"):
        ConceptOptions(precision="float16")
    with pytest.raises(InputError, match="needs stability draws"):
        cluster(squareform(pdist(blobs())), k_rule="stability")
    assert [stability_label(v) for v in (0.9, 0.75, 0.6, 0.5, None, float("nan"))] == \
        ["stable", "stable", "weak", "fragile", "unknown", "unknown"]


def test_options_saved_before_stability_read_as_made():
    data = ConceptOptions().to_dict()
    for key in ("k_rule", "stability", "precision"):
        data.pop(key)
    old = ConceptOptions.from_dict(data)
    assert old.precision == "float32" and old.stability.resamples == 0
    assert ConceptOptions.from_dict(ConceptOptions().to_dict()) == ConceptOptions()


def test_find_concepts_scores_every_concept_and_k():
    maps, relevance = synthetic(ties=False)
    neurons = neuron_maps(maps, relevance)
    result = find_concepts(neurons, DistanceConfig(map_size=None), k_range=(3, 8), stability=StabilityConfig(resamples=4))
    assert all(c.stability is not None and 0.0 <= c.stability <= 1.0 for c in result.concepts)
    assert sorted(int(k) for k in result.stability["by_k"]) == list(range(3, 9))
    assert result.stability["config"] == {"resamples": 4, "fraction": 0.5, "seed": 0}
    again = ConceptSet.from_dict(result.to_dict(), result.linkage, result.active_index)
    assert [c.stability for c in again.concepts] == [c.stability for c in result.concepts]
    by_stability = find_concepts(neurons, DistanceConfig(map_size=None), k_range=(3, 8),
                                 stability=StabilityConfig(resamples=4), k_rule="stability")
    chosen = {int(k): v for k, v in by_stability.stability["by_k"].items()}
    assert by_stability.k == choose_k(list(range(3, 9)), by_stability.silhouette_by_k, chosen, "stability")
    assert by_stability.k_rule == "stability"
    plain = find_concepts(neurons, DistanceConfig(map_size=None), k_range=(3, 8))
    assert plain.stability is None and all(c.stability is None for c in plain.concepts)
    assert plain.k == result.k  # the draws do not change the silhouette's cut


def test_distances_are_exact_whatever_the_summation_order():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 3136)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    q, step = quantise_features(features)
    assert np.all(q == np.round(q)) and 4 * q.shape[1] * np.abs(q).max() ** 2 <= 2.0 ** 53  # exact sums
    assert np.abs(q * step - features).max() <= step / 2
    perm = rng.permutation(q.shape[1])
    gram = q @ q.T
    assert np.array_equal(gram, q[:, perm] @ q[:, perm].T)  # another summation order, the same bits
    exact = np.array([[sum(int(a) * int(b) for a, b in zip(q[i], q[j])) for j in range(3)] for i in range(3)])
    assert np.array_equal(gram[:3, :3], exact.astype(np.float64))  # equal to integer arithmetic
    maps, relevance = synthetic(ties=False)
    dist = NeuronDistance(maps, relevance, DistanceConfig(map_size=None, exact_ward=True))
    condensed = dist.condensed()
    assert np.array_equal(condensed, squareform(dist.square(), checks=False))  # both routes, same bits
    grid = condensed * 2.0 ** DISTANCE_BITS
    assert np.array_equal(grid, np.round(grid))


def test_same_concepts_on_one_and_two_threads(parrot):
    from threadpoolctl import threadpool_limits

    from conceptree import ConceptExplainer

    from .helpers import bird_model

    options = ConceptOptions(max_neurons=1500, k_range=(8, 14), stability=StabilityConfig(resamples=3))
    explainer = ConceptExplainer(bird_model(), options=options)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                e = explainer.explain(parrot)
            runs.append((e.concepts.k, e.concepts.labels(e.n_neurons), [c.stability for c in e.concepts.concepts],
                         e.concepts.silhouette_by_k))
    finally:
        torch.set_num_threads(before)
    (k1, l1, s1, sil1), (k2, l2, s2, sil2) = runs
    assert k1 == k2 and np.array_equal(l1, l2) and s1 == s2 and sil1 == sil2
