"""mlfork resume [RUN] [--iterations K]"""

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


@click.command("resume")
@click.argument("run", required=False)
@iterations_option("Run K more iterations (raising the budget if needed) instead of up to it.")
@runtime_options
@wait_option
@json_option
@click.pass_context
def command(
    ctx: click.Context,
    run: str | None,
    iterations: int | None,
    timeout: float | None,
    stage_timeout: float | None,
    wait: bool | None,
    as_json: bool,
) -> None:
    """Continue RUN (default: the run checked out) from its first uncommitted stage.

    After a crash, Ctrl-C, a timeout or a failed stage nothing committed is redone; leftovers
    of the interrupted stage are put back as the last commit has them first.
    """
    from mlfork.ops.running.start import resume

    with ProgressView() as view:
        result = resume(
            run=run,
            iterations=iterations,
            timeout=timeout,
            stage_timeout=stage_timeout,
            progress=view,
            echo=verbose(ctx),
            argv=["mlfork", *sys.argv[1:]],
            wait=wait,
        )
    if as_json:
        emit_json(result.to_dict())
    render_run_result(result)
