"""The specificity test (issue 38): its statistic against a slow formula on a synthetic index, its power on
planted groups, its false-positive rate on random data, and names only where it passes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, sparse

from conceptree.errors import InputError
from conceptree.index.specificity import CellEvidence, SpecificityTest

GRID = (8, 8)


class _Index:
    """The parts of :class:`ConceptIndex` the test reads: relevance and peak cells of every row and neuron."""

    def __init__(self, relevance: np.ndarray, peaks: np.ndarray, layers: dict[str, tuple[int, int]],
                 sides: dict[str, int]) -> None:
        self.relevance, self.peaks = relevance.astype(np.float16), peaks.astype(np.uint16)
        self.n_neurons = relevance.shape[1]
        self.columns = layers
        self.peak_grid = GRID
        self.ok = np.ones(relevance.shape[0], bool)
        self.abs_total = np.abs(self.relevance.astype(np.float64)).sum(1)
        self._sides = np.concatenate([np.full(c, sides[name]) for name, (_, c) in layers.items()])

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def cell_size(self, columns):
        return self._sides[np.asarray(columns)]


def _world(rows: int = 60, seed: int = 0, planted: bool = True):
    """Two layers (cell sides 1 and 2); every row has a 'head' (top-left quarter) and a 'tail' part and
    random colours. Neurons 0-5 of layer a peak in the head when ``planted``; all others peak anywhere."""
    rng = np.random.default_rng(seed)
    layers = {"a": (0, 30), "b": (30, 20)}
    n = 50
    relevance = rng.gamma(1.0, 1.0, (rows, n)) * (rng.random((rows, n)) < 0.8)
    peaks = rng.integers(0, 64, (rows, n))
    head = np.array([r * 8 + c for r in range(4) for c in range(4)])
    if planted:
        peaks[:, :6] = rng.choice(head, (rows, 6))
    parts = np.full((rows, 64), -1, np.int8)
    parts[:, head] = 0
    parts[:, [r * 8 + c for r in range(5, 8) for c in range(5, 8)]] = 1
    colours = rng.integers(0, 3, (rows, 64)).astype(np.int8)
    classes = rng.integers(0, 4, rows)
    evidence = CellEvidence(words={"part": parts, "colour": colours},
                            has={"part": np.ones(rows, bool), "colour": np.ones(rows, bool)},
                            vocabulary={"part": ["head", "tail"], "colour": ["red", "green", "blue"],
                                        "class": ["w", "x", "y", "z"]}, classes=classes)
    return _Index(relevance, peaks, layers, {"a": 1, "b": 2}), evidence


def _slow_statistic(index, evidence, columns, weights, top, family):
    """Loops: rank rows by the weighted share, then per reference the group's and the model's peak maps
    (positive relevance at each peak, spread over a side x side block as a uniform filter does), their
    shares in each word, averaged differences, best word."""
    rows = len(index)
    rel = index.relevance.astype(np.float64)
    scores = [sum(w * rel[i, c] for c, w in zip(columns, weights)) / index.abs_total[i] for i in range(rows)]
    refs = sorted(range(rows), key=lambda i: (-scores[i], i))[:top]

    def spread_map(i, cols):
        grid = np.zeros(GRID)
        for c in cols:
            r = max(rel[i, c], 0.0)
            cell = np.zeros(GRID)
            cell.flat[int(index.peaks[i, c])] = r
            side = int(index.cell_size([c])[0])
            grid += ndimage.uniform_filter(cell, size=side, mode="constant") if side > 1 else cell
        return grid

    words = evidence.vocabulary[family]
    delta = np.zeros(len(words))
    everyone = range(index.n_neurons)
    for i in refs:
        g, m = spread_map(i, columns), spread_map(i, everyone)
        g_total = sum(max(rel[i, c], 0.0) for c in columns)
        m_total = sum(max(rel[i, c], 0.0) for c in everyone)
        labels = evidence.words[family][i].reshape(GRID)
        for w in range(len(words)):
            delta[w] += g[labels == w].sum() / g_total - m[labels == w].sum() / m_total
    delta /= len(refs)
    return delta.max(), int(delta.argmax()), refs


@pytest.mark.parametrize("family", ["part", "colour"])
def test_the_statistic_equals_the_slow_formula(family):
    index, evidence = _world()
    test = SpecificityTest(index, evidence, top=7, n_random=3)
    groups = [np.array([0, 3, 5, 31, 40]), np.array([7, 8, 33])]
    weights = [np.array([0.4, 0.1, 0.2, 0.2, 0.1]), np.array([1 / 3] * 3)]
    members = sparse.csr_matrix((np.ones(8), ([0] * 5 + [1] * 3, np.concatenate(groups))), shape=(2, index.n_neurons))
    w = sparse.csr_matrix((np.concatenate(weights), ([0] * 5 + [1] * 3, np.concatenate(groups))),
                          shape=(2, index.n_neurons))
    statistic, word, references = test.statistics(members, w)
    for g in range(2):
        slow, slow_word, slow_refs = _slow_statistic(index, evidence, groups[g], weights[g], 7, family)
        assert list(references[g]) == slow_refs
        assert statistic[family][g] == pytest.approx(slow, abs=1e-9)
        assert word[family][g] == slow_word


def test_the_class_statistic_is_the_largest_class_excess_over_its_base_rate():
    index, evidence = _world()
    test = SpecificityTest(index, evidence, top=10, n_random=3, families=("class",))
    columns = np.array([1, 2, 35])
    members = sparse.csr_matrix((np.ones(3), ([0, 0, 0], columns)), shape=(1, index.n_neurons))
    statistic, word, references = test.statistics(members, members / 3)
    found = evidence.classes[references[0]]
    base = np.bincount(evidence.classes, minlength=4) / len(evidence.classes)
    excess = np.bincount(found, minlength=4) / 10 - base
    assert statistic["class"][0] == pytest.approx(excess.max())
    assert word["class"][0] == excess.argmax()


def test_a_planted_part_group_is_flagged_and_named_and_its_name_is_suggested():
    index, evidence = _world()
    result = SpecificityTest(index, evidence, n_random=49, top=20).test([np.arange(6)])[0]
    assert result.specific and result.p_value < 0.05
    assert (result.family, result.word, result.name) == ("part", "head", "head")
    assert result.to_dict()["families"][0]["family"] == "part"


def test_random_groups_on_structureless_data_pass_at_about_the_nominal_rate():
    """60 random groups of a world without planted neurons: the share passing at 0.05 stays within its
    binomial range (mean 3, 99.9 % below 10 of 60); a group that fails carries no name."""
    index, evidence = _world(planted=False, seed=3)
    test = SpecificityTest(index, evidence, n_random=39, top=10)
    rng = np.random.default_rng(5)
    groups = [rng.choice(50, size=6, replace=False) for _ in range(60)]
    results = test.test(groups)
    passed = sum(r.specific for r in results)
    assert passed <= 9
    assert all(r.name is None for r in results if not r.specific)
    assert all(r.name == r.word for r in results if r.specific)


def test_random_groups_keep_the_layer_histogram():
    index, evidence = _world()
    test = SpecificityTest(index, evidence, n_random=20)
    columns = np.array([0, 1, 2, 30, 31])
    for group in test.random_groups(columns, np.random.default_rng(0)):
        assert ((group < 30).sum(), (group >= 30).sum()) == (3, 2)
        assert len(set(group.tolist())) == 5


def test_bad_settings_are_refused_in_one_line():
    index, evidence = _world()
    with pytest.raises(InputError, match="unknown families"):
        SpecificityTest(index, evidence, families=("texture",))
    with pytest.raises(InputError, match="alpha"):
        SpecificityTest(index, evidence, alpha=1.5)


def test_cell_evidence_round_trips_through_npz(tmp_path):
    _, evidence = _world(rows=5)
    loaded = CellEvidence.load(evidence.save(tmp_path / "evidence.npz"))
    assert loaded.vocabulary == evidence.vocabulary
    assert np.array_equal(loaded.words["part"], evidence.words["part"])
    assert np.array_equal(loaded.classes, evidence.classes)


def test_a_card_name_comes_only_from_a_passing_test():
    from conceptree.index.references import specific_name
    from conceptree.index.specificity import FamilyResult, SpecificityResult

    families = (FamilyResult("part", "wing", 0.12, 0.01, 0.01), FamilyResult("class", "Blue Jay", 0.4, 0.02, 0.05))
    passing = SpecificityResult(True, 0.02, "part", "wing", families, (1, 2), 99)
    failing = SpecificityResult(False, 0.31, "part", "wing", families, (1, 2), 99)
    by_class = SpecificityResult(True, 0.03, "class", "Blue Jay", families, (1, 2), 99)
    assert specific_name(passing) == "wing" and passing.to_dict()["name"] == "wing"
    assert specific_name(failing) is None and failing.to_dict()["name"] is None
    assert specific_name(by_class) == "Blue Jay-specific"


def test_the_explained_photo_is_never_its_own_reference():
    index, evidence = _world()
    test = SpecificityTest(index, evidence, top=5, n_random=3)
    columns = np.arange(6)
    members = sparse.csr_matrix((np.ones(6), (np.zeros(6, int), columns)), shape=(1, index.n_neurons))
    _, _, refs = test.statistics(members, members / 6)
    _, _, without = test.statistics(members, members / 6, exclude=int(refs[0, 0]))
    assert refs[0, 0] not in without[0] and list(without[0, :4]) == list(refs[0, 1:])
