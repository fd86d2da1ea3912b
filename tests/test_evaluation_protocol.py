"""The IoU protocol on hand-made maps and regions with known answers."""

import numpy as np
import pytest

from conceptree.evaluation.protocol import (
    THRESHOLDS,
    best_iou,
    cell_weights,
    method_score,
    nearest_source,
    normalise_255,
    pointing,
    species_scores,
)
from conceptree.evaluation.runner import ImageScores, summarise


def square(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_normalise_constant_map_is_zero_and_signed_maps_span_0_255():
    maps = np.stack([np.full((4, 4), 3.0), np.array([[-1.0, 0.0], [1.0, 3.0]]).repeat(2, 0).repeat(2, 1)])
    out = normalise_255(maps)
    assert np.all(out[0] == 0)
    assert out[1].min() == 0 and out[1].max() == 255
    assert out[1][0, 2] == pytest.approx(255 / 4)  # 0 relevance sits at a quarter of the signed range


def test_iou_known_answer_on_same_grid():
    region = square((8, 8), 0, 4, 0, 4)  # 16 px
    regions = cell_weights([region, None], (8, 8), (8, 8))
    m = np.zeros((1, 8, 8))
    m[0, 0:4, 2:6] = 1.0  # 16 px, overlap 8 -> IoU 8 / 24
    iou = best_iou(normalise_255(m), regions, (0, 100))
    assert iou[0, 0] == pytest.approx(8 / 24)
    assert iou[1, 0] == pytest.approx(8 / 24)
    assert np.isnan(iou[:, 1]).all()  # absent part stays NaN


def test_best_map_per_part_and_threshold_semantics():
    part_a = square((10, 10), 0, 5, 0, 5)
    part_b = square((10, 10), 5, 10, 5, 10)
    regions = cell_weights([part_a, part_b], (10, 10), (10, 10))
    maps = np.zeros((2, 10, 10))
    maps[0][part_a] = 1.0
    maps[1][part_b] = 0.5
    maps[1][0, 0] = 1.0  # the brightest pixel of map 1 is outside part b
    iou = best_iou(normalise_255(maps), regions, (0, 200))
    assert iou[0, 0] == pytest.approx(1.0)  # map 0 covers part a exactly
    assert iou[0, 1] == pytest.approx(25 / 26)  # map 1 at t=0: part b plus one pixel
    assert iou[1, 1] == pytest.approx(0.0)  # at t=200 only map 1's (0,0) pixel survives (value 127.5 drops)


def test_empty_and_no_maps_give_zero_not_nan():
    regions = cell_weights([square((6, 6), 0, 3, 0, 3)], (6, 6), (6, 6))
    assert best_iou(np.zeros((3, 6, 6), np.float32), regions).tolist() == [[0.0]] * len(THRESHOLDS)
    assert best_iou(np.zeros((0, 6, 6), np.float32), regions).tolist() == [[0.0]] * len(THRESHOLDS)
    assert pointing(np.zeros((2, 6, 6)), regions).tolist() == [0.0]


def test_cell_weights_equal_explicit_nearest_resize():
    rng = np.random.default_rng(0)
    image_hw, grid = (37, 53), (7, 11)
    masks = [rng.random(image_hw) > 0.6, rng.random(image_hw) > 0.3]
    regions = cell_weights(masks, image_hw, grid)
    maps = rng.random((5, *grid)) * 255
    rows, cols = nearest_source(image_hw[0], grid[0]), nearest_source(image_hw[1], grid[1])
    for t in (0, 100, 200):
        iou = best_iou(maps, regions, (t,))
        for p, mask in enumerate(masks):
            expected = 0.0
            for m in maps:
                big = m[rows][:, cols] > t
                expected = max(expected, (big & mask).sum() / (big | mask).sum())
            assert iou[0, p] == pytest.approx(expected)


def test_pointing_hits_when_maximum_inside():
    part = square((8, 8), 4, 8, 4, 8)
    regions = cell_weights([part], (8, 8), (4, 4))  # each cell reads 2x2 pixels
    m = np.zeros((1, 4, 4))
    m[0, 3, 3] = 1.0
    assert pointing(m, regions).tolist() == [1.0]
    m[0, 0, 0] = 2.0
    assert pointing(m, regions).tolist() == [0.0]


def test_species_and_method_means_ignore_absent_parts():
    # 3 images, 2 parts; image 2 (species b) lacks part 1
    per_image = np.array([[0.2, 0.4], [0.6, 0.8], [0.5, np.nan]])
    names, sp = species_scores(per_image, ["a", "a", "b"])
    assert names == ["a", "b"]
    np.testing.assert_allclose(sp[0], [0.4, 0.6])
    assert sp[1, 0] == 0.5 and np.isnan(sp[1, 1])
    assert method_score(sp) == pytest.approx(((0.4 + 0.6) / 2 + 0.5) / 2)


def _scores(value_by_threshold):
    iou = np.tile(np.array(value_by_threshold)[:, None], (1, 2))
    iou[:, 1] = np.nan
    return ImageScores("1", "a", 0, 0, 0.9, {"m": iou}, {"m": np.array([1.0, np.nan])}, {"m": 3}, 0)


def test_summary_chooses_best_threshold_or_applies_fixed_one():
    scores = [_scores([0.1, 0.2, 0.5, 0.3, 0.2, 0.1, 0.0])]
    chosen = summarise(scores, ["p", "q"])["methods"]["m"]
    assert chosen["threshold"] == 50 and chosen["mean_iou"] == pytest.approx(0.5)
    assert chosen["pointing"] == 1.0 and chosen["complexity"] == 3
    assert np.isnan(chosen["parts"]["q"]) and chosen["parts"]["p"] == pytest.approx(0.5)
    fixed = summarise(scores, ["p", "q"], {"m": 150})["methods"]["m"]
    assert fixed["threshold"] == 150 and fixed["mean_iou"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no entry for 'm'"):
        summarise(scores, ["p", "q"], {"other": 0})
