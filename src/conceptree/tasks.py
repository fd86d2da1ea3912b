"""Task machinery shared by every many-image job (explain-many, the reference index, the
evaluation cache): how a worker builds the model, which images a source names, which executor
runs the tasks, a Ray session, and atomic writes. The runner itself, with its retries and its
failure policy, is :func:`conceptree.jobs.fan_out`.

This module imports nothing of the explainer, so that the index builder (which the explainer
reads) and ``explain_many`` (which runs the explainer) can both stand on it without a circle.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ModelSource:
    """How a worker builds the model (picklable): a model config file or a spec with weights.

    The one "how to load a model" type of every many-image job (explain-many, the index, the
    evaluation cache). A model configuration *file* is parsed by
    :class:`~conceptree.models.config.ModelConfig`; ``ModelSource(config=path)`` points at one.

    Parameters
    ----------
    config : str, optional
        A model configuration file (spec, weights, kwargs, preprocessing, labels); the fields
        below are then unused, except ``preprocessing``.
    spec, weights, kwargs, labels
        As :func:`~conceptree.models.loading.load_model` takes them.
    preprocessing : Preprocessing, optional
        Replaces the model's own preprocessing.
    """

    config: str | None = None
    spec: str = "default"
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)
    labels: str | None = None
    preprocessing: object | None = None  # models.loading.Preprocessing (not imported here: keeps this module light)

    def load(self):
        """The :class:`~conceptree.models.base.LoadedModel`."""
        if self.config is not None:
            from .models.config import load_model_config

            spec = load_model_config(self.config).load()
        else:
            from .models.loading import load_model

            spec = load_model(self.spec, self.weights, self.kwargs, self.labels)
        if self.preprocessing is not None:
            spec.preprocessing = self.preprocessing
        return spec


def collect_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image paths from a folder (its image files, sorted), a glob pattern, a list file (one path
    per line, relative to the file), or a sequence of paths."""
    if not isinstance(source, (str, Path)):
        return [Path(p) for p in source]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        found = [p if p.is_absolute() else (path.parent / p) for p in map(Path, lines)]
    elif any(ch in text for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
    elif path.is_file():
        found = [path]
    else:
        raise InputError(f"{source} is neither a folder, a list file (.txt), a glob pattern nor an image file")
    if not found:
        raise InputError(f"no images found in {source} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def executor_kind(name: str) -> str:
    """``"ray"`` or ``"local"`` for an executor name (``auto``: Ray when it is installed)."""
    if name not in ("auto", "ray", "local"):
        raise InputError(f"unknown executor {name!r}; use auto, ray or local")
    if name == "local":
        return "local"
    try:
        import ray  # noqa: F401
    except ImportError:
        if name == "ray":
            raise InputError("Ray is not installed; pip install 'conceptree[ray]' or use executor='local'") from None
        return "local"
    return "ray"


@contextmanager
def ray_session(address: str | None = None):
    """Ray for the duration of a run: the caller's session if one is running, else a local
    one with this machine's CPUs (or a connection to ``address``), shut down afterwards."""
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
