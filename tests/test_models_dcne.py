"""DCNE's ResNet-34 CUB checkpoint layout, tested with a random-weight file of that layout."""

import pytest
import torch
import torchvision

from conceptree.errors import CheckpointError, InputError
from conceptree.models.dcne import CUB_PREPROCESSING, dcne_state_to_torchvision
from conceptree.models.loading import load_model


def dcne_layout_file(path, num_classes=200):
    torch.manual_seed(0)
    backbone = torchvision.models.resnet34(weights=None)
    state = {f"features.module.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    classifier = torch.nn.Linear(512, num_classes)
    state["classifier.0.weight"] = classifier.weight.detach()
    state["classifier.0.bias"] = classifier.bias.detach()
    torch.save({"state_dict": state}, path)
    return backbone, classifier


def test_loads_dcne_layout_and_matches_the_source_weights(tmp_path):
    path = tmp_path / "dcne_resnet34.pth"
    backbone, classifier = dcne_layout_file(path)
    spec = load_model(f"dcne:{path}")
    model = spec.model
    assert spec.preprocessing == CUB_PREPROCESSING
    assert (CUB_PREPROCESSING.resize, CUB_PREPROCESSING.crop) == (448, 0)
    torch.testing.assert_close(model.conv1.weight, backbone.conv1.weight)
    torch.testing.assert_close(model.layer4[2].bn2.running_var, backbone.layer4[2].bn2.running_var)
    torch.testing.assert_close(model.fc.weight, classifier.weight)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        backbone.fc = classifier
        torch.testing.assert_close(model(x), backbone.eval()(x))
    assert model(x).shape == (1, 200)


def test_layout_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(f"dcne:{tmp_path / 'missing.pth'}")
    plain = tmp_path / "plain.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not in DCNE's ResNet-34 layout"):
        load_model(f"dcne:{plain}")
    wrong = tmp_path / "wrong.pth"
    dcne_layout_file(wrong, num_classes=100)
    with pytest.raises(CheckpointError, match="does not match ResNet-34 with 200 classes"):
        load_model(f"dcne:{wrong}")


def test_key_renaming():
    renamed = dcne_state_to_torchvision({"features.module.layer1.0.conv1.weight": 1, "classifier.0.bias": 2})
    assert renamed == {"layer1.0.conv1.weight": 1, "fc.bias": 2}


def test_a_model_family_is_one_registered_spec_prefix():
    """The loading table: an added prefix is used by load_model; unknown prefixes list the table."""
    from conceptree.models import loading

    def load_tiny(req):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return loading.LoadedModel(req.spec, model.eval(), loading.IMAGENET_PREPROCESSING, ["a", "b"])

    saved = dict(loading.SPEC_LOADERS)
    try:
        loading.register_spec_prefix("tiny", load_tiny)
        spec = loading.load_model("tiny:anything")
        assert spec.class_names == ["a", "b"] and spec.spec == "tiny:anything"
        with pytest.raises(InputError, match=r"unknown model spec 'keras:x'; use default, timm:NAME, .* or tiny:NAME"):
            loading.load_model("keras:x")
        with pytest.raises(InputError, match="without ':'"):
            loading.register_spec_prefix("a:b", load_tiny)
    finally:
        loading.SPEC_LOADERS.clear()
        loading.SPEC_LOADERS.update(saved)
