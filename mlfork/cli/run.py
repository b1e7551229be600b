"""mlfork run [--name NAME] [--iterations N] [OVERRIDE]..."""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import (
    iterations_option,
    json_option,
    runtime_options,
    verbose,
    wait_option,
)
from mlfork.cli._output import ProgressView, emit_json, render_run_result


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--name", default=None, help="Run name (branch mlfork/NAME); default run-<k>.")
@iterations_option("Iterations to run (default: the config's `iterations`, else 1).")
@runtime_options
@click.option(
    "--tag", "tags", multiple=True, metavar="T", help="Tag the run (k or k=v); repeatable."
)
@wait_option
@json_option
@click.argument("overrides", nargs=-1, metavar="[OVERRIDE]...")
@click.pass_context
def command(
    ctx: click.Context,
    name: str | None,
    iterations: int | None,
    timeout: float | None,
    stage_timeout: float | None,
    tags: tuple[str, ...],
    wait: bool | None,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Start a run at HEAD: create branch mlfork/NAME, switch to it, and run the pipeline's
    stages iteration by iteration, committing after every stage.

    OVERRIDEs use Hydra's grammar (model=mlp model.lr=0.01 +extra=1 ~key) against conf/, or
    against params.yaml in projects without conf/.

    \b
    Example: mlfork run --name base --iterations 4 model.lr=0.02
    """
    from mlfork.ops.running.start import start

    with ProgressView() as view:
        result = start(
            name=name,
            iterations=iterations,
            timeout=timeout,
            stage_timeout=stage_timeout,
            tags=tags,
            overrides=overrides,
            argv=["mlfork", *sys.argv[1:]],
            progress=view,
            echo=verbose(ctx),
            wait=wait,
        )
    if as_json:
        emit_json(result.to_dict())
    render_run_result(result)
