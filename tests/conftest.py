"""Shared fixtures: paths to ../shared (tests that need it skip cleanly when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("CONCEPTREE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a message naming what is missing; under CI
    (``CI=true``), where ../shared is always laid out, a missing path fails instead."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"{path} not found (set CONCEPTREE_SHARED to the shared data folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.manual_seed(0)
    yield


def _load_rgb(path: Path, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    image = Image.open(path).convert("RGB").resize(size, Image.BILINEAR)
    return torch.from_numpy(__import__("numpy").asarray(image).copy()).permute(2, 0, 1).float()


@pytest.fixture(scope="session")
def parrot() -> torch.Tensor:
    """parrot.jpg preprocessed for the iNat bird MobileNetV2: (uint8 - 128) / 128, 224x224."""
    pixels = _load_rgb(shared_path("data", "photos", "parrot.jpg"), (224, 224))
    return ((pixels - 128.0) * 0.0078125).unsqueeze(0)


@pytest.fixture(scope="session")
def cifar_image() -> torch.Tensor:
    """A real CIFAR-10 test photo (a cat), normalised for the CIFAR ResNets."""
    pixels = _load_rgb(shared_path("data", "cifar10_sample", "cat_0000.jpg"), (32, 32)) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((pixels - mean) / std).unsqueeze(0)


@pytest.fixture(scope="session")
def dictionary_setup(tmp_path_factory):
    """Six scikit-image photos, a random-weight resnet10t, its index and a k = 12 dictionary:
    ``(folder, source, index, dictionary)``, built once for the dictionary and hierarchy tests."""
    from PIL import Image
    from skimage import data

    from conceptree.dictionary import DictionaryBuilder
    from conceptree.index import build_index
    from conceptree.runs import ModelSource

    from .helpers import resnet10t_weights

    folder = tmp_path_factory.mktemp("dict_refs")
    for name in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    source = ModelSource(spec="timm:resnet10t", weights=resnet10t_weights(folder / "w.pth", 0), kwargs={"num_classes": 10})
    index = build_index(folder, source, tmp_path_factory.mktemp("dict_index") / "idx", executor="local",
                        batch_size=3, progress=False)
    return folder, source, index, DictionaryBuilder(k=12).fit(index)
