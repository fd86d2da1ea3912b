"""The result of explaining one image: :class:`Explanation`, saved and reloaded in open formats.

Everything needed to reload, report and compare an explanation lives in typed fields: the
model (spec and parameter hash), the preprocessing that turned the photo into the input, the
concept options, the LRP composite and the layers. ``save`` writes ``explanation.json``
(numbers and parameters), ``maps.npz`` (arrays), ``concepts.png`` and ``report.html``;
``load`` reads them back with equal numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .attribution.composites import Composite
from .concepts import ConceptSet
from .concepts.flows import ConceptFlows
from .concepts.options import ConceptOptions
from .errors import InputError
from .index.references import ConceptReferences
from .models.loading import Preprocessing
from .render.notebook import HTMLView, concept_html, explanation_html
from .render.pictures import concept_grid
from .render.report import write_html

#: files written by :meth:`Explanation.save`.
OUTPUT_FILES = ("explanation.json", "maps.npz", "concepts.png", "report.html")
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ModelInfo:
    """Which model made an explanation: its spec (``"timm:NAME"``, ``"custom"``...) and the
    SHA-1 of its parameters and buffers (:func:`conceptree.models.loading.model_hash`)."""

    spec: str
    hash: str


@dataclass(frozen=True)
class ImageInfo:
    """The explained picture: SHA-1 of the displayed pixels, size ``(H, W)``, file name if any."""

    hash: str
    size: tuple[int, int]
    file: str | None = None


@dataclass(frozen=True)
class Prediction:
    """One class of the model's output: index, name, softmax probability."""

    index: int
    name: str
    probability: float


