"""cub-parts regions and ``conceptree evaluate`` end to end on a synthetic cub_parts folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conceptree.datasets.cub_parts import PART_RADIUS, REGIONS, load_cub_parts, select
from conceptree.errors import InputError
from conceptree.evaluation.outputs import OUTPUT_FILES, load_results

from .conftest import shared_path


def write_dataset(root: Path, n_species: int = 2, per_species: int = 2) -> None:
    rng = np.random.default_rng(0)
    images = []
    for s in range(n_species):
        folder = f"{s + 1:03d}.Bird_{s}"
        (root / "images" / folder).mkdir(parents=True)
        for i in range(per_species):
            name = f"images/{folder}/Bird_{s}_{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / name)
            images.append({
                "cub_image_id": 100 * s + i, "file": name, "subset": "original",
                "species": {"class_id": s + 1, "name": folder, "inat_index": 10 + s},
                "width": 64, "height": 48, "bbox": [8.0, 4.0, 40.0, 40.0],
                "parts": {"beak": [40.0, 10.0], "left eye": [34.0, 10.0], "right eye": [30.0, 11.0], "tail": [10.0, 40.0]},
            })
    images.append({**images[0], "cub_image_id": 999, "species": {"class_id": 9, "name": "009.No_target"}})
    (root / "annotations.json").write_text(json.dumps({"info": {}, "images": images}))


def test_regions_follow_the_documented_rule(tmp_path):
    write_dataset(tmp_path)
    images, skipped = load_cub_parts(tmp_path)
    assert skipped == {"species_without_target": 1, "images_without_target": 1}
    assert len(images) == 4 and images[0].target == 10
    masks = images[0].region_masks()
    assert list(masks) == list(REGIONS)
    assert masks["wing"] is None and masks["breast"] is None  # not annotated -> absent
    r = PART_RADIUS["beak"] * 40.0  # fraction of sqrt(40 * 40)
    assert masks["beak"].sum() == pytest.approx(np.pi * r * r, rel=0.15)
    assert masks["beak"][10, 40] and not masks["beak"][10, 40 - int(r) - 2]
    eye = masks["eye"]  # left and right eye merged
    assert eye[10, 34] and eye[11, 30]
    assert len(select(images, ["bird_1"])) == 2 and len(select(images, per_species=1)) == 2
    with pytest.raises(InputError, match="no images match"):
        select(images, ["heron"])


def test_crop_frame_regions_are_scaled_disks(tmp_path):
    write_dataset(tmp_path, 1, 1)
    data = json.loads((tmp_path / "annotations.json").read_text())
    rec = data["images"][0]
    rec.update(subset="bbox_crop227", width=60, height=30, bbox=[0.0, 0.0, 60.0, 30.0])
    rec["crop"] = {"orig_bbox": [0.0, 0.0, 100.0, 100.0], "scale_xy": [0.6, 0.3]}
    rec["parts"] = {"belly": [30.0, 15.0]}
    data["images"] = [rec]
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    (image,), _ = load_cub_parts(tmp_path)
    belly = image.region_masks()["belly"]
    radius = PART_RADIUS["belly"] * 100.0
    cols = np.flatnonzero(belly[15])
    rows = np.flatnonzero(belly[:, 30])
    assert cols.size == pytest.approx(2 * radius * 0.6, abs=2)  # ellipse in the crop frame
    assert rows.size == pytest.approx(2 * radius * 0.3, abs=2)


def test_missing_annotations_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="annotations.json not found"):
        load_cub_parts(tmp_path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "conceptree", *args], capture_output=True, text=True, timeout=900)


BASELINES = ("crp-10", "crp-300", "dcne", "gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "fullgrad")


def test_evaluate_cli_end_to_end_and_resume(tmp_path):
    data = tmp_path / "cub"
    write_dataset(data, 2, 1)
    out = tmp_path / "eval"
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    proc = run_cli("evaluate", "--data", str(data), "--model", "torchvision:resnet18", "--out", str(out))
    assert proc.returncode == 2 and "random weights" in proc.stderr
    args = ["evaluate", "--data", str(data), "--model", "torchvision:resnet18", "--weights", str(weights), "--resize", "64", "--crop", "0",
            "--max-neurons", "120", "--k-range", "3:6", "--out", str(out), "--quiet", "--region-rule", "disks",
            "--variant", "ours[rep]:concept_map=representative,lam=1", "--faithfulness-method", "ours",
            "--faithfulness-method", "random-disks", "--randomise-from", "layer4", "--randomise-from", "all"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUT_FILES:
        assert (out / name).is_file()
    results = load_results(out)
    expected = {"ours", "ours[rep]", *BASELINES, *(f"random-disks-{n}" for n in (5, 10, 20, 30, 52, 300))}
    assert set(results["methods"]) == expected
    for m in results["methods"].values():
        assert {"mean_iou", "complexity", "threshold", "pointing"} <= set(m)
        assert 0.0 <= m["mean_iou"] <= 1.0 and m["threshold"] in results["threshold_grid"]
    assert results["methods"]["crp-300"]["complexity"] == 300
    assert results["methods"]["dcne"]["complexity"] == 10
    assert results["methods"]["gradcam"]["complexity"] == 20  # resnet18: 20 conv layers
    assert results["methods"]["fullgrad"]["complexity"] == 21
    assert results["methods"]["random-disks-52"]["complexity"] == 52
    assert 3 <= results["methods"]["ours"]["complexity"] <= 6
    assert results["n_images"] == 2 and results["n_species"] == 2
    assert results["skipped"]["images_without_target"] == 1
    # equal complexity: every method at every K has K maps and a lift over chance at that K
    for method in ("ours", "ours[rep]", "crp", "dcne", "gradcam", "fullgrad", "random-disks"):
        for k in (5, 10, 20, 30):
            entry = results["at_k"][method][str(k)]
            assert entry["n_maps"] == (min(k, 20) if method == "gradcam" else min(k, 21) if method == "fullgrad" else k)
            chance = results["at_k"]["random-disks"][str(k)]
            assert entry["lift_iou"] == pytest.approx(entry["mean_iou"] - chance["mean_iou"])
            assert entry["lift_pointing"] == pytest.approx(entry["pointing"] - chance["pointing"])
    assert set(results["faithfulness"]) == {"ours", "random-disks"}
    assert results["faithfulness"]["ours"]["n_maps"] == 2 * 20
    assert set(results["redundancy"]) >= {"ours", "crp", "gradcam"}
    randomisation = results["randomisation"]["ours"]
    assert randomisation["randomised_from"] == "layer4" and set(randomisation["scopes"]) == {"layer4", "all"}
    assert randomisation["lift_iou"] == results["at_k"]["ours"]["20"]["lift_iou"]
    assert set(results["region_rules"]) == {"disks"}
    assert set(json.loads((out / "thresholds.json").read_text())) == {"disks"}
    table = (out / "table.md").read_text()
    assert "| ours |" in table and "Equal complexity" in table and "Model randomisation" in table
    # rerun: every image comes from the cache, thresholds fixed from the file, same numbers
    cached = sorted(p.name for p in (out / "cache").glob("*.npz"))
    assert len(cached) == 2
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text((out / "thresholds.json").read_text())
    proc = run_cli(*args, "--thresholds", str(thresholds))
    assert proc.returncode == 0, proc.stderr
    again = load_results(out)
    for name in expected:
        assert again["methods"][name]["mean_iou"] == pytest.approx(results["methods"][name]["mean_iou"])
        assert again["methods"][name]["threshold_source"] == "fixed"
    # protocol variant: every map average-pooled to 16x16 first (cached maps reused)
    proc = run_cli(*args, "--map-grid", "16")
    assert proc.returncode == 0, proc.stderr
    pooled = load_results(out)
    assert pooled["map_grid"] == [16, 16]
    assert pooled["methods"]["crp-300"]["mean_iou"] != pytest.approx(results["methods"]["crp-300"]["mean_iou"])
    # a cache built with another model is refused; a bad variant is a one-line error
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    proc = run_cli(*[a if a != str(weights) else str(other) for a in args])
    assert proc.returncode == 2 and "cache" in proc.stderr and "weights" in proc.stderr
    proc = run_cli(*args[:-2], "--variant", "x:colour=red")
    assert proc.returncode == 2 and "unknown key 'colour'" in proc.stderr and "Traceback" not in proc.stderr


def test_bird_model_regions_on_real_photo():
    root = shared_path("data", "cub_parts")
    images, skipped = load_cub_parts(root)
    assert skipped["species_without_target"] == 17 and len(images) == 670
    image = images[0]
    masks = image.region_masks()
    present = [r for r, m in masks.items() if m is not None]
    assert present and all(masks[r].shape == (image.height, image.width) for r in present)
    # every visible keypoint lies inside its region
    for region, names in REGIONS.items():
        for name in names:
            if name in image.keypoints:
                x, y = image.keypoints[name]
                assert masks[region][min(int(y), image.height - 1), min(int(x), image.width - 1)]
