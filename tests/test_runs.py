"""explain-many: Ray equals the sequential run bit for bit; retries; resume; bad images recorded."""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptree.concepts.options import ConceptOptions
from conceptree.jobs import fan_out
from conceptree.runs import ModelSource, explain_many

ray = pytest.importorskip("ray")

OPTIONS = ConceptOptions(max_neurons=600, k_range=(4, 8))
#: the module (``conceptree.runs.explain_many`` as an attribute is the function)
explain_many_module = importlib.import_module("conceptree.runs.explain_many")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def explanation_content(folder: Path) -> tuple[dict, dict]:
    data = json.loads((folder / "explanation.json").read_text())
    data.pop("timings")
    data["concept_set"].pop("timings")
    with np.load(folder / "maps.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return data, arrays


def test_ray_equals_sequential_and_records_the_corrupt_image(photos, tmp_path):
    local = explain_many(photos, ModelSource(), tmp_path / "local", options=OPTIONS, executor="local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = explain_many(photos, ModelSource(), tmp_path / "ray", options=OPTIONS, executor="ray", workers=1,
                              progress=False)
    finally:
        ray.shutdown()
    for result in (local, remote):
        statuses = {Path(r.image).name: r.status for r in result.records}
        assert statuses == {"broken.jpg": "failed", "chelsea.png": "ok", "coffee.png": "ok"}
        (bad,) = result.failed
        assert "cannot read image" in bad.error and not (result.out / bad.folder).exists()
        index = json.loads((result.out / "index.json").read_text())
        assert index["summary"]["failed"] == 1 and index["summary"]["ok"] == 2
        assert "cannot read image" in (result.out / "index.html").read_text()
    for record in local.records:
        if record.status != "ok":
            continue
        (json_a, arrays_a), (json_b, arrays_b) = (explanation_content(r.out / record.folder) for r in (local, remote))
        assert json_a == json_b
        assert arrays_a.keys() == arrays_b.keys()
        assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)


def fail_first_attempt(log: Path, kill: bool = False):
    """A task wrapper (``fan_out(task_wrapper=...)``): the first attempt at each task raises, or, with
    ``kill``, dies mid-save as a SIGKILLed worker does (a partial temporary folder left behind). A
    closure, so that Ray pickles it by value into its workers."""

    def wrapper(task, attempt):
        marker = log / f"{task.task_id}.attempted"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(attempt))
            if kill:
                partial = Path(task.out) / f".tmp-{task.name}-{uuid.uuid4().hex[:8]}"
                partial.mkdir(parents=True)
                (partial / "maps.npz").write_bytes(b"partial")
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure of the first attempt at {task.task_id}")
        return task()

    return wrapper


def inject(monkeypatch, wrapper) -> None:
    """Run explain-many's tasks through ``wrapper`` (the runner's documented seam)."""
    monkeypatch.setattr(explain_many_module, "fan_out", functools.partial(fan_out, task_wrapper=wrapper))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_task_that_fails_once_is_retried(photos, tmp_path, executor, monkeypatch):
    chelsea = [photos / "chelsea.png"]
    log = tmp_path / "attempts"
    inject(monkeypatch, fail_first_attempt(log))
    result = explain_many(chelsea, ModelSource(), tmp_path / "run", options=OPTIONS, executor=executor, progress=False)
    (record,) = result.records
    assert (log / f"{record.folder}.attempted").exists()  # the first attempt raised
    assert record.status == "ok" and (result.out / record.folder / "report.html").is_file()
    assert record.attempts == 2  # counted by the runner, on Ray too
    assert not list(result.out.glob(".tmp-*"))  # nothing half-written left behind


