"""``conceptree.comparison``: follow a reference explanation's concepts (neuron groups) to other images.

For every concept of the reference, on each other image: the group's relevance (sum of its
neurons' ``r_p`` there), its share of the image's total, the ratio to the reference, and the
group's map (of the same kind as the reference's concept maps: the members' own-layer maps,
or the sum of their conditional maps). A concept is flagged **missing** when
its ratio falls below ``missing_fraction`` (default 0.5: it lost more than half its
relevance). When the reference has a concept graph (:mod:`conceptree.concepts.flows`), the
flows between the reference's concepts are computed on each image too, and a concept **lost a
part** ``D`` when ``D`` supplied at least ``EDGE_SHARE`` of it on the reference and less than
``missing_fraction`` of that share on the image (the paper's missing concept, one level deeper). With ``explain_new=True`` the other image is explained too, and each of its own
concepts is flagged **new** when, for every reference group, most of its neurons (more than
``1 - new_overlap``) lie outside that group.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .concepts.flows import ConceptFlows, concept_flows
from .concepts.layer_maps import layer_group_maps
from .errors import InputError
from .explanation import Explanation
from .render.comparison import write_comparison_html
from .render.notebook import comparison_html

#: a traced concept is ``missing`` on an image when its relevance there is below this fraction of
#: the reference's (it lost more than half its evidence) ...
MISSING_FRACTION = 0.5
#: ... and an image's own concept is ``new`` when less than this fraction of its members lie in
#: any one reference concept.
NEW_OVERLAP = 0.5

OUTPUT_FILES = ("comparison.json", "comparison_maps.npz", "comparison.html")


@dataclass
class ConceptTrace:
    """One reference concept on one compared image."""

    rank: int
    reference_relevance: float
    relevance: float
    share: float
    ratio: float
    missing: bool


@dataclass
class NewConcept:
    """A concept of the compared image and its best overlap with a reference group."""

    rank: int
    share: float
    size: int
    best_reference_rank: int | None
    best_overlap: float
    new: bool


@dataclass
class ImageComparison:
    """All reference concepts traced on one image."""

    name: str
    target: int
    probability: float
    predicted: int
    total_relevance: float
    concepts: list[ConceptTrace]
    group_maps: np.ndarray  # (k, H, W)
    image: np.ndarray  # (H, W, 3) uint8 as fed to the model
    new_concepts: list[NewConcept] = field(default_factory=list)
    flows: ConceptFlows | None = None
    lost_parts: dict[int, list[int]] = field(default_factory=dict)  # rank -> ranks of the parts it lost

    def to_dict(self) -> dict:
        return {
            "name": self.name, "target": self.target, "probability": self.probability, "predicted": self.predicted,
            "total_relevance": self.total_relevance,
            "concepts": [asdict(c) for c in self.concepts],
            "missing": [c.rank for c in self.concepts if c.missing],
            "new_concepts": [asdict(c) for c in self.new_concepts],
            "concept_flows": None if self.flows is None else self.flows.to_dict(),
            "lost_parts": {str(rank): parts for rank, parts in self.lost_parts.items()},
        }


def lost_parts(reference: ConceptFlows, here: ConceptFlows, ranks: list[int],
               fraction: float = MISSING_FRACTION) -> dict[int, list[int]]:
    """Per concept (by rank), the parts it lost on an image: edges ``>= EDGE_SHARE`` on the
    reference whose share there is below ``fraction`` of the reference's."""
    lost: dict[int, list[int]] = {}
    for c in range(reference.k):
        if not here.defined[c]:  # no positive relevance here: the concept itself is flagged missing
            continue
        parts = [ranks[d] for d, share in reference.made_of(c) if here.flows[c, d] < fraction * share]
        if parts:
            lost[ranks[c]] = parts
    return lost


