"""Where a command writes (its ``--out`` folder) and what it prints about the images that failed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from ..errors import InputError


def check_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder to write: refused in one line when a file stands there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file; {flag} must be a folder (a new one or an existing folder)")
    return path


def prepare_out(out: Path, overwrite: bool) -> None:
    check_folder(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} exists and is not empty; pass --overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to {out} ({exc.strerror}); choose a writable --out") from None


@contextmanager
def output_folder(out: Path, overwrite: bool, files: tuple[str, ...]) -> Iterator[Path]:
    """Prepare ``out``; if the body fails, remove what it wrote (the folder, if it was new)."""
    existed = out.exists()
    prepare_out(out, overwrite)
    try:
        yield out
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in files:
                (out / name).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, kw_only=True)
class Failures:
    """The images of a run that failed, as its record file lists them.

    Attributes
    ----------
    total : int
        Images in the run.
    failed : list[tuple[str, str]]
        ``(file name, error)`` of each failed image, in the run's order.
    record : Path
        The file that lists them.
    """

    total: int
    failed: list[tuple[str, str]]
    record: Path

    def line(self) -> str | None:
        """``"2 of 3 images failed (see RECORD): a.jpg: cannot read ...; b.jpg: ..."`` or None."""
        if not self.failed:
            return None
        shown = "; ".join(f"{name}: {_first_line(error)}" for name, error in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        return f"{len(self.failed)} of {self.total} images failed (see {self.record}): {shown}{more}"


def _first_line(text: str, limit: int = 160) -> str:
    first = (text or "unknown error").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def read_failures(record: str | Path) -> Failures:
    """The failures a run wrote to its record file (the one place that reads them).

    ``record`` is a JSON file with an ``images`` list whose entries have ``status``
    (``"failed"`` for a failure), ``error`` and the image as ``image`` (explain-many's
    ``index.json``) or ``path`` (the reference index's ``index.json``). A file without such a
    list (e.g. an evaluation's ``results.json``, whose photos are scores) has no failures.
    """
    record = Path(record)
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return Failures(total=0, failed=[], record=record)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        return Failures(total=0, failed=[], record=record)
    failed = [(Path(str(rec.get("image") or rec.get("path") or "?")).name, str(rec.get("error") or ""))
              for rec in images if isinstance(rec, dict) and rec.get("status") == "failed"]
    return Failures(total=len(images), failed=failed, record=record)


def echo_failures(record: str | Path) -> None:
    """Print the run's one summary line of failures (to stderr, also under ``--quiet``); nothing
    when every image succeeded."""
    line = read_failures(record).line()
    if line:
        typer.echo(line, err=True)
