"""What every model family returns: the preprocessing of its inputs, the loaded model with its class
names (:class:`LoadedModel`), and how a user's target becomes a class index. Below the loaders, so that
:mod:`~conceptree.models.loading` can dispatch to the family modules without a circle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from torch import nn

from ..errors import InputError


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
class LoadedModel:
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

    The one place a user's target becomes a class index (the CLI, :class:`LoadedModel` and the
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
