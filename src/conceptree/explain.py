"""``conceptree.explain(model, image)`` and ``conceptree.compare(reference, model, images)``: one call each
(short wrappers of the explainer).

To explain several images of one model, or to trace concepts on other images, build a
:class:`~conceptree.explainer.ConceptExplainer` once instead: this wrapper builds (traces and
canonizes) a new one on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attribution import Composite
from .comparison import MISSING_FRACTION, NEW_OVERLAP, Comparison
from .concepts.features import concept_maps, neuron_features, representative_maps, strongest_neurons
from .concepts.options import ConceptOptions
from .explainer import ConceptExplainer, model_hash
from .explanation import OUTPUT_FILES, Explanation
from .models.loading import load_model

__all__ = [
    "OUTPUT_FILES", "Comparison", "Explanation", "compare", "concept_maps", "explain", "model_hash", "neuron_features",
    "representative_maps", "strongest_neurons",
]


def explain(
    model: nn.Module | str,
    image: torch.Tensor | str | Path | object,
    *,
    target: int | str | None = None,
    options: ConceptOptions | str = "default",
    class_names: Sequence[str] | None = None,
    composite: Composite | None = None,
    layers: Sequence[str] | None = None,
    k: int | None = None,
    progress: bool = False,
) -> Explanation:
    """Explain ``model``'s decision on one image with concepts.

    Parameters
    ----------
    model : torch.nn.Module or str
        A classifier (ImageNet preprocessing for files), or a model spec (``"default"``,
        ``"timm:NAME"``, ``"torchvision:NAME"``, :func:`conceptree.models.loading.load_model`)
        or a model configuration file (``*.json``/``*.toml``), whose preprocessing and class
        names are then used.
    image : path, PIL image or Tensor
        A photo, or a preprocessed input ``(1, C, H, W)``.
    target : int or str, optional
        Class index or unique class name (default: the predicted class).
    options : ConceptOptions or str
        Preset name or options (:mod:`conceptree.concepts.options`).
    class_names, composite, layers, k, progress
        See :class:`ConceptExplainer` and :meth:`ConceptExplainer.explain`.

    Returns
    -------
    Explanation
    """
    params = {"options": options, "composite": composite, "layers": layers, "progress": progress}
    if class_names is not None:
        params["class_names"] = class_names
    if isinstance(model, str):
        if model.endswith((".json", ".toml")):
            explainer = ConceptExplainer.from_config(model, **params)
        else:
            explainer = ConceptExplainer.from_spec(load_model(model), **params)
    else:
        explainer = ConceptExplainer(model, **params)
    return explainer.explain(image, target=target, k=k)


def compare(
    reference: Explanation | str | Path,
    model: nn.Module,
    images: list,
    target: int | None = None,
    preprocessing=None,
    names: list[str] | None = None,
    missing_fraction: float = MISSING_FRACTION,
    new_overlap: float = NEW_OVERLAP,
    explain_new: bool = False,
    max_neurons: int | None = None,
    progress: bool = False,
) -> Comparison:
    """Trace the reference's concepts on other images (convenience wrapper).

    Builds :meth:`ConceptExplainer.for_explanation` (the reference's preprocessing, options,
    rules and layers; ``preprocessing`` and ``max_neurons`` override) and calls its
    :meth:`~ConceptExplainer.trace`; to trace many times, keep an explainer instead.
    """
    if not isinstance(reference, Explanation):
        reference = Explanation.load(reference)
    params: dict[str, Any] = {"progress": progress}
    if preprocessing is not None:
        params["preprocessing"] = preprocessing
    if max_neurons is not None:
        params["options"] = reference.options.replace(max_neurons=max_neurons)
    explainer = ConceptExplainer.for_explanation(model, reference, **params)
    return explainer.trace(reference, images, target=target, names=names, missing_fraction=missing_fraction,
                           new_overlap=new_overlap, explain_new=explain_new)
