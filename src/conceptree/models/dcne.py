"""DCNE's ResNet-34 CUB checkpoint layout (Zhang et al.'s concept-explanation code base).

The checkpoint is a state dict whose backbone keys read ``features.module.<torchvision
name>`` (a torchvision ResNet-34 saved from ``DataParallel``) and whose 200-way classifier
reads ``classifier.0.weight`` / ``classifier.0.bias``. It is loaded into a plain
torchvision ResNet-34 with a 200-class ``fc``. Inputs are squashed to 448×448 and
normalised with the usual CUB statistics (:data:`CUB_PREPROCESSING`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from .base import Preprocessing

#: 448×448 squash (no crop), CUB-200-2011 channel mean and std.
CUB_PREPROCESSING = Preprocessing(448, 0, (0.4856, 0.4994, 0.4324), (0.2272, 0.2226, 0.2613), "bilinear")


def dcne_state_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename DCNE's keys to torchvision ResNet names (``features.module.X -> X``, ``classifier.0 -> fc``)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("features.module."):
            renamed[key[len("features.module.") :]] = value
        elif key.startswith("classifier.0."):
            renamed["fc." + key[len("classifier.0.") :]] = value
        else:
            renamed[key] = value
    return renamed


def load_dcne_resnet34(path: str, num_classes: int = 200) -> nn.Module:
    """Build a torchvision ResNet-34 and load a DCNE-layout checkpoint into it (``weights_only=True``)."""
    import torchvision

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"checkpoint {path} not found") from None
    except Exception as exc:  # pickle refused by weights_only, or not a torch file
        raise CheckpointError(
            f"cannot load {path} with weights_only=True ({type(exc).__name__}); save it as a plain state dict"
        ) from None
    state = raw.get("state_dict", raw.get("model_state_dict", raw)) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    if not any(k.startswith("features.module.") for k in state):
        raise CheckpointError(f"{path} has no 'features.module.*' keys; it is not in DCNE's ResNet-34 layout")
    model = torchvision.models.resnet34(weights=None, num_classes=num_classes)
    try:
        result = model.load_state_dict(dcne_state_to_torchvision(state), strict=False)
    except RuntimeError as exc:  # shape mismatch
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"{path} does not match ResNet-34 with {num_classes} classes ({detail[:160]})") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match ResNet-34 with {num_classes} classes: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
    return model.eval()