def test_a_task_that_keeps_failing_is_recorded_and_the_run_goes_on(photos, tmp_path, monkeypatch):
    def always_fails_on_chelsea(task, attempt):
        if "chelsea" in task.name:
            raise RuntimeError(f"attempt {attempt} crashed")
        return task()

    inject(monkeypatch, always_fails_on_chelsea)
    result = explain_many([photos / "chelsea.png", photos / "coffee.png"], ModelSource(), tmp_path / "run",
                          options=OPTIONS, executor="local", max_retries=1, progress=False)
    assert [r.status for r in result.records] == ["failed", "ok"]
    (bad,) = result.failed
    assert bad.attempts == 2 and bad.error == "RuntimeError: attempt 2 crashed"
    assert json.loads((result.out / "index.json").read_text())["summary"]["failed"] == 1


def test_a_killed_ray_worker_leaves_no_temporary_folder(photos, tmp_path, monkeypatch):
    """SIGKILL of the worker mid-save: the runner retries the task on Ray and no temporary folder is left."""
    log = tmp_path / "attempts"
    inject(monkeypatch, fail_first_attempt(log, kill=True))
    result = explain_many([photos / "chelsea.png"], ModelSource(), tmp_path / "run", options=OPTIONS, executor="ray",
                          workers=1, progress=False)
    (record,) = result.records
    assert (log / f"{record.folder}.attempted").exists()  # the first attempt ran and was killed
    assert record.status == "ok" and (result.out / record.folder / "explanation.json").is_file()
    assert record.attempts == 2
    assert not list(result.out.glob(".tmp-*"))


def test_a_retry_removes_the_folder_its_killed_attempt_left(photos, tmp_path):
    from conceptree.runs.explain_many import explain_to_folder

    out = tmp_path / "run"
    (out / ".tmp-0000-chelsea-dead0000").mkdir(parents=True)  # a SIGKILLed attempt at this image
    (out / ".tmp-0001-coffee-live0000").mkdir()  # another image's attempt, still running
    outcome = explain_to_folder(ModelSource(), OPTIONS, str(photos / "chelsea.png"), str(out), "0000-chelsea")
    assert outcome["status"] == "ok" and (out / "0000-chelsea" / "explanation.json").is_file()
    assert sorted(p.name for p in out.glob(".tmp-*")) == [".tmp-0001-coffee-live0000"]


def test_an_interrupted_run_resumes_and_skips_finished_images(photos, tmp_path):
    out = tmp_path / "run"
    first = explain_many([photos / "chelsea.png"], ModelSource(), out, options=OPTIONS, executor="local", progress=False)
    finished = out / first.records[0].folder
    mtime = (finished / "explanation.json").stat().st_mtime_ns
    (out / ".tmp-0001-coffee-dead").mkdir()  # what a killed worker leaves
    (out / ".tmp-0001-coffee-dead" / "maps.npz").write_bytes(b"partial")
    again = explain_many([photos / "chelsea.png", photos / "coffee.png"], ModelSource(), out, options=OPTIONS,
                         executor="local", progress=False)
    assert [r.status for r in again.records] == ["skipped", "ok"]
    assert again.records[0].k == first.records[0].k  # the index still describes the earlier result
    assert (finished / "explanation.json").stat().st_mtime_ns == mtime
    assert not list(out.glob(".tmp-*"))


def fake_explanations(groups_per_image):
    from types import SimpleNamespace

    from conceptree.concepts.concepts import Neuron

    out = []
    for groups in groups_per_image:
        concepts = [SimpleNamespace(neurons=[Neuron("conv", c, 1.0) for c in chans], relevance=float(len(chans)), rank=r + 1)
                    for r, chans in enumerate(groups)]
        out.append(SimpleNamespace(concepts=SimpleNamespace(concepts=concepts)))
    return out


