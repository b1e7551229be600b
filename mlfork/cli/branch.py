"""mlfork branch [--from RUN] [--from-iteration N] [--from-step STEP] [--name NAME] ..."""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import (
    MAX_ITERATIONS,
    fork_point_options,
    json_option,
    runtime_options,
    verbose,
    wait_option,
)
from mlfork.cli._output import ProgressView, emit_json, note, render_run_result


@click.command("branch")
@fork_point_options
@click.option("--name", default=None, help="The fork's run name (default <run>-fork-<k>).")
@click.option("--iterations", "-n", type=click.IntRange(min=0, max=MAX_ITERATIONS), default=None,
              metavar="K",
              help="Iterations to run after the fork point (default: keep the source's budget).")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Tag the fork (k or k=v).")
@click.option("--inherit-tags", is_flag=True, help="Also carry the parent's tags over.")
@runtime_options
@click.option("--no-switch", is_flag=True, help="Leave the workspace where it is.")
@click.option("--run", "run_now", is_flag=True, help="Continue the fork at once (like resume).")
@wait_option
@json_option
@click.argument("overrides", nargs=-1, metavar="[OVERRIDE]...")
@click.pass_context
def command(ctx: click.Context, source: str | None, from_iteration: int | None,
            from_step: str | None, name: str | None, iterations: int | None,
            tags: tuple[str, ...], inherit_tags: bool, timeout: float | None,
            stage_timeout: float | None, no_switch: bool, run_now: bool, wait: bool | None,
            as_json: bool,
            overrides: tuple[str, ...]) -> None:
    """Fork a run at a checkpoint: a new branch mlfork/NAME at the checkpoint commit plus one
    commit with the fork's run record and config. Nothing is recomputed or copied.

    The fork inherits the parent's overrides, then applies OVERRIDEs (Hydra grammar; a group
    switch like model=mlp drops the old group's keys). Locked keys (dataset, val_metric) cannot
    change. Iteration counts (--iterations, and the policy's relative keys) count from the
    fork point.

    \b
    Example: mlfork branch --from base --from-iteration 1 --name lr model.lr=0.05
             mlfork resume lr        (or: dvc repro, with no mlfork involved)
    """
    from mlfork.ops.running.fork import branch

    with ProgressView() as view:
        result = branch(
            source=source, from_iteration=from_iteration, from_step=from_step, name=name,
            iterations=iterations, tags=tags, inherit_tags=inherit_tags, timeout=timeout,
            stage_timeout=stage_timeout, switch=not no_switch, run=run_now,
            overrides=overrides, argv=["mlfork", *sys.argv[1:]], progress=view,
            echo=verbose(ctx), wait=wait,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        plan = (
            f"it runs iterations {result.start_iteration} to {result.budget - 1}"
            if result.budget > result.start_iteration
            else "it has no iteration left to run: give --iterations K to add some"
        )
        click.echo(
            f"forked '{result.name}' from {result.fork_run} at iteration"
            f" {result.fork_iteration} {result.fork_step} ({result.fork_commit[:10]}); {plan}"
        )
    if result.run is not None:
        render_run_result(result.run)
    elif result.switched:
        note(f"next: mlfork resume {result.name}   (or: dvc repro)")
    else:
        note(f"next: git switch {result.branch} && dvc checkout && mlfork resume {result.name}")
