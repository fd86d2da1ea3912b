"""``conceptree.explain``: CRP engine + concept clustering for one image, saved in open formats."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .attribution import Composite, CRPEngine
from .attribution.engine import NeuronMaps
from .concepts import ConceptSet, DistanceConfig, find_concepts
from .concepts.concepts import Concept
from .concepts.layer_maps import layer_group_maps, layer_neuron_maps
from .concepts.options import CONCEPT_MAPS, FEATURES, PRESETS
from .errors import InputError


@dataclass
class Explanation:
    """Concepts of one image's decision, with everything needed to reload and report them.

    Attributes
    ----------
    target, target_name, probability : int, str, float
        Explained class.
    top5 : list[dict]
        ``{"index", "name", "probability"}`` of the five most probable classes.
    concepts : ConceptSet
    concept_maps : np.ndarray
        Map of each concept at input resolution, ``(k, H, W)`` (which map:
        ``meta["concept_map"]``, see :mod:`conceptree.concepts.options`).
    heatmap : np.ndarray
        Class heatmap (all channels), ``(H, W)``.
    image : np.ndarray
        The model input as displayed, ``(H, W, 3)`` uint8.
    meta : dict
        Model spec, hashes, composite, parameters, versions, timings.
    neuron_maps, neuron_names : optional
        Every neuron's (pooled) conditional map as float16 ``(n, h, w)`` and its
        ``"layer:channel"`` name, when requested with ``keep_neuron_maps=True``.
    """

    target: int
    target_name: str
    probability: float
    top5: list[dict]
    concepts: ConceptSet
    concept_maps: np.ndarray
    heatmap: np.ndarray
    image: np.ndarray
    meta: dict = field(default_factory=dict)
    neuron_maps: np.ndarray | None = None
    neuron_names: list[str] | None = None

    def to_dict(self) -> dict:
        return {
            "target": {"index": self.target, "name": self.target_name, "probability": self.probability},
            "top5": self.top5,
            **self.meta,
            **self.concepts.to_dict(),
        }

    def save(self, out: str | Path) -> Path:
        """Write ``explanation.json``, ``maps.npz``, ``concepts.png`` and ``report.html`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "explanation.json").write_text(json.dumps(self.to_dict(), indent=2))
        np.savez_compressed(
            out / "maps.npz",
            concept_maps=self.concept_maps.astype(np.float32),
            heatmap=self.heatmap.astype(np.float32),
            image=self.image,
            linkage=self.concepts.linkage,
            active_index=self.concepts.active_index,
            **(
                {"neuron_maps": self.neuron_maps.astype(np.float16), "neuron_names": np.array(self.neuron_names)}
                if self.neuron_maps is not None else {}
            ),
        )
        from .report import concept_grid, write_html

        concept_grid(self, out / "concepts.png")
        write_html(self, out / "report.html")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Explanation:
        """Reload what :meth:`save` wrote (numbers equal after reload)."""
        directory = Path(directory)
        try:
            data = json.loads((directory / "explanation.json").read_text())
            arrays = np.load(directory / "maps.npz")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read an explanation from {directory} ({exc}); pass the --out folder of explain") from exc
        concepts = ConceptSet.from_dict(data, arrays["linkage"], arrays["active_index"])
        meta = {k: v for k, v in data.items() if k not in _CONCEPT_KEYS | {"target", "top5"}}
        return cls(
            target=int(data["target"]["index"]),
            target_name=data["target"]["name"],
            probability=float(data["target"]["probability"]),
            top5=data["top5"],
            concepts=concepts,
            concept_maps=arrays["concept_maps"],
            heatmap=arrays["heatmap"],
            image=arrays["image"],
            meta=meta,
            neuron_maps=arrays["neuron_maps"] if "neuron_maps" in arrays else None,
            neuron_names=arrays["neuron_names"].tolist() if "neuron_names" in arrays else None,
        )


#: files written by :meth:`Explanation.save`.
OUTPUT_FILES = ("explanation.json", "maps.npz", "concepts.png", "report.html")

_CONCEPT_KEYS = {"k", "method", "k_range", "distance", "silhouette_by_k", "concepts", "inactive", "timings"}


def explain(
    model: nn.Module | str,
    x: torch.Tensor | str | Path | object,
    target: int | str | None = None,
    class_names: list[str] | None = None,
    image: np.ndarray | None = None,
    layers: list[str] | None = None,
    exclude_layers: list[str] | None = None,
    composite: Composite | None = None,
    distance: DistanceConfig | None = None,
    method: str = PRESETS["default"].method,
    k_range: tuple[int, int] = PRESETS["default"].k_range,
    k: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    model_spec: str = "custom",
    keep_neuron_maps: bool = False,
    max_neurons: int | None = PRESETS["default"].max_neurons,
    neurons: NeuronMaps | None = None,
    features: str = PRESETS["default"].features,
    concept_map: str = PRESETS["default"].concept_map,
) -> Explanation:
    """Explain ``model``'s decision on one image with concepts.

    Parameters
    ----------
    model : torch.nn.Module or str
        Classifier returning logits, or a model spec (``"default"``, ``"timm:NAME"``,
        ``"torchvision:NAME"``; see :func:`conceptree.models.loading.load_model`), whose
        preprocessing and class names are then used.
    x : Tensor, path or PIL image
        Preprocessed image ``(1, C, H, W)``, or an image file / PIL image, preprocessed with
        the spec's preprocessing (ImageNet-style 256/224 for a plain module).
    target : int or str, optional
        Class to explain: index, or a unique class name (default: predicted).
    class_names : list[str], optional
        Names of the classes (for the report).
    image : np.ndarray, optional
        ``(H, W, 3)`` uint8 picture shown under overlays (default: de-normalised ``x``).
    layers, exclude_layers : list[str], optional
        Conv layers (globs) whose channels are the neurons.
    composite, distance, method, k_range, k
        LRP rules and clustering parameters (see :class:`Composite`, :class:`DistanceConfig`,
        :func:`find_concepts`).
    keep_neuron_maps : bool
        Keep every neuron's pooled map (float16) in the result and in ``maps.npz``.
    max_neurons : int, optional
        Cluster only the neurons with the largest ``|r_p|`` (None: every neuron). With
        ``features="input"`` maps dominate the cost (~8 min for the 17,056 neurons of a
        MobileNetV2 on 2 CPU cores; 2,000 neurons take ~50 s).
    neurons : NeuronMaps, optional
        Neuron features computed earlier for this model, image and target (e.g. an
        evaluation cache); they are clustered as they are instead of being recomputed.
    features : {"layer", "input"}
        What is clustered: own-layer relevance maps (one LRP pass) or input-level CRP maps
        (the paper); see :mod:`conceptree.concepts.options`.
    concept_map : {"layer-group", "group", "representative"}
        The map each concept shows.
    """
    distance = distance or DistanceConfig()
    if features not in FEATURES:
        raise InputError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")
    if concept_map not in CONCEPT_MAPS:
        raise InputError(f"unknown concept map {concept_map!r}; use one of {', '.join(CONCEPT_MAPS)}")
    if isinstance(model, str) or not isinstance(x, torch.Tensor) or isinstance(target, str):
        from .models.loading import IMAGENET_PREPROCESSING, ModelSpec, load_image, load_model, preprocess

        if isinstance(model, str):
            spec = load_model(model)
            model_spec = spec.spec
        else:
            spec = ModelSpec(model_spec, model, IMAGENET_PREPROCESSING, class_names or [])
        model = spec.model
        class_names = class_names or spec.class_names or None
        if not isinstance(x, torch.Tensor):
            picture = x if hasattr(x, "convert") else load_image(str(x))[0]
            x, image = preprocess(picture.convert("RGB"), spec.preprocessing)
        if isinstance(target, str):
            spec.class_names = class_names or []
            target = spec.resolve_target(target)
    timings = {}
    t0 = time.perf_counter()
    engine = CRPEngine(model, composite, layers, exclude_layers)
    attribution = engine.attribute(x, target)
    t1 = time.perf_counter()
    if neurons is None:
        neurons = neuron_features(engine, attribution, features, max_neurons, distance.map_size, batch_size, progress)
    elif not set(neurons.layers) <= {layer.name for layer in engine.layers}:
        raise InputError("the precomputed neurons come from other layers than the engine's; recompute them")
    t2 = time.perf_counter()
    concepts = find_concepts(neurons, distance, method, k_range, k)
    t3 = time.perf_counter()
    maps = concept_maps(engine, attribution, concepts.concepts, concept_map, batch_size)
    timings.update(attribution_s=t1 - t0, neuron_maps_s=t2 - t1, clustering_s=t3 - t2, total_s=time.perf_counter() - t0)
    probs = torch.softmax(attribution.logits.double(), 0)
    names = class_names or [str(i) for i in range(probs.numel())]
    top = torch.topk(probs, min(5, probs.numel()))
    if image is None:
        pic = x[0].detach().float()
        pic = (pic - pic.min()) / (pic.max() - pic.min() + 1e-12)
        image = (pic.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    meta = {
        "model": {"spec": model_spec, "hash": model_hash(model)},
        "image": {"hash": hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), "size": list(image.shape[:2])},
        "composite": engine.composite.to_dict(),
        "layers": [layer.name for layer in engine.layers],
        "n_neurons": len(neurons),
        "max_neurons": max_neurons,
        "features": features,
        "concept_map": concept_map,
        "versions": {"conceptree": __version__, "torch": torch.__version__},
        "run_timings": timings,
    }
    return Explanation(
        target=attribution.target,
        target_name=names[attribution.target],
        probability=float(probs[attribution.target]),
        top5=[{"index": int(i), "name": names[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices)],
        concepts=concepts,
        concept_maps=maps,
        heatmap=attribution.heatmap.cpu().numpy(),
        image=np.asarray(image, dtype=np.uint8),
        meta=meta,
        neuron_maps=neurons.maps.astype(np.float16) if keep_neuron_maps else None,
        neuron_names=neurons.names() if keep_neuron_maps else None,
    )


def strongest_neurons(engine: CRPEngine, attribution, n: int) -> dict[str, list[int]]:
    """The ``n`` neurons with the largest ``|r_p|`` over the engine's layers (ties: model order).

    Returns a ``layer -> channels`` mapping for :meth:`CRPEngine.neuron_maps`.
    """
    if n < 1:
        raise InputError(f"max_neurons must be >= 1, got {n}")
    names = [layer.name for layer in engine.layers]
    per_layer = [attribution.channel_relevance(name).abs().double().cpu().numpy() for name in names]
    magnitude = np.concatenate(per_layer)
    layer_of = np.concatenate([np.full(len(r), i) for i, r in enumerate(per_layer)])
    channel_of = np.concatenate([np.arange(len(r)) for r in per_layer])
    chosen = np.lexsort((np.arange(magnitude.size), -magnitude))[:n]
    wanted: dict[str, list[int]] = {}
    for i in sorted(chosen):
        wanted.setdefault(names[layer_of[i]], []).append(int(channel_of[i]))
    return wanted


def neuron_features(
    engine: CRPEngine,
    attribution,
    features: str = PRESETS["default"].features,
    max_neurons: int | None = PRESETS["default"].max_neurons,
    map_size: tuple[int, int] | None = (56, 56),
    batch_size: int = 32,
    progress: bool = False,
) -> NeuronMaps:
    """The neurons to cluster and their maps: own-layer (``"layer"``) or input-level (``"input"``).

    Returns :class:`NeuronMaps` with ``maps`` ``(n, *map_size)``; ``max_neurons`` keeps the
    neurons with the largest ``|r_p|``.
    """
    channels = strongest_neurons(engine, attribution, max_neurons) if max_neurons is not None else None
    if features == "layer":
        return layer_neuron_maps(attribution, [layer.name for layer in engine.layers], channels, map_size or (56, 56))
    if features == "input":
        return engine.neuron_maps(attribution, batch_size, channels, map_size=map_size, progress=progress)
    raise InputError(f"unknown features {features!r}; use one of {', '.join(FEATURES)}")


def concept_maps(
    engine: CRPEngine,
    attribution,
    concepts: list[Concept],
    kind: str = PRESETS["default"].concept_map,
    batch_size: int = 32,
) -> np.ndarray:
    """Each concept's map at input resolution, ``(k, H, W)`` float32.

    ``kind``: ``"layer-group"`` (members' own-layer maps summed in input geometry),
    ``"group"`` (the group's input-level conditional map) or ``"representative"`` (the most
    relevant member's conditional map); see :mod:`conceptree.concepts.options`.
    """
    size = tuple(attribution.forward.input.shape[-2:])
    if not concepts:
        return np.zeros((0, *size), np.float32)
    if kind == "layer-group":
        return layer_group_maps(attribution, [c.groups() for c in concepts], size)
    if kind == "group":
        return engine.group_maps(attribution, [c.groups() for c in concepts], batch_size).cpu().numpy().astype(np.float32)
    if kind == "representative":
        return representative_maps(engine, attribution, concepts, batch_size)
    raise InputError(f"unknown concept map {kind!r}; use one of {', '.join(CONCEPT_MAPS)}")


def representative_maps(engine: CRPEngine, attribution, concepts: ConceptSet | list[Concept], batch_size: int = 32) -> np.ndarray:
    """Full-resolution conditional maps of the concepts' representatives, ``(k, H, W)``."""
    concepts = concepts.concepts if isinstance(concepts, ConceptSet) else concepts
    if not concepts:
        return np.zeros((0, *attribution.forward.input.shape[-2:]), np.float32)
    wanted: dict[str, list[int]] = {}
    for concept in concepts:
        chans = wanted.setdefault(concept.representative.layer, [])
        if concept.representative.channel not in chans:
            chans.append(concept.representative.channel)
    full = engine.neuron_maps(attribution, batch_size, channels=wanted)
    lookup = {name: i for i, name in enumerate(full.names())}
    return np.stack([full.maps[lookup[f"{c.representative.layer}:{c.representative.channel}"]] for c in concepts])


def model_hash(model: nn.Module) -> str:
    """SHA-1 of the model's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
