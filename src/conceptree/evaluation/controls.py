"""Controls that a saliency benchmark must beat: random disks and model randomisation.

Random disks (no model)
-----------------------
``random-disks-N`` is a method with ``N`` binary disk maps per photo: centres uniform over
the photo, radius ``f × bird size`` with ``f`` drawn uniformly from the part radii of the
region rule (:data:`conceptree.datasets.cub_parts.PART_RADIUS`), so the disks are sized
like the part regions they are scored against. Disks are drawn once per photo from a
generator seeded with ``(seed, image id)``; ``random-disks-N`` is the first ``N`` of them,
so best-of-N is monotone in N and each photo gets the same disks in every run.

Model randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018)
-------------------------------------------------------------------------------------
:func:`randomise_model` re-initialises the parameters of every module from a named layer to
the output (cascading from the top) under a fixed seed, with a variance-preserving He
initialisation (convolutions: ``kaiming_normal_(mode="fan_out")``, as torchvision and timm
initialise CNNs; linear layers: normal with std 0.01; biases 0; normalisation layers: weight
1, bias 0, running statistics reset). PyTorch's ``reset_parameters`` is not used: its
uniform fan-in scaling shrinks activations layer by layer, so a re-initialised top of a
MobileNetV2 outputs its bias alone and nothing is left to explain (measured: zero relevance
at every layer). An explanation method that explains the model must lose its part alignment
when the model's knowledge is destroyed.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import torch
from torch import nn

from ..datasets.images import AnnotatedImage
from ..errors import InputError

#: Numbers of random disks reported as ``random-disks-N``.
DISK_COUNTS: tuple[int, ...] = (5, 10, 20, 30, 52, 300)
#: Grid the disk maps are drawn on (they are nearest-resized to the photo like any map).
DISK_GRID: tuple[int, int] = (224, 224)


def image_seed(seed: int, image_id: str) -> np.random.Generator:
    """Generator for one photo: the same for the same ``seed`` and ``image_id``."""
    return np.random.default_rng([int(seed), zlib.crc32(str(image_id).encode())])


def random_disks(
    image: AnnotatedImage,
    n: int,
    seed: int = 0,
    grid: tuple[int, int] = DISK_GRID,
    radius_fractions: tuple[float, ...] | None = None,
) -> np.ndarray:
    """``n`` random disk maps for one photo, ``(n, *grid)`` float32 in {0, 1}.

    Parameters
    ----------
    image : AnnotatedImage
        The photo; ``bird_size_px`` (x and y pixels of ``sqrt`` bbox area) sizes the disks,
        else ``sqrt(width * height)``.
    n : int
        Number of disks (the first ``n`` of the photo's fixed sequence).
    seed : int
        Base seed.
    grid : (h, w)
        Map grid covering the photo.
    radius_fractions : tuple of float, optional
        Radius fractions drawn from (default: the region rule's part radii).
    """
    if n < 0:
        raise InputError(f"number of disks must be >= 0, got {n}")
    if radius_fractions is None:
        from ..datasets.cub_parts import PART_RADIUS

        radius_fractions = tuple(PART_RADIUS.values())
    rng = image_seed(seed, image.image_id)
    size = getattr(image, "bird_size_px", None)
    if size is None or tuple(size) == (1.0, 1.0):
        side = float(np.sqrt(image.width * image.height))
        size = (side, side)
    total = max(n, max(DISK_COUNTS))
    cx = rng.uniform(0, image.width, total)[:n]
    cy = rng.uniform(0, image.height, total)[:n]
    f = rng.choice(np.asarray(radius_fractions, np.float64), total)[:n]
    h, w = grid
    ys = (np.arange(h) + 0.5) * image.height / h
    xs = (np.arange(w) + 0.5) * image.width / w
    dx = (xs[None, None, :] - cx[:, None, None]) / (f[:, None, None] * size[0])
    dy = (ys[None, :, None] - cy[:, None, None]) / (f[:, None, None] * size[1])
    return (dx**2 + dy**2 <= 1.0).astype(np.float32)


def parameterised_modules(model: nn.Module) -> list[str]:
    """Names of the leaf modules that own parameters, in definition order (input to output)."""
    return [
        name for name, m in model.named_modules()
        if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def randomise_model(model: nn.Module, from_layer: str | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameterised module from ``from_layer`` up re-initialised.

    Parameters
    ----------
    model : nn.Module
        The trained classifier (left unchanged).
    from_layer : str, optional
        Name (or name prefix, e.g. ``"blocks.5"``) of the first module to re-initialise;
        it and every parameterised module defined after it are reset (cascading
        randomisation from the output down to it). Default: every module.
    seed : int
        Seed of the re-initialisation.

    Returns
    -------
    nn.Module
        The randomised copy in eval mode; ``randomised_modules`` lists what was reset.
    """
    names = parameterised_modules(model)
    if from_layer is None:
        start = 0
    else:
        hits = [i for i, name in enumerate(names) if name == from_layer or name.startswith(from_layer + ".")]
        if not hits:
            close = ", ".join(names[:3] + ["…"] + names[-3:])
            raise InputError(f"no parameterised module named {from_layer!r} in the model ({close})")
        start = hits[0]
    out = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(int(seed))
    reset = []
    with torch.no_grad():
        for name in names[start:]:
            module = out.get_submodule(name)
            _reinitialise(name, module, generator)
            reset.append(name)
    out.randomised_modules = reset  # type: ignore[attr-defined]
    return out


def _reinitialise(name: str, module: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions, small-normal linear layers, identity normalisations, zero biases."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        fan_out = module.out_channels // module.groups * int(np.prod(module.kernel_size))
        weight.copy_(torch.randn(weight.shape, generator=generator) * float(np.sqrt(2.0 / fan_out)))
    elif isinstance(module, nn.Linear):
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.01)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        if weight is not None:
            weight.fill_(1.0)
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    else:
        raise InputError(f"cannot randomise module {name!r} ({type(module).__name__}); only conv, linear and norm layers")
    if bias is not None:
        bias.zero_()
