"""Explain many images: one task per image, on Ray (local or a cluster) or in-process.

Each image gets its own explanation folder under ``out`` (named by its position and file
name), written atomically: the explanation is saved into a hidden temporary folder that is
renamed into place when complete, so a killed worker or an interrupted run leaves no
half-written folder. A rerun skips the images whose folder exists (resumable). A user error on
one image (unreadable file, wrong size: a :class:`ConceptreeError`) is recorded in the index
and the run goes on; any other exception, or a killed worker, is retried (``max_retries`` times,
by :func:`~conceptree.jobs.fan_out` with ``on_failure="record"``) and recorded if it persists;
a retried attempt first removes the temporary folder of the attempt it replaces (a worker killed
mid-save leaves one). ``index.json`` and ``index.html`` list every image with its status.

Without Ray installed (or with ``executor="local"``) the same function runs sequentially in
this process. The per-image work is deterministic (no random state but the stability draws'
fixed seed, nothing shared), and with the default ``precision="float64"`` it does not depend on
the torch or BLAS thread count either (:mod:`conceptree.concepts.distance`; tested with 1 and 2
threads), so Ray and the sequential run write the same concepts. With ``precision="float32"``
the sums round differently per thread count (up to 1e-4 of a neuron's relevance after LRP's
divisions) and Ward's merges, which meet many near-ties, can cut different concepts (measured
before float64: k 29 vs 27 on one of three photos with 1 vs 2 threads).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..concepts.options import ConceptOptions
from ..errors import ConceptreeError
from ..jobs import Progress, fan_out
from ..tasks import IMAGE_SUFFIXES, ModelSource, collect_images, executor_kind, ray_session

__all__ = ["IMAGE_SUFFIXES", "ImageRecord", "ModelSource", "RunResult", "collect_images", "explain_many",
           "ray_session", "write_index"]

INDEX_FILES = ("index.json", "index.html")


@dataclass
class ImageRecord:
    """One image of a run: where its explanation is, or why there is none."""

    index: int
    image: str
    folder: str
    status: str  # "ok" | "failed" | "skipped" (done by an earlier run)
    error: str | None = None
    target: str | None = None
    probability: float | None = None
    k: int | None = None
    largest_share: float | None = None
    seconds: float | None = None
    attempts: int = 1


def folder_name(index: int, image: Path) -> str:
    """``0007-parrot`` (position keeps names unique when files share a name)."""
    return f"{index:04d}-{image.stem}"


def explain_to_folder(source: ModelSource, options: ConceptOptions, image: str, out: str, name: str, *,
                      files: dict[str, str] | None = None) -> dict:
    """Explain one image and move the complete explanation to ``out/name`` atomically.

    ``files``: the explainer's ``index`` and ``dictionary`` folders, when given.

    Returns a plain record (``ImageRecord`` fields). A :class:`ConceptreeError` (the image's or
    the user's problem) becomes a ``failed`` record; other exceptions propagate, so that the
    executor retries them.
    """
    from ..explainer import ConceptExplainer

    t0 = time.perf_counter()
    final = Path(out) / name
    for stale in Path(out).glob(f".tmp-{name}-*"):  # an earlier attempt at this image was killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    try:
        explainer = ConceptExplainer.from_spec(source.load(), options=options, **(files or {}))
        explanation = explainer.explain(image)
    except ConceptreeError as exc:
        return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - t0}
    tmp = Path(out) / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    try:
        explanation.save(tmp)
        os.replace(tmp, final)  # atomic on one filesystem: the folder appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"status": "ok", "target": explanation.target_name, "probability": explanation.probability,
            "k": explanation.concepts.k, "largest_share": max((c.share for c in explanation.concepts.concepts), default=0.0),
            "seconds": time.perf_counter() - t0}


@dataclass(frozen=True, kw_only=True)
class ExplainImage:
    """One image's task for :func:`~conceptree.jobs.fan_out` (picklable): :func:`explain_to_folder`.

    Parameters
    ----------
    source, options, image, out, name, files
        As :func:`explain_to_folder` takes them; ``name`` (the image's folder) is the task's id.
    """

    source: ModelSource
    options: ConceptOptions
    image: str
    out: str
    name: str
    files: dict[str, str] | None = None

    @property
    def task_id(self) -> str:
        return self.name

    def __call__(self) -> dict:
        return explain_to_folder(self.source, self.options, self.image, self.out, self.name, files=self.files)


@dataclass
class RunResult:
    """Records of every image (in input order) and where the index is."""

    records: list[ImageRecord]
    out: Path
    wall_s: float
    executor: str
    workers: int

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "failed"]


def explain_many(
    images: str | Path | Sequence[str | Path],
    source: ModelSource,
    out: str | Path,
    *,
    options: ConceptOptions | None = None,
    executor: str = "auto",
    ray_address: str | None = None,
    workers: int | None = None,
    max_retries: int = 2,
    progress: bool = True,
    index: str | None = None,
    dictionary: str | None = None,
) -> RunResult:
    """Explain every image into ``out/<index>-<name>/`` and write ``out/index.json`` + ``index.html``.

    Parameters
    ----------
    images : folder, glob, list file or sequence of paths
    source : ModelSource
        How each worker builds the model.
    out : path
        The run's folder; a rerun into it skips finished images.
    options : ConceptOptions, optional
        Concept options (default: the default preset).
    executor : {"auto", "ray", "local"}
        ``auto``: Ray if it is installed, else in-process. ``ray``: Ray (``ray.init`` with this
        machine's CPUs, or ``ray_address``). ``local``: sequential, in this process.
    ray_address : str, optional
        An existing Ray cluster (``ray://host:10001`` or ``auto``).
    workers : int, optional
        Concurrent tasks on a local Ray (default: the machine's CPU count); each task gets
        ``CPUs / workers`` CPUs, and one GPU when torch sees one.
    max_retries : int
        Retries of a task that raises an unexpected exception (a crash, a killed worker); an
        image that still fails is recorded (``status="failed"``) and the run goes on.
    index : path, optional
        A reference index of the model: each explanation lists its concepts' references.
    dictionary : path, optional
        A concept dictionary of the model: each image's concepts are read from it
        (:mod:`conceptree.dictionary`), the same ids on every image.
    """
    from ..concepts.options import preset

    options = options or preset("default")
    paths = collect_images(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):  # leftovers of a killed run: never a finished explanation
        shutil.rmtree(stale, ignore_errors=True)
    records: list[ImageRecord] = []
    todo: list[ImageRecord] = []
    for i, path in enumerate(paths):
        name = folder_name(i, path)
        record = ImageRecord(i, str(path), name, "pending")
        if (out / name / "explanation.json").is_file():
            record.status = "skipped"
            _fill_from_folder(record, out / name)
        else:
            if (out / name).exists():  # not written by a run (those appear complete): made by hand, replaced
                shutil.rmtree(out / name)
            todo.append(record)
        records.append(record)
    kind = executor_kind(executor)
    files = {k: str(v) for k, v in (("index", index), ("dictionary", dictionary)) if v is not None}
    tasks = [ExplainImage(source=source, options=options, image=r.image, out=str(out), name=r.folder, files=files or None)
             for r in todo]
    ran = fan_out(tasks, executor=kind, retries=max_retries, on_failure="record", workers=workers,
                  ray_address=ray_address, gpu_per_task=True,
                  progress=Progress(description=f"explain-many ({len(records) - len(todo)} done before)", unit="image")
                  if progress else None)
    for record, outcome, attempts in zip(todo, ran.results, ran.attempts):
        if outcome is not None:
            _apply(record, outcome, attempts)
    for failure in ran.failures:  # an unexpected error that persisted through the retries
        _apply(todo[failure.index], {"status": "failed", "error": failure.message}, failure.attempts)
    for stale in out.glob(".tmp-*"):  # every task has ended: what is left was a killed attempt's
        shutil.rmtree(stale, ignore_errors=True)
    result = RunResult(records, out, ran.wall_s, kind, ran.workers)
    write_index(result)
    return result


def _fill_from_folder(record: ImageRecord, folder: Path) -> None:
    """The summary of an explanation an earlier run wrote (for the index)."""
    try:
        data = json.loads((folder / "explanation.json").read_text())
        record.target, record.probability = data["target"]["name"], data["target"]["probability"]
        concepts = data["concept_set"]["concepts"]
        record.k = len(concepts)
        record.largest_share = max((c["share"] for c in concepts), default=0.0)
    except (OSError, ValueError, KeyError):  # an older format: listed without details
        pass


def _apply(record: ImageRecord, outcome: dict, attempts: int) -> None:
    record.status = outcome["status"]
    record.attempts = attempts
    for key in ("error", "target", "probability", "k", "largest_share", "seconds"):
        if key in outcome:
            setattr(record, key, outcome[key])


def write_index(result: RunResult) -> None:
    """``index.json`` (every record) and ``index.html`` (a table linking each report)."""
    out = result.out
    summary = {"images": len(result.records), "ok": sum(r.status == "ok" for r in result.records),
               "skipped": sum(r.status == "skipped" for r in result.records), "failed": len(result.failed),
               "wall_s": result.wall_s, "executor": result.executor, "workers": result.workers}
    tmp = out / ".index.json.tmp"
    tmp.write_text(json.dumps({"summary": summary, "images": [asdict(r) for r in result.records]}, indent=1))
    os.replace(tmp, out / "index.json")
    esc = html.escape
    rows = []
    for r in result.records:
        link = (f"<a href='{esc(r.folder)}/report.html'>{esc(r.folder)}</a>"
                if (out / r.folder / "report.html").is_file() else esc(r.folder))
        detail = esc(r.error or "") if r.status == "failed" else (
            f"{esc(r.target or '')} (p={r.probability:.2f}), {r.k} concepts, largest {100 * r.largest_share:.0f}%"
            if r.target else "")
        rows.append(f"<tr class='{r.status}'><td>{r.index}</td><td>{link}</td><td>{esc(Path(r.image).name)}</td>"
                    f"<td>{r.status}</td><td>{detail}</td></tr>")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>conceptree: explain-many</title><style>"
        "body{font-family:system-ui,sans-serif;margin:16px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.failed td{background:#fde8e8}"
        f"</style></head><body><h1>{summary['images']} images: {summary['ok']} explained now, "
        f"{summary['skipped']} earlier, {summary['failed']} failed</h1>"
        f"<p>{esc(result.executor)} executor, {result.workers} worker(s), {result.wall_s:.0f} s.</p>"
        "<table><tr><th>#</th><th>explanation</th><th>image</th><th>status</th><th>result or error</th></tr>"
        + "".join(rows) + "</table></body></html>"
    )
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / "index.html")

