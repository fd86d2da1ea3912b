"""Model configuration files: a classifier, its weights, preprocessing and class names in one file.

A JSON or TOML file with the keys below; relative paths are resolved against the file's
folder, so a configuration can sit beside its weights::

    {
      "spec": "timm:mobilenetv2_100",
      "weights": "weights.pth",
      "kwargs": {"num_classes": 965, "pad_type": "same", "bn_eps": 0.001},
      "preprocessing": {"resize": 224, "crop": 0, "mean": 0.502, "std": 0.502, "interpolation": "bicubic"},
      "labels": "labels.txt"
    }

``spec`` is any :func:`~conceptree.models.loading.load_model` spec except ``pickle:`` (a
configuration file never unpickles code); ``preprocessing`` overrides the spec's own
(``mean``/``std``: one number or three).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .base import LoadedModel, Preprocessing
from .loading import load_model

_KEYS = {"spec", "weights", "kwargs", "preprocessing", "labels", "name"}


@dataclass(frozen=True)
class ModelConfig:
    """What a model configuration file holds (paths already resolved).

    Attributes
    ----------
    spec : str
        ``"timm:NAME"``, ``"torchvision:NAME"``, ``"dcne:PATH"`` or ``"default"``.
    weights : str or None
        Local state dict (loaded with ``weights_only=True``).
    kwargs : dict
        Architecture arguments.
    preprocessing : dict
        Overrides of the spec's preprocessing (keys of :class:`Preprocessing`).
    labels : str or None
        Class names, one per line.
    name : str or None
        A display name.
    path : str or None
        The file it was read from.
    """

    spec: str
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    labels: str | None = None
    name: str | None = None
    path: str | None = None

    def load(self) -> LoadedModel:
        """Build the model, load its weights and apply the preprocessing overrides."""
        spec = load_model(self.spec, self.weights, self.kwargs, self.labels)
        if self.preprocessing:
            merged = {**spec.preprocessing.to_dict(), **self.preprocessing}
            spec.preprocessing = Preprocessing.from_dict(merged)
        if self.name:
            spec.spec = f"{self.name} ({self.spec})"
        return spec


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and check a model configuration file (one-line errors naming the file and the fix)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read model config {path} ({exc.strerror or exc}); pass an existing .json or .toml file") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"model config {path} is not valid {kind} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"model config {path} must hold an object with a 'spec' key")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InputError(f"model config {path}: unknown keys {unknown}; use {', '.join(sorted(_KEYS))}")
    spec = data.get("spec")
    if not isinstance(spec, str) or not spec:
        raise InputError(f"model config {path} needs a 'spec' string, e.g. \"timm:resnet50\"")
    if spec.startswith("pickle:"):
        raise InputError(f"model config {path}: pickle: specs are refused in config files; save a state dict and use "
                         "timm:/torchvision: with 'weights'")
    if not isinstance(data.get("kwargs", {}), dict) or not isinstance(data.get("preprocessing", {}), dict):
        raise InputError(f"model config {path}: 'kwargs' and 'preprocessing' must be objects")
    folder = path.resolve().parent

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise InputError(f"model config {path}: paths must be strings, got {value!r}")
        return str((folder / value).resolve()) if not Path(value).is_absolute() else value

    if spec.startswith("dcne:"):
        spec = "dcne:" + str(resolve(spec.partition(":")[2]))
    kwargs = dict(data.get("kwargs", {}))
    if spec == "dlib:face-resnet" and "gallery" in kwargs:
        kwargs["gallery"] = resolve(kwargs["gallery"])
    overrides = data.get("preprocessing", {})
    try:  # keys and values checked now; crop against the spec's own resize again at load()
        base = {"resize": max(int(overrides.get("resize", 1)), int(overrides.get("crop", 0))), "crop": 0}
        Preprocessing.from_dict({**base, **overrides})
    except (TypeError, ValueError) as exc:
        raise InputError(f"model config {path}: bad preprocessing ({exc})") from None
    return ModelConfig(spec=spec, weights=resolve(data.get("weights")), kwargs=kwargs,
                       preprocessing=dict(data.get("preprocessing", {})), labels=resolve(data.get("labels")),
                       name=data.get("name"), path=str(path))
