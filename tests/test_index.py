"""The reference index: stored relevances equal single-image LRP passes, batched equals
unbatched, Ray equals local, resume after an interrupted build, stale indexes refused, group
ranking equals a slow formula, crops inside the image and on the concept's region."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptree import ConceptExplainer, Explanation, InputError
from conceptree.concepts.options import ConceptOptions
from conceptree.errors import ConceptreeError
from conceptree.index import ConceptIndex, IndexBuilder, build_index
from conceptree.index import build as build_module
from conceptree.index.build import peak_grid_cells
from conceptree.index.references import ReferenceFinder, crop_box, group_weights, peak_map, region_grid
from conceptree.jobs import fan_out
from conceptree.models.loading import load_image, load_model, preprocess
from conceptree.runs import ModelSource

OPTIONS = ConceptOptions(max_neurons=600, k_range=(4, 6))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("refs")
    for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def spec():
    return load_model("default")


@pytest.fixture(scope="module")
def index(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    return build_index(photos, ModelSource(), out, executor="local", batch_size=2, shard_size=3, progress=False)


def single_pass(spec, path):
    from conceptree.attribution import CRPEngine

    engine = CRPEngine(spec.model)
    x, shown = preprocess(load_image(str(path))[0], spec.preprocessing)
    attribution = engine.attribute(x)
    rel = torch.cat([attribution.layer_relevance[layer.name].double().flatten(1).sum(1) for layer in engine.layers])
    maps = {name: r.unsqueeze(0) for name, r in attribution.layer_relevance.items()}
    return rel.numpy(), peak_grid_cells(maps)[0], attribution.target


def test_stored_relevances_equal_a_single_image_pass(index, spec, photos):
    assert len(index) == 6 and index.relevance.dtype == np.float16
    failed = [im for im in index.images if not im.ok]
    assert [im.path for im in failed] == ["broken.jpg"] and "cannot read image" in failed[0].error
    assert not np.any(index.relevance[failed[0].row])
    for image in index.images:
        if not image.ok:
            continue
        exact, peaks, target = single_pass(spec, photos / image.path)
        stored = index.relevance[image.row].astype(np.float64)
        assert image.target == target == image.predicted
        # float16 keeps 2^-11 relative; batched float sums move the smallest channels by up to 2e-5 of the largest
        assert np.all(np.abs(stored - exact) <= 1e-3 * np.abs(exact) + 2e-5 * np.abs(exact).max())
        assert np.median(np.abs(stored - exact) / np.maximum(np.abs(exact), 1e-30)) < 3e-4
        assert image.abs_total == pytest.approx(np.abs(exact).sum(), rel=1e-6)
        # peaks: equal wherever the layer's maximum is unique (ties may resolve either way in a batch)
        assert np.mean(index.peaks[image.row] == peaks) > 0.99


def test_batched_equals_unbatched_on_real_models(spec, photos):
    from conceptree.attribution import CRPEngine

    engine = CRPEngine(spec.model)
    xs = torch.cat([preprocess(load_image(str(photos / f"{n}.png"))[0], spec.preprocessing)[0]
                    for n in ("chelsea", "coffee", "rocket")])
    batch = engine.attribute_batch(xs, [None, 3, None], keep_maps=True)
    for i, target in enumerate([None, 3, None]):
        one = engine.attribute(xs[i : i + 1], target)
        assert batch.targets[i] == one.target
        rel = torch.cat([one.layer_relevance[layer.name].double().flatten(1).sum(1) for layer in engine.layers])
        assert float((batch.channel_relevance[i] - rel).abs().max()) <= 5e-5 * float(rel.abs().max())
        for name, maps in batch.image(i).items():  # batched kernels round differently: L1 1e-5, a few cells more
            ref = one.layer_relevance[name]
            assert float((maps - ref).abs().sum()) <= 1e-4 * float(ref.abs().sum()) + 1e-12
            assert float((maps - ref).abs().max()) <= 1e-2 * float(ref.abs().max()) + 1e-12
    with pytest.raises(InputError, match="targets for 3 images"):
        engine.attribute_batch(xs, [None])


def test_index_batch_size_does_not_change_the_index(index, photos, tmp_path):
    one = build_index(photos, ModelSource(), tmp_path / "b1", executor="local", batch_size=1, progress=False)
    a, b = one.relevance.astype(np.float64), index.relevance.astype(np.float64)
    assert np.all(np.abs(a - b) <= 2e-3 * np.abs(b) + 4e-5 * np.abs(b).max(axis=1, keepdims=True))


def test_ray_equals_local(index, photos, tmp_path):
    pytest.importorskip("ray")
    remote = build_index(photos, ModelSource(), tmp_path / "ray", executor="ray", workers=1, batch_size=2, shard_size=3,
                         progress=False)
    assert remote.meta["build"]["executor"] == "ray"
    assert np.array_equal(remote.relevance, index.relevance)
    assert np.array_equal(remote.peaks, index.peaks)
    assert [im.pixels_sha1 for im in remote.images] == [im.pixels_sha1 for im in index.images]


def fail_first_attempt(log: Path):
    """A task wrapper (``fan_out(task_wrapper=...)``): the first attempt at each shard, in any build, raises."""

    def wrapper(task, attempt):
        marker = log / f"{task.task_id}.attempted"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(attempt))
            raise RuntimeError(f"injected failure of the first attempt at {task.task_id}")
        return task()

    return wrapper


def test_resume_after_an_interrupted_build(index, photos, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    builder = IndexBuilder(executor="local", batch_size=2, shard_size=2, max_retries=0, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(build_module, "fan_out", functools.partial(fan_out, task_wrapper=fail_first_attempt(tmp_path / "log")))
        with pytest.raises(ConceptreeError, match="rerun the same command to resume"):
            builder.build(photos, ModelSource(), out)
        assert not (out / "index.json").exists()
        left = sorted(p.name for p in (out / "shards").glob("shard-*.npz"))
        assert left == []  # the first shard failed before any other ran (sequential)
        # a second start: shard 0 now succeeds; kill the build after it by failing shard 1 once
        with pytest.raises(ConceptreeError):
            builder.build(photos, ModelSource(), out)
        assert sorted(p.name for p in (out / "shards").glob("shard-*.npz")) == ["shard-00000.npz"]
    clean = IndexBuilder(executor="local", batch_size=2, shard_size=2, progress=False)
    resumed = clean.build(photos, ModelSource(), out)
    assert resumed.meta["build"]["computed_now"] == 4  # shards 1 and 2; shard 0 was kept
    assert not (out / "shards").exists()
    a, b = resumed.relevance.astype(np.float64), index.relevance.astype(np.float64)
    assert np.all(np.abs(a - b) <= 2e-3 * np.abs(b) + 4e-5 * np.abs(b).max(axis=1, keepdims=True))
    again = clean.build(photos, ModelSource(), out)  # finished: nothing recomputed, same files
    assert again.meta["build"]["computed_now"] == 4 and np.array_equal(again.relevance, resumed.relevance)


def test_stale_or_mismatched_index_refused(index, photos, spec, tmp_path):
    with pytest.raises(InputError, match=r"built with other target rule; pass another --out or --overwrite"):
        build_index(photos, ModelSource(), index.path, target="label", progress=False)
    other = load_model("default")
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    with pytest.raises(InputError) as err:
        ConceptExplainer.from_spec(other, index=index.path)
    assert "other model parameters (hash)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="other preprocessing"):
        ConceptExplainer(spec.model, index=index.path)  # ImageNet preprocessing, not the model's
    with pytest.raises(InputError, match="no index at"):
        ConceptExplainer.from_spec(spec, index=tmp_path / "nowhere")
    # an added rule is part of the key (Composite.to_dict leaves it out)
    from conceptree import Composite
    from conceptree.attribution import rules

    custom = Composite().with_rule(torch.nn.Hardtanh, lambda ctx: rules.PassRule(ctx.arg0))
    with pytest.raises(InputError, match="other LRP rules"):
        ConceptExplainer.from_spec(spec, composite=custom, index=index.path)


def test_group_ranking_equals_the_slow_formula(index):
    rng = np.random.default_rng(0)
    columns = rng.choice(index.n_neurons, size=40, replace=False)
    weights = rng.random(40)
    weights /= weights.sum()
    scores = index.scores(columns, weights)
    for image in index.images:
        if not image.ok:
            assert scores[image.row] == -np.inf
            continue
        row = [float(index.relevance[image.row, c]) for c in columns]
        total = sum(abs(float(v)) for v in index.relevance[image.row])
        slow = sum(w * r for w, r in zip(weights, row)) / total
        assert scores[image.row] == pytest.approx(slow, rel=1e-3, abs=1e-9)
    top = index.top(columns, weights, 3, exclude={int(np.argmax(scores))})
    assert [r for r, _ in top] == [int(i) for i in np.argsort(-scores, kind="stable")[1:4]]


def test_crop_rule_on_synthetic_maps():
    m = np.zeros((224, 224), np.float32)
    m[120:160, 150:200] = 1.0  # a block of relevance
    m[20:24, 20:24] = 10.0  # a ten times higher spike with a twelfth of the mass
    box, seed, region, empty = crop_box(m)
    x0, y0, x1, y1 = box
    assert not empty and 150 <= seed[0] < 200 and 120 <= seed[1] < 160  # the mass, not the spike
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    assert region[140, 175] and not region[22, 22]
    ys, xs = np.nonzero(region)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1  # the region lies in the box
    assert x0 <= seed[0] < x1 and y0 <= seed[1] < y1
    assert x1 - x0 >= 56 and y1 - y0 >= 56  # at least a quarter of each side
    smooth = region_grid(m)
    assert smooth[seed[1] // 4, seed[0] // 4] == smooth.max()  # the seed cell is the smoothed map's maximum
    corner = np.zeros((224, 224), np.float32)
    corner[0:8, 216:224] = 1.0
    box, seed, _, _ = crop_box(corner)
    assert box[2] == 224 and box[1] == 0 and box[2] - box[0] >= 56  # shifted inside, not clipped smaller
    box, seed, region, empty = crop_box(-np.ones((10, 10)))
    assert empty and box == (0, 0, 10, 10)


def test_peak_map_keeps_the_members_positive_relevance(index):
    row = next(im.row for im in index.images if im.ok)
    offset, channels = index.columns[list(index.columns)[-1]]  # the deepest layer (7x7 cells)
    columns = np.arange(offset, offset + channels)
    mass = np.clip(index.relevance[row, columns].astype(np.float64), 0, None).sum()
    grid = peak_map(index, row, columns)
    assert grid.shape == index.peak_grid and grid.min() >= 0
    assert grid.sum() == pytest.approx(mass, rel=0.2)  # border spreads lose a little
    assert np.array_equal(peak_map(index, row, columns, (224, 224))[::4, ::4], grid)


def test_explanation_lists_references_and_reloads(index, spec, photos, tmp_path):
    explainer = ConceptExplainer.from_spec(spec, options=OPTIONS, index=index, n_references=3)
    explanation = explainer.explain(photos / "chelsea.png")
    refs = explanation.references
    assert refs is not None and [r.rank for r in refs] == [c.rank for c in explanation.concepts.concepts]
    own = index.row_of_pixels(explanation.image_info.hash)
    assert own is not None
    for concept, concept_refs in zip(explanation.concepts.concepts, refs):
        assert len(concept_refs.references) == 3
        assert own not in [r.row for r in concept_refs.references]  # the explained image is excluded
        columns, weights = group_weights(index, concept.neurons)
        expected = index.top(columns, weights, 3, exclude={own})
        assert [(r.row, pytest.approx(r.score)) for r in concept_refs.references] == expected
        for ref in concept_refs.references:
            x0, y0, x1, y1 = ref.box
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224 and ref.crop.shape == (y1 - y0, x1 - x0, 3)
            shown = preprocess(load_image(str(index.image_path(ref.row)))[0], spec.preprocessing)[1]
            smooth = region_grid(peak_map(index, ref.row, columns))
            if not ref.empty:  # the seed cell is the smoothed map's maximum and lies in the box
                assert smooth[ref.seed[1] // 4, ref.seed[0] // 4] == smooth.max()
                assert x0 <= ref.seed[0] < x1 and y0 <= ref.seed[1] < y1
            assert np.array_equal(ref.crop, shown[y0:y1, x0:x1])
    assert explanation.timings["references_s"] > 0
    explanation.save(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "explanation.json").read_text())
    assert data["references"]["concepts"][0]["references"][0]["box"] == list(refs[0].references[0].box)
    assert "elsewhere this concept is strongest on" in (tmp_path / "out" / "report.html").read_text()
    back = Explanation.load(tmp_path / "out")
    assert [r.to_dict() for r in back.references] == [r.to_dict() for r in refs]
    assert back.references[0].references[0].crop.shape == refs[0].references[0].crop.shape


def test_exact_crops_use_the_references_own_lrp_pass(index, spec, photos):
    explainer = ConceptExplainer.from_spec(spec, options=OPTIONS)
    explanation = explainer.explain(photos / "coffee.png")
    concept = explanation.concepts.concepts[0]
    finder = ReferenceFinder(explainer.engine, spec.preprocessing, index, n=2, exact=True)
    (refs,) = finder.find([concept], exclude_row=index.row_of_pixels(explanation.image_info.hash))
    from conceptree.concepts.layer_maps import layer_group_maps

    for ref in refs.references:
        x, _ = preprocess(load_image(str(index.image_path(ref.row)))[0], spec.preprocessing)
        exact = layer_group_maps(explainer.engine.attribute(x, index.images[ref.row].target), [concept.groups()], (224, 224))[0]
        assert ref.box == crop_box(exact)[0]


def test_index_cli_and_explain_with_index(photos, tmp_path):
    from typer.testing import CliRunner

    from conceptree.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["index", str(photos), "--out", str(tmp_path / "idx"), "--executor", "local",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["index", str(photos), "--out", str(tmp_path / "idx"), "--executor", "local"])
    assert "complete already: nothing to compute" in again.output and "failed: broken.jpg" in again.output
    bad = subprocess.run([sys.executable, "-m", "conceptree", "index", str(photos), "--out", str(tmp_path / "idx"),
                          "--target", "true"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown index target 'true'" in bad.stderr and "Traceback" not in bad.stderr
    explained = runner.invoke(app, ["explain", str(photos / "chelsea.png"), "--index", str(tmp_path / "idx"),
                                    "--max-neurons", "600", "--k-range", "4:5", "--references", "2",
                                    "--out", str(tmp_path / "e"), "--quiet"])
    assert explained.exit_code == 0, explained.output
    data = json.loads((tmp_path / "e" / "explanation.json").read_text())
    assert all(len(c["references"]) == 2 for c in data["references"]["concepts"])
    assert data["references"]["index"]["images"] == 6
    assert ConceptIndex(tmp_path / "idx").meta["build"]["images"] == 6


def test_a_labelled_set_indexes_its_labels_and_names_parts(photos, tmp_path):
    """A cub_parts-style folder: labels become the indexed class (--target label), keypoints the
    part evidence of the references."""
    root = tmp_path / "parts"
    (root / "images").mkdir(parents=True)
    records = []
    for i, (name, label) in enumerate([("chelsea", 281), ("coffee", 967), ("astronaut", 834), ("rocket", None)]):
        picture = Image.open(photos / f"{name}.png").convert("RGB")
        picture.save(root / "images" / f"{name}.jpg")
        w, h = picture.size
        records.append({"cub_image_id": i, "file": f"images/{name}.jpg", "subset": "original",
                        "species": {"class_id": i, "name": name, **({"inat_index": label} if label is not None else {})},
                        "width": w, "height": h, "bbox": [w * 0.2, h * 0.2, w * 0.6, h * 0.6],
                        "parts": {"left eye": [w * 0.4, h * 0.4], "breast": [w * 0.5, h * 0.7]}})
    (root / "annotations.json").write_text(json.dumps({"info": {}, "images": records}))
    index = build_index(root, ModelSource(), tmp_path / "idx", target="label", executor="local", progress=False)
    labels = {Path(im.path).stem: im for im in index.images}
    assert labels["chelsea"].label == labels["chelsea"].target == 281
    assert labels["coffee"].target == 967 and labels["astronaut"].target == 834
    assert labels["rocket"].label is None and labels["rocket"].target == labels["rocket"].predicted
    assert labels["chelsea"].annotation["keypoints"]["breast"] == [records[0]["parts"]["breast"][0],
                                                                     records[0]["parts"]["breast"][1]]
    explainer = ConceptExplainer.from_spec(load_model("default"), options=OPTIONS, index=index, n_references=3)
    explanation = explainer.explain(photos / "hubble_deep_field.png")
    for concept in explanation.references:
        for ref in concept.references:
            assert ref.part in (None, "none", "eye", "breast")  # only the annotated parts can be named
        part = concept.evidence["part"]
        if part is not None:
            assert 0 <= part["chance"] <= 1 and part["annotated"] <= 3
