"""The concise hierarchy: the frontier rule against a slow formula, nesting, the same ids on two
photos for the model-level tree, determinism (threads, repeats), smoothed maps keep their sums,
and trees of another model refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import linkage, to_tree

from conceptree import ConceptExplainer, Explanation, InputError
from conceptree.concepts.hierarchy import (
    DOMINANT_SHARE,
    TOP_MAX,
    TOP_START,
    Tree,
    co_association,
    grow_frontier,
    kmeans_labels,
    nested_linkage,
    top_frontier,
)
from conceptree.concepts.layer_maps import layer_group_maps, smooth_group_maps
from conceptree.concepts.linkage import cut_labels
from conceptree.concepts.options import DEFAULT_HIERARCHY, ConceptOptions
from conceptree.dictionary import DictionaryBuilder
from conceptree.dictionary.hierarchy import ModelTree
from conceptree.models.loading import Preprocessing
from conceptree.runs import ModelSource

from .helpers import resnet10t_weights

SPEC = "timm:resnet10t"
#: the per-photo routes on a small input and neuron set (fast; the tree routes keep the index's 224)
SMALL = {"preprocessing": Preprocessing(resize=96, crop=96)}


# ---------------------------------------------------------------------------------------------- the rule
def _slow_frontier(Z: np.ndarray, leaf_relevance: np.ndarray) -> list[frozenset[int]]:
    """The frontier rule of docs/results/concise.md, written on leaf sets with scipy's tree objects."""
    root = to_tree(Z)
    nodes = {}

    def walk(node):
        nodes[frozenset(node.pre_order())] = node
        if not node.is_leaf():
            walk(node.get_left())
            walk(node.get_right())

    walk(root)
    # the tree's own cut into TOP_START clusters (replayed merges; scipy's cut_tree can mis-order ties)
    cut = cut_labels(Z, [TOP_START])[TOP_START]
    frontier = [frozenset(np.flatnonzero(cut == c).tolist()) for c in range(TOP_START)]

    def rel(s):
        return float(sum(leaf_relevance[i] for i in s))

    while len(frontier) < TOP_MAX:
        positive = sum(max(rel(s), 0.0) for s in frontier)
        best = max(frontier, key=rel)
        node = nodes[best]
        if node.is_leaf() or positive <= 0 or rel(best) <= DOMINANT_SHARE * positive:
            break
        frontier.remove(best)
        frontier += [frozenset(node.get_left().pre_order()), frozenset(node.get_right().pre_order())]
    return frontier


@pytest.mark.parametrize("seed", range(12))
def test_frontier_rule_equals_the_slow_formula(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(60, 3))
    Z = linkage(points, "ward")
    # relevance: mostly positive, a dominating cluster on some seeds, a few negatives
    r = rng.gamma(0.6, size=60) * (1 + 8 * (points[:, 0] > 1.0) * (seed % 2)) - 0.2 * (rng.random(60) < 0.1)
    tree = Tree(Z)
    fast = top_frontier(tree, tree.node_sums(r))
    assert sorted(map(sorted, (frozenset(tree.leaves(v).tolist()) for v in fast))) == sorted(map(sorted, _slow_frontier(Z, r)))
    assert TOP_START <= len(fast) <= TOP_MAX
    grown = grow_frontier(tree, fast, 20)
    labels = tree.labels(grown)
    assert len(grown) == 20 and labels.min() == 0 and len(np.unique(labels)) == 20
    # grown by height, the frontier is the tree's own cut once it lies inside the top level
    if len(fast) == TOP_START:
        ref = cut_labels(Z, [20])[20]
        assert len({(a, b) for a, b in zip(labels, ref)}) == 20


