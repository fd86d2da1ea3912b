"""Per-image maps of every evaluated method, computed once and cached on disk (``.npz``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attribution.engine import CRPEngine, NeuronMaps
from ..explain import strongest_neurons
from .baselines import CAM_METHODS, cam_maps, dcne_maps, top_neurons

CACHE_VERSION = 1


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
    pool_index : np.ndarray
        ``(M,)`` indices (into the arrays above) of the neurons with the largest ``|r_p|``,
        whose maps were computed (model order, as :func:`conceptree.explain.explain` with
        ``max_neurons=M`` clusters them).
    pool_maps : np.ndarray
        ``(M, h, w)`` float16 conditional maps of those neurons, average-pooled.
    pool_map_sums : np.ndarray
        ``(M,)`` ``sum(y_p)`` at full resolution.
    crp_index : np.ndarray
        ``(n_crp,)`` the most relevant neurons (largest ``r_p``), most relevant first.
    crp_maps : np.ndarray
        ``(n_crp, H, W)`` float16 conditional maps at input resolution.
    dcne_maps : np.ndarray
        ``(10, H, W)`` float16 NMF components of ``crp_maps``.
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
    pool_index: np.ndarray
    pool_maps: np.ndarray
    pool_map_sums: np.ndarray
    crp_index: np.ndarray
    crp_maps: np.ndarray
    dcne_maps: np.ndarray
    cam: dict[str, np.ndarray]

    def pool_neurons(self) -> NeuronMaps:
        """The pooled neurons as :class:`NeuronMaps` (input of :func:`find_concepts`)."""
        i = self.pool_index
        return NeuronMaps(
            list(self.layers), self.layer_index[i], self.channel[i], self.relevance[i],
            self.pool_maps.astype(np.float32), self.pool_map_sums,
        )

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
        with np.load(path) as npz:
            if int(npz["version"]) != CACHE_VERSION:
                raise ValueError(f"{path} is from cache version {int(npz['version'])}; delete it to recompute")
            kw = {f.name: npz[f.name] for f in fields(cls) if f.name not in ("cam", "layers")}
            kw["cam"] = {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith("cam/")}
            kw["layers"] = [str(s) for s in npz["layers"]]
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
    pool_neurons: int = 2000,
    n_crp: int = 300,
    pool_size: tuple[int, int] = (56, 56),
    batch_size: int = 32,
    cam_methods: tuple[str, ...] = tuple(CAM_METHODS),
) -> ImageMaps:
    """Run CRP, the CRP baselines and the CAM baselines on one preprocessed image.

    ``pool_neurons`` bounds the clustering input to the neurons with the largest ``|r_p|``
    (all active neurons cost ~8 min per photo on 2 CPU cores; see docs/evaluation.md).
    """
    attribution = engine.attribute(x, target)
    names = [layer.name for layer in engine.layers]
    per_layer = [attribution.channel_relevance(n).double().cpu().numpy() for n in names]
    layer_index = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(per_layer)])
    channel = np.concatenate([np.arange(len(r), dtype=np.int64) for r in per_layer])
    relevance = np.concatenate(per_layer)

    def maps_of(index: np.ndarray, size: tuple[int, int] | None):
        wanted: dict[str, list[int]] = {}
        for i in index:
            wanted.setdefault(names[layer_index[i]], []).append(int(channel[i]))
        got = engine.neuron_maps(attribution, batch_size, channels=wanted, map_size=size, dtype=np.float32)
        lookup = {(int(li), int(c)): j for j, (li, c) in enumerate(zip(got.layer_index, got.channel))}
        order = np.array([lookup[(int(layer_index[i]), int(channel[i]))] for i in index], dtype=np.int64)
        return got.maps[order], got.map_sums[order]

    # The CRP-300 neurons are computed once, at full resolution; those that are also in the
    # clustering pool are pooled from them instead of being propagated a second time.
    crp_index = top_neurons(relevance, n_crp)
    crp_maps, crp_sums = maps_of(crp_index, None)
    offsets = np.cumsum([0] + [len(r) for r in per_layer])
    strongest = strongest_neurons(engine, attribution, pool_neurons)
    pool_index = np.sort(np.concatenate([offsets[names.index(layer)] + np.asarray(chans) for layer, chans in strongest.items()]))
    height, width = x.shape[-2:]
    size = (min(pool_size[0], height), min(pool_size[1], width))
    row_in_crp = {int(i): j for j, i in enumerate(crp_index)}
    shared = np.array([int(i) in row_in_crp for i in pool_index], dtype=bool)
    pool_maps = np.empty((len(pool_index), *size), np.float32)
    pool_sums = np.empty(len(pool_index), np.float64)
    rows = [row_in_crp[int(i)] for i in pool_index[shared]]
    if rows:
        full = torch.from_numpy(crp_maps[rows]).unsqueeze(1)
        pool_maps[shared] = F.adaptive_avg_pool2d(full, size).squeeze(1).numpy()
        pool_sums[shared] = crp_sums[rows]
    pool_maps[~shared], pool_sums[~shared] = maps_of(pool_index[~shared], size)
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
        pool_index=pool_index.astype(np.int64),
        pool_maps=pool_maps.astype(np.float16),
        pool_map_sums=pool_sums,
        crp_index=crp_index.astype(np.int64),
        crp_maps=crp_maps.astype(np.float16),
        dcne_maps=dcne_maps(crp_maps).astype(np.float16),
        cam=cams,
    )
