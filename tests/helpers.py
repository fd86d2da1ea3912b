"""Model builders and zennit reference canonizers shared by the tests."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.layer import Sum

from conceptree.models.cifar_resnet import cifar_resnet, load_cifar_state_dict

from .conftest import shared_path


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so that merging is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        return randomize_batchnorm(getattr(torchvision.models, name)())


def bird_model() -> nn.Module:
    root = shared_path("models", "inat_bird_mobilenetv2")
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=965, pad_type="same", bn_eps=1e-3)
    model.load_state_dict(torch.load(root / "weights.pth", map_location="cpu", weights_only=True))
    return model.eval()


def cifar_model() -> nn.Module:
    path = shared_path("models", "cifar10_resnet", "resnet20-12fca82f.th")
    return load_cifar_state_dict(cifar_resnet(20), torch.load(path, map_location="cpu", weights_only=True)).eval()


def efficientnet_lite0() -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        return randomize_batchnorm(timm.create_model("tf_efficientnet_lite0", pretrained=False))


# --------------------------------------------------------------------------- zennit side
class _TimmResidualCanonizer(AttributeCanonizer):
    """Make timm's inverted-residual ``x + shortcut`` a zennit ``Sum`` (norm rule)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if type(module).__name__ == "InvertedResidual" and module.has_skip:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        return self.canonizer_sum(torch.stack([self.drop_path(x), shortcut], dim=-1))


class _CifarResidualCanonizer(AttributeCanonizer):
    """Make the CIFAR ResNet's ``out + shortcut`` a zennit ``Sum``."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if type(module).__name__ == "BasicBlock" and hasattr(module, "pad"):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.downsample:
            shortcut = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return torch.relu(self.canonizer_sum(torch.stack([out, shortcut], dim=-1)))


def timm_batchnorm_pairs(model: nn.Module) -> list[tuple[list[str], str]]:
    """(conv, BatchNormAct2d) name pairs of a timm MobileNet/EfficientNet for NamedMergeBatchNorm.

    zennit's SequentialMergeBatchNorm pairs *leaf* modules, and timm's BatchNormAct2d is not a
    leaf (it holds its activation), so zennit would silently leave every BatchNorm unmerged.
    """
    partner = {"InvertedResidual": {"bn1": "conv_pw", "bn2": "conv_dw", "bn3": "conv_pwl"},
               "DepthwiseSeparableConv": {"bn1": "conv_dw", "bn2": "conv_pw"}}
    pairs = [(["conv_stem"], "bn1"), (["conv_head"], "bn2")]
    for name, module in model.named_modules():
        for bn, conv in partner.get(type(module).__name__, {}).items():
            pairs.append(([f"{name}.{conv}"], f"{name}.{bn}"))
    return pairs


def zennit_canonizers(kind: str, model: nn.Module | None = None) -> list:
    """zennit canonizers equivalent to conceptree's canonization for each test model."""
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if kind == "resnet":
        return [ResNetCanonizer()]
    if kind == "vgg":
        return [VGGCanonizer()]
    if kind == "timm":
        from zennit.canonizers import NamedMergeBatchNorm

        return [CompositeCanonizer([NamedMergeBatchNorm(timm_batchnorm_pairs(model)), _TimmResidualCanonizer()])]
    if kind == "cifar":
        return [CompositeCanonizer([SequentialMergeBatchNorm(), _CifarResidualCanonizer()])]
    raise ValueError(kind)


def resnet10t_weights(path, seed: int) -> str:
    """A state dict of timm's resnet10t (10 classes, random weights from ``seed``) saved at ``path``."""
    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=10).state_dict(), path)
    return str(path)
