"""mlfork sweep --from RUN [--from-iteration N] KEY=a,b,c [KEY2=x,y]... [--jobs J]"""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import (
    MAX_ITERATIONS,
    executor_options,
    fork_point_options,
    json_option,
    runtime_options,
    wait_option,
)
from mlfork.cli._output import ProgressView, emit_json, render_jobs


@click.command("sweep")
@fork_point_options
@click.option("--name-prefix", default=None, metavar="P",
              help="Start the forks' names with P (default: '<run>-'); the rest says the"
                   " swept values (base-lr0.1-seed2).")
@click.option("--iterations", "-n", type=click.IntRange(min=0, max=MAX_ITERATIONS), default=None,
              metavar="K",
              help="Iterations each fork runs after the fork point (default: the source's"
                   " budget).")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Tag every fork (k or k=v).")
@executor_options
@runtime_options
@click.option("--no-run", is_flag=True, help="Only make the forks (run them later with"
                                             " 'mlfork resume A B C --jobs J').")
@wait_option
@json_option
@click.argument("overrides", nargs=-1, required=True, metavar="KEY=a,b[,c]...")
def command(source: str | None, from_iteration: int | None, from_step: str | None,
            name_prefix: str | None, iterations: int | None, tags: tuple[str, ...],
            jobs: int | None, executor: str, executor_params: tuple[str, ...],
            timeout: float | None, stage_timeout: float | None, no_run: bool,
            wait: bool | None, as_json: bool, overrides: tuple[str, ...]) -> None:
    """Fork a run once per combination of the swept values, then run the forks side by side.

    Overrides use Hydra's multirun grammar: model.lr=0.1,0.2 sweeps two values,
    seed=range(1,4) three, model=mlp,cnn two config groups; plain overrides apply to every
    fork. Each fork runs in a git worktree of its own under .mlfork/local/worktrees/,
    sharing the DVC cache and the tracking store; the workspace here is never touched.
    A failed fork is reported with its log and its resume command; the others go on.

    \b
    Examples: mlfork sweep --from base --from-iteration 1 model.lr=0.01,0.05,0.1 --jobs 2
              mlfork sweep --from base seed=range(1,4) --executor submitit \\
                  --executor-param slurm_partition=gpu --executor-param timeout_min=120
    """
    from mlfork.errors import JobsFailed
    from mlfork.ops.running.fanout import sweep

    with ProgressView() as view:
        result = sweep(
            source=source, overrides=overrides, from_iteration=from_iteration,
            from_step=from_step, name_prefix=name_prefix, iterations=iterations, tags=tags,
            jobs=jobs, executor=executor, executor_params=executor_params, timeout=timeout,
            stage_timeout=stage_timeout, run=not no_run, argv=["mlfork", *sys.argv[1:]],
            progress=view, wait=wait,
        )
    if as_json:
        emit_json(result.to_dict())
    elif no_run:
        names = " ".join(f["name"] for f in result.forks)
        click.echo(f"made {len(result.forks)} fork(s): {names}")
        click.echo(f"next: mlfork resume {names} --jobs 2")
    else:
        render_jobs(result)
    if result.failed:
        raise JobsFailed([job.run for job in result.failed], len(result.jobs))
