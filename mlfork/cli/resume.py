"""mlfork resume [RUN]... [--iterations K] [--jobs J]"""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import (
    executor_options,
    iterations_option,
    json_option,
    runtime_options,
    verbose,
    wait_option,
)
from mlfork.cli._output import ProgressView, emit_json, render_jobs, render_run_result


@click.command("resume")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@iterations_option("Run K more iterations (raising the budget if needed) instead of up to it.")
@executor_options
@runtime_options
@wait_option
@json_option
@click.pass_context
def command(
    ctx: click.Context,
    runs: tuple[str, ...],
    iterations: int | None,
    jobs: int | None,
    executor: str,
    executor_params: tuple[str, ...],
    timeout: float | None,
    stage_timeout: float | None,
    wait: bool | None,
    as_json: bool,
) -> None:
    """Continue RUN (default: the run checked out) from its first uncommitted stage.

    After a crash, Ctrl-C, a timeout or a failed stage nothing committed is redone; leftovers
    of the interrupted stage are put back as the last commit has them first.

    With several RUNs, or --jobs, the runs go on side by side, each in a git worktree of
    its own under .mlfork/local/worktrees/ (the workspace here is not touched), at most J at
    a time, on local processes or submitit (SLURM).

    \b
    Example: mlfork resume lr-0.1 lr-0.2 lr-0.3 --jobs 2
    """
    if len(runs) > 1 or jobs is not None or executor != "local" or executor_params:
        from mlfork.errors import JobsFailed
        from mlfork.ops.running.fanout import run_jobs

        with ProgressView() as view:
            result = run_jobs(
                runs=runs, iterations=iterations, jobs=jobs, executor=executor,
                executor_params=executor_params, timeout=timeout,
                stage_timeout=stage_timeout, progress=view, wait=wait,
            )
        if as_json:
            emit_json(result.to_dict())
        else:
            render_jobs(result)
        if result.failed:
            raise JobsFailed([job.run for job in result.failed], len(result.jobs))
        return

    from mlfork.ops.running.start import resume

    with ProgressView() as view:
        result_one = resume(
            run=runs[0] if runs else None,
            iterations=iterations,
            timeout=timeout,
            stage_timeout=stage_timeout,
            progress=view,
            echo=verbose(ctx),
            argv=["mlfork", *sys.argv[1:]],
            wait=wait,
        )
    if as_json:
        emit_json(result_one.to_dict())
    render_run_result(result_one)
