"""Command line (thin: parse the arguments, call the library, print).

One module per command group: :mod:`.explain` (explain, demo, compare), :mod:`.runs`
(explain-many, atlas), :mod:`.index` (index, dictionary) and :mod:`.evaluate`; the options
several commands share (the model, its preprocessing, the concept options, the output folder)
are declared once in :mod:`.options`. None of them computes anything: ``tests/test_cli_errors.py``
checks that no CLI module imports torch or numpy.

Errors: a usage mistake (missing argument, unknown option, bad value) prints click's usage
message and exits 2; a :class:`ConceptreeError` (bad image, unknown layer, bad config file...)
or an operating-system error on a named path (a file where a folder is expected, no
permission) prints one ``error:`` line and exits 2; anything else is a bug: one line saying so
and where to report it, exit 1, with the traceback only under ``--debug``. A run over many
images that leaves failures ends with one summary line, even under ``--quiet``.
"""

from __future__ import annotations

import sys

import click
import typer

from ..errors import ConceptreeError
from . import evaluate, explain, index, runs

__all__ = ["app", "main"]

BUG_REPORT = "please report it with the command and this message to the conceptree maintainers (issue tracker)"

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help=(
        "Explain a CNN's decision with a few neuron-traceable concepts.\n\n"
        "Examples:\n\n"
        "  conceptree demo --out demo\n\n"
        "  conceptree explain parrot.jpg --model-config docs/models/bird.json --out parrot"
    ),
)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error."),
) -> None:
    """Explain a CNN's decision with a few neuron-traceable concepts."""


app.command("explain")(explain.explain_cmd)
app.command("demo")(explain.demo_cmd)
app.command("explain-many")(runs.explain_many_cmd)
app.command("index")(index.index_cmd)
app.command("dictionary")(index.dictionary_cmd)
app.command("atlas")(runs.atlas_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("compare")(explain.compare_cmd)


def _os_error_line(exc: OSError) -> str:
    """One line for an operating-system error on a named path (the user's to fix)."""
    reason = exc.strerror or type(exc).__name__
    fix = {FileExistsError: "it exists and is not a folder; choose another path",
           NotADirectoryError: "a file stands where a folder is expected; choose another path",
           IsADirectoryError: "a folder stands where a file is expected",
           PermissionError: "choose a path you may read and write"}.get(type(exc), "check the path")
    return f"error: {exc.filename}: {reason}; {fix}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into a clear message and exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    from ..runtime import tune_allocator

    tune_allocator()  # explicit and process-wide: keep freed buffers (see conceptree.runtime)
    try:
        app(args=args, prog_name="conceptree", standalone_mode=False)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except (typer.exceptions.TyperException, click.ClickException) as exc:  # usage mistakes: usage + message, exit 2
        if not hasattr(exc, "show"):  # pragma: no cover - typer's own non-click exceptions
            raise
        exc.show()  # typer >= 0.20 vendors click; its ClickException derives from TyperException
        sys.exit(getattr(exc, "exit_code", 2))
    except ConceptreeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a path the user named: exists as a file, no permission, disk full
        if debug:
            raise
        if exc.filename is None:
            _internal_error(exc)
        typer.echo(_os_error_line(exc), err=True)
        sys.exit(2)
    except Exception as exc:  # a bug, not the user's mistake
        if debug:
            raise
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"internal error: {type(exc).__name__}: {first[:200]}; {BUG_REPORT}; rerun with --debug for the "
               "traceback", err=True)
    sys.exit(1)