@dataclass
class Comparison:
    """A reference explanation and its concepts traced on other images."""

    reference: Explanation
    images: list[ImageComparison]
    missing_fraction: float
    new_overlap: float

    def to_dict(self) -> dict:
        return {
            "reference": {
                "target": self.reference.target.index, "target_name": self.reference.target_name,
                "model_hash": self.reference.model.hash,
                "image": {"hash": self.reference.image_info.hash, "file": self.reference.image_info.file},
                "concepts": [{"rank": c.rank, "relevance": c.relevance, "share": c.share, "size": c.size,
                              "representative": asdict(c.representative)} for c in self.reference.concepts.concepts],
            },
            "missing_fraction": self.missing_fraction,
            "new_overlap": self.new_overlap,
            "images": [im.to_dict() for im in self.images],
        }

    def save(self, out: str | Path) -> Path:
        """Write ``comparison.json``, ``comparison_maps.npz`` (group maps, images) and ``comparison.html``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text(json.dumps(self.to_dict(), indent=2))
        arrays: dict[str, Any] = {}
        for i, im in enumerate(self.images):
            arrays[f"group_maps_{i}"] = im.group_maps.astype(np.float32)
            arrays[f"image_{i}"] = im.image
        np.savez_compressed(out / "comparison_maps.npz", **arrays)
        write_comparison_html(self, out / "comparison.html")
        return out

    def _repr_html_(self) -> str:
        """The compact inline view a notebook shows (:mod:`conceptree.render.notebook`)."""
        return comparison_html(self)


def trace_concepts(
    explainer,
    reference: Explanation,
    images: list,
    *,
    target: int | None = None,
    names: list[str] | None = None,
    missing_fraction: float = MISSING_FRACTION,
    new_overlap: float = NEW_OVERLAP,
    explain_new: bool = False,
) -> Comparison:
    """The work of :meth:`ConceptExplainer.trace` (see there and the module docstring).

    Each traced concept's map is the same kind as the reference's concept maps: the group's
    own-layer maps (``layer-group``) or its input-level conditional map (otherwise).
    """
    if not 0 < missing_fraction <= 1 or not 0 < new_overlap <= 1:
        raise InputError("missing_fraction and new_overlap must be in (0, 1]")
    if names is not None and len(names) != len(images):
        raise InputError(f"names has {len(names)} entries for {len(images)} images")
    engine = explainer.engine
    target = reference.target.index if target is None else int(target)
    ref_concepts = reference.concepts.concepts
    groups = [concept.groups() for concept in ref_concepts]
    ref_sets = [{(n.layer, n.channel) for n in c.neurons} for c in ref_concepts]
    results = []
    for i, item in enumerate(images):
        x, shown, file_name = explainer.prepare(item)
        name = names[i] if names else (file_name or f"image {i}")
        if tuple(x.shape[-2:]) != tuple(reference.image.shape[:2]):
            raise InputError(
                f"{name}: input is {tuple(x.shape[-2:])} but the reference was explained at "
                f"{tuple(reference.image.shape[:2])}; preprocess it the same way"
            )
        attribution = engine.attribute(x, target)
        per_layer = {layer.name: attribution.channel_relevance(layer.name).double().cpu().numpy() for layer in engine.layers}
        total = float(sum(r.sum() for r in per_layer.values()))
        traces = []
        for concept, group in zip(ref_concepts, groups):
            rel = float(sum(per_layer[layer][chans].sum() for layer, chans in group.items()))
            ratio = rel / concept.relevance if concept.relevance != 0 else float("nan")
            traces.append(ConceptTrace(concept.rank, concept.relevance, rel, rel / total if total else 0.0, ratio,
                                       bool(ratio < missing_fraction)))
        if reference.options.concept_map == "layer-group":  # the same kind of map as the reference shows
            maps = layer_group_maps(attribution, groups, tuple(x.shape[-2:]))
        else:
            maps = engine.group_maps(attribution, groups).cpu().numpy()
        flows = lost = None
        if reference.flows is not None:
            flows = concept_flows(engine, attribution, ref_concepts)
            lost = lost_parts(reference.flows, flows, [c.rank for c in ref_concepts], missing_fraction)
        probs = torch.softmax(attribution.logits.double(), 0)
        news: list[NewConcept] = []
        if explain_new:
            own = explainer.explain(x, target=target, attribution=attribution)  # reuses this image's LRP pass
            for concept in own.concepts.concepts:
                members = {(n.layer, n.channel) for n in concept.neurons}
                overlaps = [len(members & s) / len(members) for s in ref_sets]
                best = int(np.argmax(overlaps)) if overlaps else None
                best_overlap = overlaps[best] if best is not None else 0.0
                news.append(NewConcept(concept.rank, concept.share, concept.size,
                                       ref_concepts[best].rank if best is not None else None,
                                       best_overlap, bool(best_overlap < new_overlap)))
        results.append(ImageComparison(name, target, float(probs[target]), int(attribution.logits.argmax()), total,
                                       traces, maps, np.asarray(shown, np.uint8), news, flows, lost or {}))
    return Comparison(reference, results, missing_fraction, new_overlap)
