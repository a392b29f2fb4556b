"""Drishtiksha: judge videos for deepfakes from watched folders, uploads and the command line.

The command line, one module per command group (``serve``, ``analyze``, ``jobs``, ``train``,
``bench``, ``weights``, ``webhooks``) over what they share (``common``); this module wires them
into one ``app`` and is the console script's entry point.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import version as package_version
from typing import Annotated

import typer

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from typer._click import exceptions as click_errors

from processor.cli import analyze, bench, jobs, serve, train, webhooks, weights
from storage.errors import StorageError

# Plain click help: paragraphs rewrapped to the terminal, no markup to leak into the text.
app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(serve.db_app, name="db")
app.add_typer(serve.config_app, name="config")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(weights.weights_app, name="weights")
app.add_typer(webhooks.webhooks_app, name="webhooks")
app.command()(serve.run)
app.command("detectors")(serve.detectors_cmd)
app.command("gc")(serve.gc_cmd)
app.command("workers")(serve.workers_cmd)
app.command()(analyze.analyze)
app.command()(train.train)
app.command("eval")(train.eval_cmd)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"drishtiksha {package_version('drishtiksha')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Drishtiksha: judge videos for deepfakes from watched folders, uploads and the command
    line."""


def main() -> None:
    """Console-script entry point: every error is one line on stderr and a non-zero exit."""
    logging.captureWarnings(True)
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        typer.echo(f"error: {where}{exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except StorageError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