@dataclass
class Explanation:
    """Concepts of one image's decision, with everything needed to reload, report and compare them.

    Attributes
    ----------
    target : Prediction
        The explained class.
    top5 : list[Prediction]
        The five most probable classes.
    concepts : ConceptSet
    concept_maps : np.ndarray
        Map of each concept at input resolution, ``(k, H, W)`` float32 (which map:
        ``options.concept_map``, see :mod:`conceptree.concepts.options`).
    heatmap : np.ndarray
        Class heatmap (all channels), ``(H, W)``.
    image : np.ndarray
        The model input as displayed, ``(H, W, 3)`` uint8.
    model : ModelInfo
    image_info : ImageInfo
    preprocessing : Preprocessing or None
        How a photo becomes the input (None when the caller passed a tensor).
    options : ConceptOptions
        Features, concept map, neurons, distance, linkage, k range.
    composite : Composite
        The LRP rules.
    layers : list[str]
        The conv layers whose channels are the neurons, in model order.
    layer_sizes : dict[str, tuple[int, int]]
        Output resolution ``(h, w)`` of each layer (stages of the network: equal resolution).
    n_neurons : int
        Neurons clustered.
    member_maps : np.ndarray
        The clustered maps of each concept's most relevant members, ``(k, m, h, w)`` float16
        (zero rows where a concept has fewer than ``m`` members).
    timings : dict[str, float]
        Seconds per step.
    versions : dict[str, str]
    neuron_maps, neuron_names : optional
        Every clustered neuron's map as float16 ``(n, h, w)`` and its ``"layer:channel"``
        name, when requested with ``keep_neuron_maps=True``.
    references : list[ConceptReferences], optional
        Per concept (same order as ``concepts.concepts``), its strongest reference images in
        an index, cropped to its region, and suggested names (explainers with an index).
    index_info : dict, optional
        The index used (path, images, neurons, target rule).
    flows : ConceptFlows, optional
        The concept graph: what each concept is made of (:mod:`conceptree.concepts.flows`;
        rows and columns in the order of ``concepts.concepts``), when ``options.graph`` and the
        explanation has no top level.
    top_maps : np.ndarray, optional
        Map of each top-level concept (``concepts.top_level``), ``(t, H, W)`` float32, the same
        kind as ``concept_maps``.
    display_maps, top_display_maps : np.ndarray, optional
        The maps drawn in the report, ``(k, H, W)`` / ``(t, H, W)``: each layer resolution smoothed
        by its cell size before summing (:func:`~conceptree.concepts.layer_maps.smooth_group_maps`).
        ``concept_maps`` and ``top_maps`` are the evaluated maps.
    top_flows : ConceptFlows, optional
        The concept graph between the top-level concepts (rows in the order of
        ``concepts.top_level``), when ``options.graph`` and the explanation has a top level.
    """

    target: Prediction
    top5: list[Prediction]
    concepts: ConceptSet
    concept_maps: np.ndarray
    heatmap: np.ndarray
    image: np.ndarray
    model: ModelInfo
    image_info: ImageInfo
    preprocessing: Preprocessing | None
    options: ConceptOptions
    composite: Composite
    layers: list[str]
    layer_sizes: dict[str, tuple[int, int]]
    n_neurons: int
    member_maps: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    neuron_maps: np.ndarray | None = None
    neuron_names: list[str] | None = None
    references: list[ConceptReferences] | None = None
    index_info: dict | None = None
    flows: ConceptFlows | None = None
    top_maps: np.ndarray | None = None
    display_maps: np.ndarray | None = None
    top_display_maps: np.ndarray | None = None
    top_flows: ConceptFlows | None = None

    @property
    def target_name(self) -> str:
        return self.target.name

    def _repr_html_(self) -> str:
        """The compact inline view a notebook shows (:mod:`conceptree.render.notebook`)."""
        return explanation_html(self)

    def show(self, concept: int | None = None):
        """An inline view: the whole explanation, or concept ``#concept`` in full (its map, region,
        members, what it is made of and feeds, its references). Returns an object notebooks
        display; ``str()`` of it is the HTML."""
        return HTMLView(explanation_html(self) if concept is None else concept_html(self, concept))

    @property
    def probability(self) -> float:
        return self.target.probability

    def stages(self) -> list[list[str]]:
        """The layers grouped into network stages: equal output resolution, largest first (a
        shortcut convolution joins the stage of its resolution wherever it sits in the graph)."""
        by_size: dict[tuple[int, int] | None, list[str]] = {}
        for layer in self.layers:
            size = self.layer_sizes.get(layer)
            by_size.setdefault((int(size[0]), int(size[1])) if size else None, []).append(layer)
        order = sorted(by_size, key=lambda s: -(s[0] * s[1]) if s else 0)
        return [by_size[s] for s in order]

    def summary(self, *, limit: int = 10) -> list[str]:
        """Lines of text the CLI prints: the top level with its sub-concepts nested under each (or,
        without a hierarchy, the ``limit`` largest concepts)."""
        concepts = self.concepts
        names = {r.rank: r.name for r in self.references or []}

        def line(concept, indent: str) -> str:
            rep = concept.representative
            name = f"  ~ {names[concept.rank]}" if names.get(concept.rank) else ""
            cid = f"  D{concept.concept_id}" if concept.concept_id is not None and concepts.method == "dictionary" else ""
            stab = f"  {concept.stability_label} {concept.stability:.2f}" if concept.stability is not None else ""
            return (f"{indent}#{concept.rank:<3} share {100 * concept.share:5.1f}%  {concept.size:5d} neurons  "
                    f"rep {rep.layer}:{rep.channel}{cid}{stab}{name}")

        if not concepts.top_level:
            return [f"{self.target_name} (p={self.probability:.2f}): {concepts.k} concepts",
                    *(line(c, "  ") for c in concepts.concepts[:limit])]
        route = (concepts.hierarchy or {}).get("route", "?")
        out = [f"{self.target_name} (p={self.probability:.2f}): {len(concepts.top_level)} top-level concepts over "
               f"{concepts.k} sub-concepts ({route})"]
        by_rank = {c.rank: c for c in concepts.concepts}
        for top in concepts.top_level:
            node = f"  node {top.concept_id}" if top.concept_id is not None else ""
            out.append(f"  T{top.rank:<3} share {100 * top.share:5.1f}%  {top.size:5d} neurons  "
                       f"{len(top.children)} sub-concepts{node}")
            out.extend(line(by_rank[r], "      ") for r in top.children[:limit] if r in by_rank)
            if len(top.children) > limit:
                out.append(f"      ... {len(top.children) - limit} more (report.html)")
        return out

    def to_dict(self) -> dict:
        """The JSON form (everything except the arrays)."""
        return {
            "format": FORMAT_VERSION,
            "target": asdict(self.target),
            "top5": [asdict(p) for p in self.top5],
            "model": asdict(self.model),
            "image": {**asdict(self.image_info), "size": list(self.image_info.size)},
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "options": self.options.to_dict(),
            "composite": self.composite.to_dict(),
            "layers": self.layers,
            "layer_sizes": {k: list(v) for k, v in self.layer_sizes.items()},
            "n_neurons": self.n_neurons,
            "timings": self.timings,
            "versions": self.versions,
            "concept_set": self.concepts.to_dict(),
            "references": None if self.references is None else {
                "index": self.index_info, "concepts": [r.to_dict() for r in self.references]},
            "concept_flows": None if self.flows is None else self.flows.to_dict(),
            "top_flows": None if self.top_flows is None else self.top_flows.to_dict(),
        }

    def save(self, out: str | Path, *, render: bool = True) -> Path:
        """Write the data (``explanation.json``, ``maps.npz``, reference crops) into ``out`` and,
        with ``render``, the pictures (:meth:`render`: ``concepts.png``, ``report.html``)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "explanation.json").write_text(json.dumps(self.to_dict(), indent=2))
        extra: dict[str, Any] = {}
        if self.neuron_maps is not None:
            extra = {"neuron_maps": self.neuron_maps.astype(np.float16), "neuron_names": np.array(self.neuron_names)}
        for name in ("top_maps", "display_maps", "top_display_maps"):
            if getattr(self, name) is not None:
                extra[name] = np.asarray(getattr(self, name), dtype=np.float32)
        np.savez_compressed(
            out / "maps.npz",
            concept_maps=self.concept_maps.astype(np.float32),
            heatmap=self.heatmap.astype(np.float32),
            image=self.image,
            linkage=self.concepts.linkage,
            active_index=self.concepts.active_index,
            member_maps=self.member_maps.astype(np.float16),
            **extra,
        )
        if self.references is not None:
            _save_crops(self.references, out / "references")
        if render:
            self.render(out)
        return out

    def render(self, out: str | Path) -> Path:
        """Draw ``concepts.png`` and the self-contained ``report.html`` into ``out`` (from the data
        alone: a reloaded explanation renders the same)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
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
            raise InputError(f"cannot read an explanation from {directory} ({exc}); pass the --out folder of explain") from None
        if data.get("format") != FORMAT_VERSION:
            raise InputError(f"{directory} was written by an older conceptree (format {data.get('format', 1)}); "
                             "explain the image again")
        prep = data["preprocessing"]
        image = data["image"]
        return cls(
            target=Prediction(**data["target"]),
            top5=[Prediction(**p) for p in data["top5"]],
            concepts=ConceptSet.from_dict(data["concept_set"], arrays["linkage"], arrays["active_index"]),
            concept_maps=arrays["concept_maps"],
            heatmap=arrays["heatmap"],
            image=arrays["image"],
            model=ModelInfo(**data["model"]),
            image_info=ImageInfo(image["hash"], tuple(image["size"]), image.get("file")),
            preprocessing=Preprocessing.from_dict(prep) if prep else None,
            options=ConceptOptions.from_dict(data["options"]),
            composite=Composite.from_dict(data["composite"]),
            layers=list(data["layers"]),
            layer_sizes={k: tuple(v) for k, v in data["layer_sizes"].items()},
            n_neurons=int(data["n_neurons"]),
            member_maps=arrays["member_maps"],
            timings=data.get("timings", {}),
            versions=data.get("versions", {}),
            neuron_maps=arrays["neuron_maps"] if "neuron_maps" in arrays else None,
            neuron_names=arrays["neuron_names"].tolist() if "neuron_names" in arrays else None,
            references=_load_references(data.get("references"), directory / "references"),
            index_info=(data.get("references") or {}).get("index"),
            flows=ConceptFlows.from_dict(data["concept_flows"]) if data.get("concept_flows") else None,
            top_maps=arrays["top_maps"] if "top_maps" in arrays else None,
            display_maps=arrays["display_maps"] if "display_maps" in arrays else None,
            top_display_maps=arrays["top_display_maps"] if "top_display_maps" in arrays else None,
            top_flows=ConceptFlows.from_dict(data["top_flows"]) if data.get("top_flows") else None,
        )


def crop_file(rank: int, position: int) -> str:
    """File name of reference ``position`` (0-based) of concept ``rank`` in ``references/``."""
    return f"c{rank:02d}-{position + 1}.jpg"


def _save_crops(references: list[ConceptReferences], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for concept in references:
        for j, ref in enumerate(concept.references):
            if ref.crop is not None and ref.crop.size:
                Image.fromarray(ref.crop).save(folder / crop_file(concept.rank, j), quality=90)


def _load_references(data: dict | None, folder: Path) -> list[ConceptReferences] | None:
    if not data:
        return None
    from PIL import Image

    out = []
    for concept in data["concepts"]:
        crops = []
        for j in range(len(concept["references"])):
            path = folder / crop_file(int(concept["rank"]), j)
            crops.append(np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None)
        out.append(ConceptReferences.from_dict(concept, crops))
    return out
