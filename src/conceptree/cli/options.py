"""The options several commands share, declared once, and the functions that turn them into the
library's objects (a model, its preprocessing, :class:`~conceptree.concepts.options.ConceptOptions`).

A command lists the aliases it takes (``model: Model = None``); typer reads the option's name,
help and default from the alias, so that every command spells and documents them alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError

MODEL_HELP = ("default | timm:NAME | torchvision:NAME | dcne:PATH | mnist-vit:PATH | pickle:PATH (or --model-config). "
              "Default: the built-in model (evaluate: none, name one).")
CONFIG_HELP = "Model configuration file (.json/.toml): spec, weights, kwargs, preprocessing, labels."
DICTIONARY_HELP = ("A concept dictionary of this model (`conceptree dictionary`): with --hierarchy tree or tree+own its "
                   "model-level tree gives the top level (same node ids on every image); with --hierarchy none its "
                   "flat concise list is the explanation.")
HIERARCHY_HELP = ("How the concepts are arranged: own | consensus (a top level over the photo's own clustering) | tree "
                  "| tree+own (a dictionary's model-level tree) | none (a flat list). Default: the best route measured "
                  "for the situation (docs/results/concise.md).")
INDEX_HELP = ("A reference index of this model (`conceptree index`): each concept's strongest reference images and "
              "suggested names.")

# ---------------------------------------------------------------------- the model
ModelConfig = Annotated[str | None, typer.Option("--model-config", help=CONFIG_HELP)]
Model = Annotated[str | None, typer.Option("--model", help=MODEL_HELP)]
Weights = Annotated[str | None, typer.Option("--weights", help="Local state dict (loaded with weights_only=True).")]
ModelArgs = Annotated[list[str], typer.Option("--model-arg", help="Architecture argument KEY=VALUE (repeatable).")]
Labels = Annotated[str | None, typer.Option("--labels", help="Class names, one per line.")]
TrustCheckpoint = Annotated[bool, typer.Option("--trust-checkpoint/--no-trust-checkpoint",
                                               help="Allow pickle:PATH (unpickling can execute code).")]

# ---------------------------------------------------------------------- its preprocessing
Resize = Annotated[int | None, typer.Option("--resize", help="Resize the shorter side (default: the model's).")]
Crop = Annotated[int | None, typer.Option("--crop", help="Centre crop size; 0 = resize to a square instead.")]
Mean = Annotated[float | None, typer.Option("--mean", help="Normalisation mean (all channels).")]
Std = Annotated[float | None, typer.Option("--std", help="Normalisation std (all channels).")]
Interpolation = Annotated[str | None, typer.Option("--interpolation",
                                                   help="bilinear | bicubic resizing (default: the model's).")]

# ---------------------------------------------------------------------- what an explanation uses
Device = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")]
Index = Annotated[str | None, typer.Option("--index", help=INDEX_HELP)]
References = Annotated[int | None, typer.Option("--references",
                                                help="Reference images per concept (with --index; default 8).")]
Dictionary = Annotated[str | None, typer.Option("--dictionary", help=DICTIONARY_HELP)]
Hierarchy = Annotated[str | None, typer.Option("--hierarchy", help=HIERARCHY_HELP)]
Graph = Annotated[bool | None, typer.Option("--graph/--no-graph", help="Also compute the concept graph: what each "
                                                                     "concept is made of (default: the preset's, on).")]
Stability = Annotated[int | None, typer.Option("--stability", help="Draws of each concept's stability score; 0 = none "
                                                                  "(default: the preset's).")]
Precision = Annotated[str | None, typer.Option("--precision", help="LRP pass in float64 (the same concepts on any "
                                                                  "thread count) | float32 (faster).")]
Workers = Annotated[int | None, typer.Option("--workers", help="Concurrent tasks on a local Ray (default: the CPU count).")]
Executor = Annotated[str, typer.Option("--executor", help="auto (Ray if installed) | ray | local (sequential, "
                                                         "in-process).")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="An existing Ray cluster, e.g. ray://host:10001 "
                                                                     "or auto.")]


def parse_kv(pairs: list[str] | tuple[str, ...]) -> dict:
    """``["KEY=VALUE", ...]`` -> ``{KEY: int | float | str}`` (``--model-arg``)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--model-arg {pair!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """The model options of one command: a configuration file, or a spec with weights, arguments
    and labels (never both: a one-line error).

    Parameters
    ----------
    config : str, optional
        ``--model-config``: the whole model.
    spec, weights, args, labels
        ``--model`` (None: the built-in model), ``--weights``, ``--model-arg`` (``KEY=VALUE``),
        ``--labels``.
    trust_checkpoint : bool
        ``--trust-checkpoint``: allow ``pickle:PATH`` (in-process loading only).
    """

    config: str | None = None
    spec: str | None = None
    weights: str | None = None
    args: tuple[str, ...] = ()
    labels: str | None = None
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.config is not None and (self.spec is not None or self.weights is not None or self.args
                                        or self.labels is not None):
            raise InputError("--model-config holds the model; drop --model/--weights/--model-arg/--labels")

    def source(self):
        """A picklable :class:`~conceptree.tasks.ModelSource` for worker tasks (absolute paths)."""
        from ..tasks import ModelSource

        if self.trust_checkpoint:
            raise InputError("--trust-checkpoint loads a pickle in this process only; save a state dict and pass "
                             "--model SPEC --weights FILE")

        def absolute(path: str | None) -> str | None:
            return str(Path(path).resolve()) if path else None

        return ModelSource(config=absolute(self.config), spec=self.spec or "default", weights=absolute(self.weights),
                           kwargs=parse_kv(self.args), labels=absolute(self.labels))

    def load(self, *, resize: int | None = None, crop: int | None = None, mean: float | None = None,
             std: float | None = None, interpolation: str | None = None):
        """The loaded model (:class:`~conceptree.models.loading.LoadedModel`), with the
        preprocessing flags applied on top of its own preprocessing."""
        if self.config is not None:
            from ..models.config import load_model_config

            spec = load_model_config(self.config).load()
        else:
            from ..models.loading import load_model

            spec = load_model(self.spec or "default", self.weights, parse_kv(self.args), self.labels,
                              self.trust_checkpoint)
        spec.preprocessing = spec.preprocessing.override(resize=resize, crop=crop, mean=mean, std=std,
                                                         interpolation=interpolation)
        return spec


def model_choice(model_config: str | None = None, model: str | None = None, weights: str | None = None,
                 model_arg: list[str] | None = None, labels: str | None = None,
                 trust_checkpoint: bool = False) -> ModelChoice:
    """:class:`ModelChoice` from the aliases above, in their order."""
    return ModelChoice(config=model_config, spec=model, weights=weights, args=tuple(model_arg or ()), labels=labels,
                       trust_checkpoint=trust_checkpoint)


# ---------------------------------------------------------------------- concept options
def concept_options(preset: str, features=None, concept_map=None, linkage=None, k_range=None, lam=None,
                    max_neurons=None, coverage=None, stability=None, k_rule=None, precision=None, graph=None,
                    hierarchy=None):
    """The preset's :class:`ConceptOptions` with the given flags on top (``max_neurons`` 0 = all,
    ``coverage`` 1 = no cut, ``stability`` = draws, 0 = none)."""
    from ..concepts.options import parse_k_range
    from ..concepts.options import preset as get_preset

    options = get_preset(preset)
    if stability is not None:
        if stability < 0:
            raise InputError(f"--stability {stability} must be >= 0 (draws; 0 = no stability scores)")
        options = options.replace(stability=replace(options.stability, resamples=stability))
    overrides = {"features": features, "concept_map": concept_map, "method": linkage,
                 "k_range": parse_k_range(k_range) if k_range else None, "k_rule": k_rule, "precision": precision,
                 "graph": graph, "hierarchy": hierarchy}
    options = options.replace(**{key: v for key, v in overrides.items() if v is not None})
    if max_neurons is not None:
        options = options.replace(max_neurons=None if max_neurons == 0 else max_neurons)
    if coverage is not None:
        options = options.replace(coverage=None if coverage == 1 else coverage)
    if lam is not None:
        options = options.replace(distance=replace(options.distance, lam=lam))
    return options


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