def test_nested_linkage_keeps_groups_and_heights():
    rng = np.random.default_rng(0)
    groups = [np.array([0, 3, 5, 7]), np.array([1, 2]), np.array([4]), np.array([6, 8, 9])]
    subs = [linkage(rng.normal(size=(len(g), 2)), "ward") if len(g) > 1 else np.zeros((0, 4)) for g in groups]
    Z = nested_linkage(groups, subs, 10)
    assert Z.shape == (9, 4) and np.all(np.diff(Z[:, 2]) >= 0)  # monotone: any cut is well defined
    for k in range(len(groups), 11):
        cut = cut_labels(Z, [k])[k]
        for c in np.unique(cut):  # every cluster lies in one group
            members = set(np.flatnonzero(cut == c).tolist())
            assert sum(members <= set(g.tolist()) for g in groups) == 1
    top = cut_labels(Z, [len(groups)])[len(groups)]
    assert sorted(sorted(np.flatnonzero(top == c).tolist()) for c in range(4)) == sorted(sorted(g.tolist()) for g in groups)
    with pytest.raises(InputError, match="partition"):
        nested_linkage([np.array([0, 1])], [np.zeros((1, 4))], 3)


def test_kmeans_and_co_association_are_exact():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, (30, 5)), rng.normal(3, 0.1, (30, 5))]).astype(np.float32)
    labels = kmeans_labels(x, 2)
    assert len(np.unique(labels[:30])) == 1 and len(np.unique(labels[30:])) == 1 and labels[0] != labels[-1]
    assert np.array_equal(labels, kmeans_labels(x.copy(), 2))
    co = co_association([labels, np.zeros(60, dtype=np.int64)])
    assert co[0, 1] == 1.0 and co[0, 59] == 0.5 and np.all(np.diag(co) == 1.0)


# ---------------------------------------------------------------------------------------------- explanations
@pytest.fixture
def setup(dictionary_setup):
    """``(folder, source, index, dictionary)``: the session's (tests/conftest.py)."""
    return dictionary_setup


def _check_nesting(concepts) -> None:
    top, subs = concepts.top_level, concepts.concepts
    assert 1 <= len(top) <= TOP_MAX
    names = {c.rank: {f"{n.layer}:{n.channel}" for n in c.neurons} for c in subs}
    tops = {t.rank: {f"{n.layer}:{n.channel}" for n in t.neurons} for t in top}
    for sub in subs:  # inside exactly one parent, the one it names
        inside = [t for t, members in tops.items() if names[sub.rank] <= members]
        assert inside == [sub.parent]
        assert sub.rank in next(t for t in top if t.rank == sub.parent).children
    for t in top:  # the leaves' neurons partition the top level's
        union = set().union(*(names[r] for r in t.children))
        assert union == tops[t.rank] and sum(len(names[r]) for r in t.children) == len(union)
        assert t.relevance == pytest.approx(sum(s.relevance for s in subs if s.parent == t.rank), rel=1e-9, abs=1e-12)
    assert sorted(r for t in top for r in t.children) == [s.rank for s in subs]


@pytest.mark.parametrize("route", ["own", "consensus"])
def test_top_level_nests_sub_concepts_and_neurons(setup, route, tmp_path):
    folder, source, _, _ = setup
    explainer = ConceptExplainer.from_spec(source.load(), options=ConceptOptions(hierarchy=route, max_neurons=1500), **SMALL)
    explanation = explainer.explain(folder / "chelsea.png")
    concepts = explanation.concepts
    _check_nesting(concepts)
    assert concepts.hierarchy["route"] == route and explanation.options.hierarchy == route
    assert explanation.top_maps.shape == (len(concepts.top_level), *explanation.image.shape[:2])
    assert explanation.flows is None and explanation.top_flows.flows.shape == (len(concepts.top_level),) * 2
    # the top level's relevance is the sum of its members'; its map sums to it (layer-group maps)
    for t, m in zip(concepts.top_level, explanation.top_maps):
        assert t.relevance == pytest.approx(sum(n.relevance for n in t.neurons), rel=1e-6)
        assert float(m.sum()) == pytest.approx(t.relevance, rel=1e-3, abs=1e-6)
    explanation.save(tmp_path / "e")
    again = Explanation.load(tmp_path / "e")
    assert [(c.rank, c.children) for c in again.concepts.top_level] == [(c.rank, c.children) for c in concepts.top_level]
    assert [c.parent for c in again.concepts.concepts] == [c.parent for c in concepts.concepts]
    html = (tmp_path / "e" / "report.html").read_text()
    assert "top-level concepts, largest share first" in html and "id='showflows'" in html and "class='hier'" in html


