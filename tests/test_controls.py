"""Controls of the evaluation: random disks, model randomisation, faithfulness, K-map restrictions,
lifts, SLIC regions."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conceptree.datasets.cub_parts import PART_RADIUS, SLIC_CLIP, PartImage
from conceptree.errors import InputError
from conceptree.evaluation.controls import DISK_COUNTS, random_disks, randomise_model
from conceptree.evaluation.faithfulness import occlusion_drops, shifted, summarise_faithfulness, top_region
from conceptree.evaluation.image_maps import ImageMaps
from conceptree.evaluation.methods import at_key, baseline_maps, disk_maps, redundancy
from conceptree.evaluation.runner import (
    EvaluationConfig,
    EvaluationRun,
    ImageScores,
    at_k_table,
    summarise_run,
)


def part_image(image_id="7", width=120, height=80, path=Path("none.jpg"), **kw) -> PartImage:
    return PartImage(image_id=image_id, path=path, species="001.Bird", target=0, width=width, height=height,
                     keypoints={"beak": (30.0, 20.0), "tail": (90.0, 60.0)}, bird_size_px=(60.0, 50.0), **kw)


def test_random_disks_deterministic_per_seed_and_nested():
    image = part_image()
    a = random_disks(image, 30, seed=0)
    b = random_disks(image, 30, seed=0)
    c = random_disks(image, 30, seed=1)
    other = random_disks(part_image(image_id="8"), 30, seed=0)
    assert a.shape == (30, 224, 224) and set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, other)
    np.testing.assert_array_equal(random_disks(image, 5, seed=0), a[:5])  # best-of-N is nested
    # areas match the part radii: every disk is an ellipse of f*60 x f*50 image pixels,
    # f among the rule's fractions (cells are 120/224 x 80/224 pixels); disks may be cut by the border
    cell = (120 / 224) * (80 / 224)
    largest = np.pi * max(PART_RADIUS.values()) ** 2 * 60 * 50
    assert (a.sum((1, 2)) * cell <= largest * 1.1).all()
    assert (a.sum((1, 2)) > 0).mean() > 0.9
    native, restricted = disk_maps(image, seed=0)
    assert [native[f"random-disks-{n}"].shape[0] for n in DISK_COUNTS] == list(DISK_COUNTS)
    assert restricted[at_key("random-disks", 20)].shape[0] == 20
    np.testing.assert_array_equal(restricted[at_key("random-disks", 20)], native["random-disks-30"][:20])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def test_randomised_model_really_differs_from_the_real_one():
    torch.manual_seed(0)
    model = Tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = randomise_model(model, "conv2", seed=3)
    assert top.randomised_modules == ["conv2", "fc"]
    for name, value in top.state_dict().items():
        same = torch.equal(value, before[name])
        assert same == (name.startswith(("conv1", "bn1")))  # only conv2 and fc are re-initialised
    full = randomise_model(model, None, seed=3)
    assert full.randomised_modules == ["conv1", "bn1", "conv2", "fc"]
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(full(x), model(x))
    for name, value in model.state_dict().items():  # the real model is untouched
        assert torch.equal(value, before[name])
    again = randomise_model(model, None, seed=3)
    for name, value in again.state_dict().items():  # deterministic per seed
        assert torch.equal(value, full.state_dict()[name])
    # variance-preserving: a re-initialised conv keeps activations on the scale of its input
    with torch.no_grad():
        assert 0.3 < float(full.conv2(torch.relu(full.conv1(x))).std() / torch.relu(full.conv1(x)).std()) < 3
    with pytest.raises(InputError, match="no parameterised module named 'head'"):
        randomise_model(model, "head")


def fake_cache(n_layers=12, size=16) -> ImageMaps:
    rng = np.random.default_rng(0)
    return ImageMaps(
        target=1, predicted=1, probability=0.5, layers=["a"], layer_index=np.zeros(300, np.int32),
        channel=np.arange(300), relevance=rng.random(300), crp_index=np.arange(300),
        crp_maps=rng.random((300, size, size)).astype(np.float16),
        dcne_maps=rng.random((10, size, size)).astype(np.float16),
        dcne_ranked_maps=rng.random((30, size, size)).astype(np.float16),
        cam={"gradcam": rng.random((n_layers, size, size)).astype(np.float16),
             "fullgrad": rng.random((n_layers + 1, size, size)).astype(np.float16)},
    )


@pytest.mark.parametrize("k", [5, 10, 20])
def test_k_map_restrictions_have_k_maps_in_each_methods_order(k):
    cached = fake_cache()
    native, restricted = baseline_maps(cached, (k,))
    assert native["crp-300"].shape[0] == 300 and native["gradcam"].shape[0] == 12
    for method in ("crp", "dcne"):
        assert restricted[at_key(method, k)].shape[0] == k
    # 12 conv layers (13 FullGrad terms): K beyond that keeps every map
    assert restricted[at_key("gradcam", k)].shape[0] == min(k, 12)
    assert restricted[at_key("fullgrad", k)].shape[0] == min(k, 13)
    np.testing.assert_array_equal(restricted[at_key("crp", k)], cached.crp_maps[:k])  # most relevant first
    np.testing.assert_array_equal(restricted[at_key("gradcam", k)], cached.cam["gradcam"][-min(k, 12):])  # deepest layers
    np.testing.assert_array_equal(restricted[at_key("fullgrad", k)][0], cached.cam["fullgrad"][0])  # input term kept
    np.testing.assert_array_equal(restricted[at_key("fullgrad", k)][1:], cached.cam["fullgrad"][1:][-min(k - 1, 12):])
    np.testing.assert_array_equal(restricted[at_key("dcne", k)], cached.dcne_ranked_maps[:k])


def scores_for(iou_by_key: dict[str, float], point_by_key: dict[str, float], image_id: str, parts=2) -> ImageScores:
    iou = {key: np.full((7, parts), v) for key, v in iou_by_key.items()}
    point = {key: np.full(parts, v) for key, v in point_by_key.items()}
    n = {key: int(key.rsplit("@", 1)[1]) if "@" in key else 3 for key in iou_by_key}
    return ImageScores(image_id, f"s{image_id}", 0, 0, 0.5, iou, point, n, 3)


def test_lifts_are_differences_to_chance_on_the_same_photos():
    keys = ["ours@5", "random-disks@5", "ours-randomised-all@5", "ours"]
    rows = [
        scores_for({"ours@5": 0.5, "random-disks@5": 0.2, "ours-randomised-all@5": 0.1, "ours": 0.4},
                   {"ours@5": 1.0, "random-disks@5": 0.0, "ours-randomised-all@5": 0.0, "ours": 1.0}, "1"),
        scores_for({"ours@5": 0.3, "random-disks@5": 0.4, "ours-randomised-all@5": 0.3, "ours": 0.2},
                   {"ours@5": 0.0, "random-disks@5": 1.0, "ours-randomised-all@5": 1.0, "ours": 0.0}, "2"),
    ]
    assert set(rows[0].iou) == set(keys)
    run = EvaluationRun({"disks": rows}, {}, {}, {"ours": [{"k": 3, "largest_share": 0.3, "largest_size_fraction": 0.2,
                                                           "n_neurons": 10}] * 2}, ["original", "bbox_crop227"])
    config = EvaluationConfig(ks=(5,), region_rules=("disks",), randomise=("all",), faithfulness_k=5)
    summary = summarise_run(run, ["p0", "p1"], config)
    ours = summary["at_k"]["ours"][5]
    assert ours["mean_iou"] == pytest.approx(0.4) and ours["lift_iou"] == pytest.approx(0.4 - 0.3)
    assert ours["lift_pointing"] == pytest.approx(0.5 - 0.5)
    assert summary["randomisation"]["ours"]["lift_iou_randomised"] == pytest.approx(0.2 - 0.3)
    # per subset: lifts computed on that subset's photos only
    first = summary["region_rules"]["disks"]["subsets"]["original"]["at_k"]["ours"][5]
    assert first["lift_iou"] == pytest.approx(0.5 - 0.2) and first["lift_pointing"] == pytest.approx(1.0)
    second = summary["region_rules"]["disks"]["subsets"]["bbox_crop227"]["at_k"]["ours"][5]
    assert second["lift_iou"] == pytest.approx(0.3 - 0.4)
    assert "ours@5" not in summary["methods"] and "ours" in summary["methods"]
    assert at_k_table({"x@5": {"mean_iou": 0.1, "pointing": 0.0, "threshold": 0, "complexity": 5, "parts": {}}}, (5,))["x"][5]["lift_iou"] is None


def test_faithfulness_regions_and_shifted_controls():
    m = np.zeros((10, 10), np.float32)
    m[2:4, 2:7] = np.arange(10).reshape(2, 5) + 1
    region = top_region(m, (20, 20), 0.10)
    assert region.sum() == 40 and region[4:8, 4:14].sum() == 40  # nearest resize of the 10 positive cells
    only_two = np.zeros((4, 4), np.float32)
    only_two[0, :2] = 1.0
    assert top_region(only_two, (4, 4), 0.5).sum() == 2  # never beyond the positive pixels
    rng = np.random.default_rng(0)
    moved = shifted(region, rng)
    assert moved.sum() == region.sum()

    class Linear(nn.Module):  # logit = sum of the input's top-left quadrant
        def forward(self, x):
            return torch.stack([x[:, :, :10, :10].sum((1, 2, 3)), x.sum((1, 2, 3))], 1)

    x = torch.ones(1, 1, 20, 20)
    maps = np.zeros((3, 20, 20), np.float32)
    maps[:, :10, :10] = 1.0 + np.random.default_rng(1).random((3, 10, 10))
    result = occlusion_drops(Linear(), x, 0, maps, torch.zeros(1), "1")
    assert np.allclose(result.drop_map, 40.0) and np.allclose(result.area, 0.1)
    assert (result.drop_random <= result.drop_map).all()
    summary = summarise_faithfulness([result, result])
    assert summary["n_maps"] == 6 and summary["median_drop"] == pytest.approx(40.0)


def test_redundancy_is_mean_pairwise_correlation():
    base = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    assert redundancy(np.concatenate([base, 2 * base, base + 1]), (8, 8)) == pytest.approx(1.0)
    assert redundancy(np.concatenate([base, -base]), (8, 8)) == pytest.approx(-1.0)
    assert np.isnan(redundancy(np.concatenate([base, np.zeros_like(base)]), (8, 8)))


def test_slic_regions_follow_the_photo(tmp_path):
    from PIL import Image

    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[:, :60] = (200, 30, 30)  # red left half, blue right half
    pixels[:, 60:] = (30, 30, 200)
    path = tmp_path / "two.png"
    Image.fromarray(pixels).save(path)
    image = part_image(path=path, region_rule="slic")
    image.keypoints = {"beak": (55.0, 40.0)}
    masks = image.region_masks()
    beak = masks["beak"]
    assert beak is not None and beak[40, 55]
    assert not beak[:, 62:].any()  # the region stops at the colour edge (SLIC smooths it by sigma=1 px)
    disk = part_image(path=path).region_masks()  # same keypoint, disk rule
    assert masks["tail"] is None and disk["tail"] is not None  # only visible keypoints make regions
    rx, ry = (SLIC_CLIP * PART_RADIUS["beak"] * size for size in (60, 50))
    ys, xs = np.nonzero(beak)
    assert (((xs + 0.5 - 55) / rx) ** 2 + ((ys + 0.5 - 40) / ry) ** 2 <= 1.0 + 1e-9).all()  # clipped to the disk
    with pytest.raises(InputError, match="unknown region rule"):
        part_image(region_rule="boxes").region_masks()


def test_pointing_agrees_with_quantus_pointing_game():
    """Cross-check: our pointing on one full-resolution map equals Quantus' PointingGame."""
    quantus = pytest.importorskip("quantus")
    from conceptree.evaluation.protocol import cell_weights, pointing

    rng = np.random.default_rng(0)
    n = 40
    maps = rng.random((n, 1, 16, 16)).astype(np.float32)
    masks = np.zeros((n, 1, 16, 16), np.float32)
    for i in range(n):
        y, x = rng.integers(0, 12, 2)
        masks[i, 0, y : y + 5, x : x + 5] = 1
        if i % 2:  # half of the maps peak inside the region
            maps[i, 0, y + 2, x + 2] = 2.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 2)).eval()
    theirs = quantus.PointingGame(disable_warnings=True, normalise=False)(
        model=model, x_batch=np.zeros_like(maps), y_batch=np.zeros(n, int), a_batch=maps, s_batch=masks,
        channel_first=True, device="cpu")
    ours = [pointing(maps[i], cell_weights([masks[i, 0] > 0], (16, 16), (16, 16)))[0] for i in range(n)]
    assert [float(t) for t in theirs] == ours
    assert 0 < sum(ours) < n
