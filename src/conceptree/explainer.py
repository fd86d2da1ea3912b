"""``ConceptExplainer``: one object per model that explains images with concepts and traces them.

Parameters go to the constructor (keyword-only, validated there), the work on images happens in
methods, results come back as dataclasses. Unlike a scikit-learn estimator, the constructor also
does the one step every call shares: it copies, traces and canonizes the model and opens and checks
the index and dictionary, so that an unsupported model or a mismatched index fails at once, in
one line, and every :meth:`ConceptExplainer.explain` and :meth:`ConceptExplainer.trace` reuses
that engine. Where the concepts come from (the image's own clustering, a dictionary, a model-level
tree) is the explainer's :class:`~conceptree.sources.ConceptSource`.

>>> explainer = ConceptExplainer(model, preprocessing=Preprocessing(), class_names=names)
>>> explanation = explainer.explain("parrot.jpg")          # -> Explanation
>>> explanation.save("parrot")                              # JSON + NPZ + PNG + HTML
>>> comparison = explainer.trace(explanation, ["other.jpg"])  # -> Comparison
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .attribution import Attribution, Composite, CRPEngine
from .attribution.engine import DEFAULT_BATCH_SIZE, NeuronMaps
from .comparison import MISSING_FRACTION, NEW_OVERLAP, trace_concepts
from .compatibility import composite_key
from .concepts import ConceptSet
from .concepts.features import concept_maps, member_maps
from .concepts.flows import concept_flows
from .concepts.layer_maps import smooth_group_maps
from .concepts.options import ConceptOptions, preset
from .dictionary import ConceptDictionary
from .errors import InputError
from .explanation import Explanation, ImageInfo, ModelInfo, Prediction
from .index.references import DEFAULT_REFERENCES, ReferenceFinder
from .index.specificity import SpecificityTest, index_evidence
from .index.store import ConceptIndex
from .models.config import load_model_config
from .models.loading import (
    IMAGENET_PREPROCESSING,
    LoadedModel,
    Preprocessing,
    load_image,
    model_hash,
    preprocess,
    resolve_target,
)
from .sources import concept_source

#: thumbnails of the most relevant members kept per concept (the report shows them).
MEMBER_THUMBNAILS = 4


def _options(options: ConceptOptions | str) -> ConceptOptions:
    if isinstance(options, str):
        return preset(options)
    if not isinstance(options, ConceptOptions):
        raise InputError(f"options must be a ConceptOptions or a preset name, got {type(options).__name__}")
    return options


class ConceptExplainer:
    """Explain a CNN classifier's decisions with concepts (one engine, traced once).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier taking ``(1, C, H, W)`` and returning logits ``(1, num_classes)``; copied
        (left untouched), put in eval mode and canonized once.
    preprocessing : Preprocessing, optional
        How image files and PIL images become the input (default: torchvision's ImageNet
        256/224 with ImageNet statistics). Tensors are used as given.
    class_names : list[str], optional
        Names of the classes (default: their indices).
    options : ConceptOptions or str
        Features, concept map, neurons, distance, linkage and k range, or a preset name
        (``"default"``, ``"paper"``; :mod:`conceptree.concepts.options`).
    composite : Composite, optional
        LRP rules (default :class:`Composite`).
    layers, exclude_layers : list[str], optional
        Conv layers (names or globs) whose channels are the neurons (default: all).
    batch_size : int
        Conditional maps propagated together (default 32).
    progress : bool
        Show progress bars for the conditional maps.
    model_spec : str
        How the model was specified, recorded in each explanation (default ``"custom"``).
    index : ConceptIndex or path, optional
        A reference index of this model, rules, layers and preprocessing
        (:mod:`conceptree.index`; checked here, one-line error otherwise): each explanation
        then lists every concept's strongest reference images, cropped to its region, and
        the names they suggest (:mod:`conceptree.index.references`).
    n_references : int
        References per concept (default 8).
    exact_references : bool
        Draw each reference's region from its own recomputed LRP pass instead of the index's
        stored peaks (exact, one LRP pass per reference image; :mod:`conceptree.index.references`).
    name_test : bool
        Name a concept only when the specificity test passes (what its references show beyond the
        model's own relevance, against layer-matched random groups: :mod:`conceptree.index.specificity`;
        default). False: the earlier suggestion rule of :mod:`conceptree.index.references`, untested.
    dictionary : ConceptDictionary or path, optional
        A concept dictionary of this model, rules, layers and preprocessing
        (:mod:`conceptree.dictionary`; checked here, one-line error otherwise). Each image's
        concepts are then read from it instead of clustered: one LRP pass, each dictionary
        concept's relevance (the sum of its members' ``r_p``) and the concise list
        (:mod:`conceptree.dictionary.concepts`), with the same concept ids on every image.
        Its tree is the model-level hierarchy of the ``"tree"`` routes; with ``hierarchy="none"``
        its flat concise list is the explanation (``options.hierarchy``).

    Notes
    -----
    By default every explanation has a concise **top level** (at most 8 concepts), each opening
    into its sub-concepts and their neurons (``options.hierarchy``, :mod:`conceptree.concepts.hierarchy`):
    the photo's own tree, with or without a dictionary (the route chosen on the dev photos,
    ``docs/results/concise.md``); ``hierarchy="tree"`` / ``"tree+own"`` use the dictionary's
    model-level tree (the same ids on every image), ``"none"`` its flat concise list.

    Examples
    --------
    >>> explainer = ConceptExplainer(torchvision.models.resnet18(weights=...), options="default")
    >>> explanation = explainer.explain("cat.jpg")
    >>> [c.share for c in explanation.concepts.concepts][:3]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocessing: Preprocessing | None = None,
        class_names: Sequence[str] | None = None,
        options: ConceptOptions | str = "default",
        composite: Composite | None = None,
        layers: Sequence[str] | None = None,
        exclude_layers: Sequence[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        model_spec: str = "custom",
        index=None,
        n_references: int = DEFAULT_REFERENCES,
        exact_references: bool = False,
        dictionary=None,
        name_test: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}; "
                             "load a spec with ConceptExplainer.from_spec or from_config")
        if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
            raise InputError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
        if composite is not None and not isinstance(composite, Composite):
            raise InputError(f"composite must be a Composite, got {type(composite).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.options = _options(options)
        self.preprocessing = preprocessing or IMAGENET_PREPROCESSING
        self.batch_size = batch_size
        self.progress = progress
        # float64 LRP: the same relevances, hence the same concepts, on any thread count (options.precision)
        self.engine = CRPEngine(model, composite, layers, exclude_layers,
                                dtype=torch.float64 if self.options.precision == "float64" else None)
        self.model = model
        self.model_info = ModelInfo(model_spec, model_hash(model))
        n_classes = self._count_classes()
        names = list(class_names) if class_names else []
        if names and n_classes is not None and len(names) != n_classes:
            raise InputError(f"class_names has {len(names)} names but the model has {n_classes} classes")
        self.class_names = names
        self.index = self._open_checked(index, ConceptIndex, "index")
        if isinstance(n_references, bool) or not isinstance(n_references, int) or n_references < 1:
            raise InputError(f"n_references must be a positive int, got {n_references!r}")
        self.n_references = n_references
        self.exact_references = bool(exact_references)
        self.name_test = bool(name_test)
        self._specificity: SpecificityTest | None = None  # built on the first explanation with an index
        self.dictionary = self._open_checked(dictionary, ConceptDictionary, "dictionary")
        if self.dictionary is not None and self.index is not None:
            self.dictionary.check_index(self.index)
        # the dictionary's stored references are rows of this index when it was built from it
        self._stored_references = (self.dictionary is not None and self.index is not None
                                   and self.dictionary.params.get("index_fingerprint") == self.index.fingerprint)
        self.source = concept_source(self.options, dictionary=self.dictionary, preprocessing=self.preprocessing,
                                     batch_size=batch_size, progress=progress)

    @property
    def hierarchy(self) -> str:
        """The top-level route of this explainer's explanations (its concept source's)."""
        return self.source.route

    @property
    def model_tree(self):
        """The dictionary's model-level tree on the ``"tree"`` routes, else None (the previous release's
        attribute; the source holds it now)."""
        return getattr(self.source, "model_tree", None)

    def _open_checked(self, value, kind: type, name: str):
        """``value`` (None, a ``kind`` or a folder) opened and checked against this explainer's
        model, rules, layers and preprocessing (an index or a dictionary; one-line errors)."""
        if value is None:
            return None
        if not isinstance(value, kind):
            if not isinstance(value, (str, Path)):
                raise InputError(f"{name} must be a {kind.__name__} or a folder, got {type(value).__name__}")
            value = kind(value)
        value.check(self.model_info.hash, composite_key(self.engine.composite),
                    [layer.name for layer in self.engine.layers], self.preprocessing.to_dict())
        return value

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: LoadedModel, **params) -> ConceptExplainer:
        """From a loaded :class:`~conceptree.models.loading.LoadedModel` (its preprocessing and names)."""
        params.setdefault("preprocessing", spec.preprocessing)
        params.setdefault("class_names", spec.class_names or None)
        params.setdefault("model_spec", spec.spec)
        return cls(spec.model, **params)

    @classmethod
    def from_config(cls, config: str | Path, **params) -> ConceptExplainer:
        """From a model configuration file (:mod:`conceptree.models.config`): spec, weights,
        architecture arguments, preprocessing and labels in one JSON or TOML file."""
        return cls.from_spec(load_model_config(config).load(), **params)

    @classmethod
    def for_explanation(cls, model: nn.Module, explanation: Explanation, **params) -> ConceptExplainer:
        """An explainer with the reference explanation's preprocessing, options, rules and layers."""
        params.setdefault("preprocessing", explanation.preprocessing)
        params.setdefault("options", explanation.options)
        params.setdefault("composite", explanation.composite)
        params.setdefault("layers", explanation.layers)
        params.setdefault("model_spec", explanation.model.spec)
        return cls(model, **params)

    def _count_classes(self) -> int | None:
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        return getattr(self.model, "num_classes", None) or (linears[-1].out_features if linears else None)

    # ------------------------------------------------------------------ inputs
    def prepare(self, image) -> tuple[torch.Tensor, np.ndarray, str | None]:
        """An image file, PIL image or tensor -> ``(x (1, C, H, W), shown (H, W, 3) uint8, file name)``."""
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 4 else image.unsqueeze(0)
            pic = x[0].detach().float().cpu()
            pic = (pic - pic.min()) / (pic.max() - pic.min() + 1e-12)
            return x, (pic.permute(1, 2, 0).numpy() * 255).astype(np.uint8), None
        if isinstance(image, (str, Path)):
            picture, _ = load_image(str(image))
            name = Path(image).name
        elif hasattr(image, "convert"):
            picture, name = image, None
        else:
            raise InputError(f"image must be a file path, a PIL image or a tensor, got {type(image).__name__}")
        x, shown = preprocess(picture.convert("RGB"), self.preprocessing)
        return x, shown, name

    def resolve_target(self, target: int | str | None) -> int | None:
        """None (the predicted class), a class index, or a unique class name (:func:`resolve_target`)."""
        return resolve_target(target, self.class_names)

    def attribute(self, image, target: int | str | None = None) -> Attribution:
        """One LRP pass: relevance of every neuron and the class heatmap (:meth:`CRPEngine.attribute`)."""
        x, _, _ = self.prepare(image)
        return self.engine.attribute(x, self.resolve_target(target))

    # ------------------------------------------------------------------ work
    def explain(
        self,
        image,
        *,
        target: int | str | None = None,
        k: int | None = None,
        keep_neuron_maps: bool = False,
        neurons: NeuronMaps | None = None,
        attribution: Attribution | None = None,
    ) -> Explanation:
        """Explain the decision on one image with concepts.

        Parameters
        ----------
        image : path, PIL image or Tensor
            A photo (preprocessed with ``preprocessing``) or a model input ``(1, C, H, W)``.
        target : int or str, optional
            Class to explain: index or unique class name (default: the predicted class).
        k : int, optional
            A fixed number of concepts instead of the silhouette search (with a dictionary: the
            ``k`` strongest dictionary concepts instead of the concise list).
        keep_neuron_maps : bool
            Keep every clustered neuron's map (float16) in the result and in ``maps.npz``.
        neurons : NeuronMaps, optional
            Neuron features computed earlier for this model, image and target (e.g. an
            evaluation cache), clustered as they are.
        attribution : Attribution, optional
            The LRP pass of this image and target, if the caller already made it (``trace``
            does); otherwise it is computed here.

        Returns
        -------
        Explanation
        """
        x, shown, file_name = self.prepare(image)
        t0 = time.perf_counter()
        if attribution is None:
            attribution = self.engine.attribute(x, self.resolve_target(target))
        t1 = time.perf_counter()
        found = self.source.concepts(self.engine, attribution, x, k=k, neurons=neurons)
        concepts, neurons = found.concepts, found.neurons
        t3 = time.perf_counter()
        maps, top_maps, display, top_display = self._maps(attribution, concepts)
        t_graph = time.perf_counter()
        flows = top_flows = None
        if self.options.graph:
            if concepts.top_level:
                top_flows = concept_flows(self.engine, attribution, concepts.top_level)
            else:
                flows = concept_flows(self.engine, attribution, concepts.concepts)
        t4 = time.perf_counter()
        image_hash = hashlib.sha1(np.ascontiguousarray(shown).tobytes()).hexdigest()
        references = self._references(concepts, image_hash, attribution)
        timings = {"attribution_s": t1 - t0, "neuron_maps_s": found.neuron_maps_s, "clustering_s": found.clustering_s,
                   "concept_maps_s": t_graph - t3, "graph_s": t4 - t_graph, "references_s": time.perf_counter() - t4,
                   "total_s": time.perf_counter() - t0}
        probs = torch.softmax(attribution.logits.double(), 0)
        names = self.class_names or [str(i) for i in range(probs.numel())]
        top = torch.topk(probs, min(5, probs.numel()))
        predictions = [Prediction(int(i), names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
        return Explanation(
            target=Prediction(attribution.target, names[attribution.target], float(probs[attribution.target])),
            top5=predictions,
            concepts=concepts,
            concept_maps=np.asarray(maps, dtype=np.float32),
            heatmap=attribution.heatmap.float().cpu().numpy(),
            image=np.asarray(shown, dtype=np.uint8),
            model=self.model_info,
            image_info=ImageInfo(image_hash, tuple(shown.shape[:2]), file_name),
            preprocessing=None if isinstance(image, torch.Tensor) else self.preprocessing,
            options=self.options.replace(hierarchy=self.source.route),
            composite=self.engine.composite,
            layers=[layer.name for layer in self.engine.layers],
            layer_sizes={name: (int(rel.shape[-2]), int(rel.shape[-1])) for name, rel in attribution.layer_relevance.items()},
            n_neurons=len(neurons),
            member_maps=member_maps(neurons, concepts.concepts, MEMBER_THUMBNAILS),
            timings=timings,
            versions={"conceptree": __version__, "torch": torch.__version__},
            neuron_maps=neurons.maps.astype(np.float16) if keep_neuron_maps else None,
            neuron_names=neurons.names() if keep_neuron_maps else None,
            references=references,
            index_info=self.index.summary() if self.index is not None else None,
            flows=flows,
            top_maps=top_maps,
            display_maps=display,
            top_display_maps=top_display,
            top_flows=top_flows,
        )

    def _maps(self, attribution: Attribution, concepts: ConceptSet):
        """The concept maps (scored and saved) and their smoothed display copies, for the listed
        concepts and the top level: ``(maps (k, H, W), top_maps, display, top_display)``."""
        kind = self.options.concept_map
        maps = concept_maps(self.engine, attribution, concepts.concepts, kind, self.batch_size)
        top_level = concepts.top_level
        top_maps = concept_maps(self.engine, attribution, top_level, kind, self.batch_size) if top_level else None
        size = tuple(attribution.heatmap.shape[-2:])
        display = smooth_group_maps(attribution, [c.groups() for c in concepts.concepts], size)
        top_display = smooth_group_maps(attribution, [c.groups() for c in top_level], size) if top_level else None
        return maps, top_maps, display, top_display

    def _references(self, concepts: ConceptSet, image_hash: str, attribution: Attribution):
        """Each concept's strongest reference images from the index (None without one), this photo left out,
        named where the specificity test passes (``name_test``)."""
        if self.index is None:
            return None
        finder = ReferenceFinder(self.engine, self.preprocessing, self.index, n=self.n_references,
                                 exact=self.exact_references, specificity=self.specificity_test())
        photo = None
        if finder.specificity is not None:
            photo = np.zeros(self.index.n_neurons)
            for layer, (offset, channels) in self.index.columns.items():
                photo[offset : offset + channels] = attribution.channel_relevance(layer).double().cpu().numpy()
        ranked = None
        if self._stored_references and concepts.method == "dictionary":  # ids of the flat dictionary's concepts
            stored = [self.dictionary.concepts[c.concept_id].references for c in concepts.concepts]
            if all(len(top) > self.n_references for top in stored):  # enough to leave this photo out
                ranked = stored  # the dictionary's references: a lookup, ranked by the concept's share there
        return finder.find(concepts.concepts, exclude_row=self.index.row_of_pixels(image_hash), ranked=ranked,
                           photo_relevance=photo)

    def specificity_test(self) -> SpecificityTest | None:
        """The :class:`~conceptree.index.specificity.SpecificityTest` on this explainer's index (None without an
        index or with ``name_test=False``); its cell evidence is read from the index folder, or built there
        once (each index image loaded: 3 s for the 840 CUB photos here)."""
        if self.index is None or not self.name_test:
            return None
        if self._specificity is None:
            loader = ReferenceFinder(self.engine, self.preprocessing, self.index)
            evidence = index_evidence(self.index, lambda row: loader.load(row, model_input=False)[1], self.preprocessing)
            self._specificity = SpecificityTest(self.index, evidence)
        return self._specificity

    def trace(
        self,
        explanation: Explanation | str | Path,
        images: Sequence,
        *,
        target: int | None = None,
        names: Sequence[str] | None = None,
        missing_fraction: float = MISSING_FRACTION,
        new_overlap: float = NEW_OVERLAP,
        explain_new: bool = False,
    ):
        """Follow a reference explanation's concepts (neuron groups) to other images.

        Parameters
        ----------
        explanation : Explanation or path
            The reference (made by an explainer of the same model, rules and layers).
        images : sequence
            Image files, PIL images, or model inputs ``(1, C, H, W)``.
        target : int, optional
            Class to follow (default: the reference's).
        names : sequence of str, optional
            Display names of the images (default: file names).
        missing_fraction, new_overlap : float
            Thresholds of the ``missing`` and ``new`` flags (:mod:`conceptree.comparison`).
        explain_new : bool
            Also explain each image with this explainer to flag its new concepts.

        Returns
        -------
        Comparison
        """
        if not isinstance(explanation, Explanation):
            explanation = Explanation.load(explanation)
        if explanation.model.hash != self.model_info.hash:
            raise InputError("the model differs from the one that made the reference explanation (parameter hash "
                             "mismatch); pass the same model and weights")
        mine = [layer.name for layer in self.engine.layers]
        if explanation.layers != mine or explanation.composite != self.engine.composite:
            raise InputError("the explainer uses other layers or LRP rules than the reference; build it with "
                             "ConceptExplainer.for_explanation(model, reference)")
        return trace_concepts(self, explanation, list(images), target=target, names=None if names is None else list(names),
                              missing_fraction=missing_fraction, new_overlap=new_overlap, explain_new=explain_new)