def test_weighted_overlap_and_matching():
    from conceptree.runs.atlas import match_concepts, weighted_overlap

    a, b = {("l", 0): 0.5, ("l", 1): 0.5}, {("l", 0): 0.5, ("l", 2): 0.5}
    assert weighted_overlap(a, b) == pytest.approx(0.5)
    assert weighted_overlap(a, a) == pytest.approx(1.0) and weighted_overlap(a, {("l", 9): 1.0}) == 0.0
    shared = list(range(10))
    images = fake_explanations([
        [shared, [100, 101]],
        [shared[:9] + [50], [200, 201], shared[1:] + [60]],  # two concepts like the shared one in one image
        [shared, [300]],
    ])
    groups = match_concepts(images, link=0.25)
    biggest = groups[0]
    assert len(biggest) == 3 and sorted(i for i, _ in biggest) == [0, 1, 2]  # one occurrence per image
    assert sum(len(g) for g in groups) <= 8 and all(len(g) == 1 for g in groups[1:] if g[0][1] == 1)


def test_atlas_of_two_photos_of_one_class(tmp_path):
    from skimage import data

    from conceptree.explainer import ConceptExplainer
    from conceptree.models.loading import load_model
    from conceptree.runs import build_atlas, write_atlas

    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    Image.fromarray(data.chelsea()[:, ::-1]).save(tmp_path / "mirrored.png")
    explainer = ConceptExplainer.from_spec(load_model("default"), options=OPTIONS)
    explanations = [explainer.explain(tmp_path / name, target=282) for name in ("chelsea.png", "mirrored.png")]
    keypoints = {"chelsea.png": {"eye": (80.0, 95.0)}, "mirrored.png": {"eye": (144.0, 95.0)}}
    atlas, maps = build_atlas(explanations, ["a", "b"], explainer, keypoints=keypoints, min_fraction=1.0)
    recurring = [c for c in atlas.concepts if c.recurring]
    assert recurring, "a photo and its mirror image share concepts"
    for concept in recurring:
        assert concept.n_images == 2 and concept.core and concept.consistency is not None
        assert maps[concept.id].shape == (2, 224, 224)
        for occ in concept.occurrences:  # the traced core's map sums to its relevance there
            assert occ.core_relevance == pytest.approx(float(maps[concept.id][["a", "b"].index(occ.folder)].sum()))
            assert occ.box is None or (occ.box[0] < occ.box[2] and occ.box[1] < occ.box[3])
        assert concept.occurrences[0].core_relevance >= concept.occurrences[-1].core_relevance  # ranked
    write_atlas(atlas, explanations, ["a", "b"], tmp_path / "atlas")
    saved = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert len(saved["recurring"]) == len(recurring) and "consistency" in saved["recurring"][0]
    view = atlas._repr_html_()  # the notebook view: one row per recurring concept, scoped, no scripts or URLs
    assert view.count("<tr><td>A") == len(recurring) and "<script" not in view and "http" not in view
    assert view.startswith("<div class='conceptree-view'>")
    assert (tmp_path / "atlas" / "atlas.html").read_text().count("<section>") == len(recurring)


def test_evaluation_cache_on_ray_equals_the_local_one(tmp_path):
    import torch
    import torchvision

    from conceptree.datasets.cub_parts import load_cub_parts
    from conceptree.evaluation.runner import build_cache, cache_path
    from conceptree.models.loading import Preprocessing

    from .test_evaluate import write_dataset

    write_dataset(tmp_path / "cub", 2, 1)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    args = ModelSource(spec="torchvision:resnet18", weights=str(tmp_path / "r18.pth"),
                       preprocessing=Preprocessing(resize=64, crop=0, mean=(0.5,) * 3, std=(0.5,) * 3))
    items, _ = load_cub_parts(tmp_path / "cub")
    build_cache(items, args, tmp_path / "local", workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build_cache(items, args, tmp_path / "ray", workers=1, progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert (tmp_path / "ray" / "manifest.json").read_text() == (tmp_path / "local" / "manifest.json").read_text()
    for item in items:
        with np.load(cache_path(tmp_path / "local", item)) as a, np.load(cache_path(tmp_path / "ray", item)) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
