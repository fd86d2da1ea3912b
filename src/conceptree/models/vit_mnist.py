"""The small pre-norm Vision Transformer of ``researchase/vit-mnist-explorations`` (MIT), written here.

Its checkpoint (``vit_mnist_gpu.pt``, 97.2 % on MNIST) is a lucidrains-style ``ViT(image_size=28,
patch_size=4, channels=1, dim=64, depth=6, heads=4, dim_head=64, mlp_dim=128, num_classes=10)``:
the attention's inner width (4 x 64 = 256) differs from ``dim``, so neither timm's nor torchvision's
ViT class loads it. This module keeps the checkpoint's names (``to_patch_embedding.1``,
``transformer.layers.{i}.{0,1}``, ``mlp_head``) so that a neuron reads as in the authors' code, e.g.
``transformer.layers.3.1.fn.net.0:17`` is hidden unit 17 of block 3's MLP. Two changes, both exact:

- the attention is timm's :class:`~timm.layers.Attention` with ``attn_head_dim=64`` (the same
  ``q, k, v`` split of one ``to_qkv`` layer, ``(h d)`` order, and softmax), so that the engine
  explains it with its attention rule; the checkpoint's ``to_qkv`` / ``to_out.0`` load as ``qkv`` / ``proj``;
- the module takes ``(B, 3, 28, 28)`` like every model conceptree loads, normalised per channel
  with MNIST's ``(0.1307, 0.3081)``, and averages the three channels, which equals the grey
  digit exactly when ``R = G = B``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Preprocessing

#: MNIST's normalisation (the authors' ``Normalize((0.1307,), (0.3081,))``) on each of R, G, B.
MNIST_PREPROCESSING = Preprocessing(resize=28, crop=28, mean=(0.1307,) * 3, std=(0.3081,) * 3, interpolation="bilinear")
MNIST_CLASSES = tuple(str(d) for d in range(10))


class Patchify(nn.Module):
    """``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``: non-overlapping ``patch`` x ``patch`` patches, row-major."""

    def __init__(self, size: int, patch: int, channels: int) -> None:
        super().__init__()
        self.side, self.patch, self.channels = size // patch, patch, channels

    def forward(self, x: Tensor) -> Tensor:
        s, p, c = self.side, self.patch, self.channels
        x = x.reshape(-1, c, s, p, s, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, s * s, p * p * c)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """``Linear -> ReLU -> Dropout -> Linear -> Dropout`` (``net.0`` is the hidden layer)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.ModuleList):
    """One pre-norm block, ``[PreNorm(Attention), PreNorm(FeedForward)]`` with their residual additions: a
    module of its own so that its output, the residual stream, is a layer (``transformer.layers.3``)."""

    def forward(self, x: Tensor) -> Tensor:
        attention, feed_forward = self
        x = attention(x) + x
        return feed_forward(x) + x


class MnistViT(nn.Module):
    """The checkpoint's ViT (module docstring); input ``(B, 3, 28, 28)``, output ``(B, 10)`` logits."""

    def __init__(self, *, image_size: int = 28, patch_size: int = 4, channels: int = 1, dim: int = 64, depth: int = 6,
                 heads: int = 4, dim_head: int = 64, mlp_dim: int = 128, num_classes: int = 10) -> None:
        from timm.layers import Attention

        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (3, image_size, image_size)}  # the engine's example input, as timm's
        patches = (image_size // patch_size) ** 2
        self.to_patch_embedding = nn.Sequential(Patchify(image_size, patch_size, channels),
                                                nn.Linear(patch_size * patch_size * channels, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(
            Block([PreNorm(dim, Attention(dim, num_heads=heads, attn_head_dim=dim_head)), PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(1, keepdim=True)  # R = G = B for a grey digit: its value
        tokens = self.to_patch_embedding(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos_embedding
        for block in self.transformer.layers:
            tokens = block(tokens)
        return self.mlp_head(tokens[:, 0])


def checkpoint_state(state: dict) -> dict:
    """The authors' state dict with their attention names mapped to timm's (``to_qkv`` -> ``qkv``,
    ``to_out.0`` -> ``proj``); every other key is kept."""
    return {key.replace(".fn.to_qkv.", ".fn.qkv.").replace(".fn.to_out.0.", ".fn.proj."): value
            for key, value in state.items()}
