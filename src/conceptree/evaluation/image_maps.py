"""Per-image maps of every evaluated method, computed once and cached on disk (``.npz``)."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attribution.engine import DEFAULT_BATCH_SIZE, CRPEngine
from ..errors import InputError
from .baselines import CAM_METHODS, cam_maps, dcne_maps, top_neurons

CACHE_VERSION = 2


@dataclass
class ImageMaps:
    """Everything the evaluation needs from the model for one image.

    Attributes
    ----------
    target, predicted : int
        Explained class (the true species) and the model's top-1 class.
    probability : float
        Softmax probability of ``target``.
    layers : list[str]
        Conv layers; ``layer_index`` refers to it.
    layer_index, channel, relevance : np.ndarray
        Every neuron of every conv layer, ``(N,)``; ``relevance`` is ``r_p``.
    crp_index : np.ndarray
        ``(n_crp,)`` the most relevant neurons (largest ``r_p``), most relevant first.
    crp_maps : np.ndarray
        ``(n_crp, H, W)`` float16 conditional maps at input resolution.
    dcne_maps : np.ndarray
        ``(10, h, w)`` float16 NMF components of ``crp_maps`` (DCNE's setting), factorised
        on the maps average-pooled to ``dcne_grid`` (112x112: 4x cheaper).
    dcne_ranked_maps : np.ndarray
        ``(30, h, w)`` float16 components of a 30-component NMF, by decreasing weight norm
        (DCNE restricted to its first K maps at equal complexity).
    cam : dict[str, np.ndarray]
        Per CAM method ``(L, H, W)`` float16 maps (one per conv layer).
    """

    target: int
    predicted: int
    probability: float
    layers: list[str]
    layer_index: np.ndarray
    channel: np.ndarray
    relevance: np.ndarray
    crp_index: np.ndarray
    crp_maps: np.ndarray
    dcne_maps: np.ndarray
    dcne_ranked_maps: np.ndarray
    cam: dict[str, np.ndarray]

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed), so an interrupted run leaves no half file."""
        path = Path(path)
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cam", "layers")}
        data.update({f"cam/{k}": v for k, v in self.cam.items()})
        data["layers"] = np.array(self.layers)
        data["version"] = np.array(CACHE_VERSION)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ImageMaps:
        try:
            with np.load(path) as npz:
                version = int(npz["version"])
                if version != CACHE_VERSION:
                    raise InputError(f"{path} is from cache version {version}, this conceptree reads "
                                     f"{CACHE_VERSION}; delete it (or the whole cache folder) to recompute")
                kw = {f.name: npz[f.name] for f in fields(cls) if f.name not in ("cam", "layers")}
                kw["cam"] = {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith("cam/")}
                kw["layers"] = [str(s) for s in npz["layers"]]
        except InputError:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read cached maps {path} ({type(exc).__name__}); delete it to recompute") from None
        for name in ("target", "predicted"):
            kw[name] = int(kw[name])
        kw["probability"] = float(kw["probability"])
        return cls(**kw)


def compute_image_maps(
    engine: CRPEngine,
    model: nn.Module,
    fullgrad_model: nn.Module,
    x: torch.Tensor,
    target: int,
    n_crp: int = 300,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cam_methods: tuple[str, ...] = tuple(CAM_METHODS),
    dcne_ranked: int = 30,
    dcne_grid: tuple[int, int] = (112, 112),
) -> ImageMaps:
    """Run CRP, the CRP baselines and the CAM baselines on one preprocessed image."""
    attribution = engine.attribute(x, target)
    names = [layer.name for layer in engine.layers]
    per_layer = [attribution.channel_relevance(n).double().cpu().numpy() for n in names]
    layer_index = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(per_layer)])
    channel = np.concatenate([np.arange(len(r), dtype=np.int64) for r in per_layer])
    relevance = np.concatenate(per_layer)
    crp_index = top_neurons(relevance, n_crp)
    wanted: dict[str, list[int]] = {}
    for i in crp_index:
        wanted.setdefault(names[layer_index[i]], []).append(int(channel[i]))
    got = engine.neuron_maps(attribution, batch_size, channels=wanted, dtype=np.float32)
    lookup = {(int(li), int(c)): j for j, (li, c) in enumerate(zip(got.layer_index, got.channel))}
    crp_maps = got.maps[[lookup[(int(layer_index[i]), int(channel[i]))] for i in crp_index]]
    cams = {}
    for method in cam_methods:
        cams[method] = cam_maps(method, fullgrad_model if method == "fullgrad" else model, x, target).astype(np.float16)
    probs = torch.softmax(attribution.logits.double(), 0)
    return ImageMaps(
        target=int(target),
        predicted=int(attribution.logits.argmax()),
        probability=float(probs[target]),
        layers=names,
        layer_index=layer_index,
        channel=channel,
        relevance=relevance,
        crp_index=crp_index.astype(np.int64),
        crp_maps=crp_maps.astype(np.float16),
        dcne_maps=dcne_maps(crp_maps, grid=dcne_grid).astype(np.float16),
        dcne_ranked_maps=dcne_maps(crp_maps, n_components=dcne_ranked, ranked=True, grid=dcne_grid).astype(np.float16),
        cam=cams,
    )