def test_tree_route_gives_the_same_ids_the_same_neurons_on_two_photos(setup):
    folder, source, index, dictionary = setup
    model_tree = ModelTree(dictionary)
    names = dictionary.neuron_names()
    for route in ("tree", "tree+own"):
        explainer = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, index=index, n_references=2,
                                               options=ConceptOptions(hierarchy=route))
        seen: dict[int, set] = {}
        for photo in ("chelsea.png", "coffee.png"):
            explanation = explainer.explain(folder / photo)
            concepts = explanation.concepts
            assert [r.rank for r in explanation.references] == [c.rank for c in concepts.concepts]  # found, not looked up
            _check_nesting(concepts)
            assert concepts.hierarchy["route"] == route
            for t in concepts.top_level:
                node = {names[int(c)] for c in model_tree.columns[model_tree.tree.leaves(t.concept_id)]}
                members = {f"{n.layer}:{n.channel}" for n in t.neurons}
                if route == "tree":  # the node itself: the same neurons on every photo
                    assert members == node
                    assert seen.setdefault(t.concept_id, members) == members
                else:  # the node's members among the photo's clustered neurons
                    assert members <= node
    # with a dictionary the default is the measured one (docs/results/concise.md); the flat list is an option
    default = ConceptExplainer.from_spec(source.load(), dictionary=dictionary)
    assert default.hierarchy == DEFAULT_HIERARCHY["with_index"]
    assert default.explain(folder / "rocket.png").concepts.hierarchy["route"] == DEFAULT_HIERARCHY["with_index"]
    flat = ConceptExplainer.from_spec(source.load(), dictionary=dictionary, options=ConceptOptions(hierarchy="none"))
    assert flat.explain(folder / "rocket.png").concepts.method == "dictionary"


def test_same_output_for_one_and_two_threads_and_twice(setup):
    folder, source, _, _ = setup
    explainer = ConceptExplainer.from_spec(source.load(), options=ConceptOptions(hierarchy="consensus", max_neurons=1500),
                                           **SMALL)
    before = torch.get_num_threads()

    def signature(threads: int):
        torch.set_num_threads(threads)
        concepts = explainer.explain(folder / "astronaut.png").concepts
        return ([(t.rank, t.relevance, [(n.layer, n.channel) for n in t.neurons]) for t in concepts.top_level],
                [(c.rank, c.parent, [(n.layer, n.channel) for n in c.neurons]) for c in concepts.concepts])

    try:
        one, two, again = signature(1), signature(2), signature(2)
    finally:
        torch.set_num_threads(before)
    assert one == two == again


def test_smoothed_maps_keep_their_sums_and_lose_the_checkerboard():
    rel = torch.zeros(4, 8, 8)
    rel[0, ::2, ::2] = 1.0  # a one-cell checkerboard
    rel[1] = 1.0
    layer = {"a": rel}
    plain = layer_group_maps(layer, [{"a": [0]}, {"a": [1]}], (32, 32))
    smooth = smooth_group_maps(layer, [{"a": [0]}, {"a": [1]}], (32, 32))
    assert np.allclose(smooth.sum((1, 2)), plain.sum((1, 2)), rtol=1e-5)
    inner = (slice(8, 24), slice(8, 24))
    assert smooth[0][inner].std() < 0.25 * plain[0][inner].std()


def test_trees_of_another_model_or_without_a_dictionary_refused(setup, tmp_path):
    folder, source, _, dictionary = setup
    with pytest.raises(InputError, match="needs a concept dictionary") as err:
        ConceptExplainer.from_spec(source.load(), options=ConceptOptions(hierarchy="tree"))
    assert "\n" not in str(err.value)
    other = ModelSource(spec=SPEC, weights=resnet10t_weights(tmp_path / "other.pth", 1), kwargs={"num_classes": 10})
    with pytest.raises(InputError, match="dictionary at .* was built with other model parameters") as err:
        ConceptExplainer.from_spec(other.load(), dictionary=dictionary, options=ConceptOptions(hierarchy="tree+own"))
    assert "\n" not in str(err.value)
    broken = DictionaryBuilder(k=12).fit(setup[2])
    broken.linkage = np.zeros((0, 4))
    with pytest.raises(InputError, match="has no tree of its"):
        ModelTree(broken)
    with pytest.raises(InputError, match="unknown hierarchy"):
        ConceptOptions(hierarchy="forest")
