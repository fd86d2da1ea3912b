"""The small FashionMNIST CNN of zennit-crp's test-suite (architecture from ../shared/README.md)."""

from __future__ import annotations

import torch
from torch import nn
from zennit.layer import Sum


class StackSum(nn.Module):
    """Stack two tensors along a new last axis and sum it (zennit's canonical residual sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.sum = Sum(dim=-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.sum(torch.stack([a, b], dim=-1))


class FashionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.parallel = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, bias=False), nn.BatchNorm2d(16))
        self.conv1 = nn.Conv2d(1, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.add = StackSum()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(576, 120)
        self.relu1 = nn.ReLU()
        self.linear2 = nn.Linear(120, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.parallel(x)
        out = self.relu(self.add(identity, out))
        out = self.flatten(self.pool(out))
        return self.linear2(self.relu1(self.linear1(out)))
