"""mlfork replay [RUN] [--iteration N] [--launch [--force] [--name NAME]] [--json]"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from mlfork.cli._options import json_option, verbose
from mlfork.cli._output import ProgressView, emit_json, note, warn


@click.command("replay")
@click.argument("run", required=False)
@click.option("--iteration", type=click.IntRange(min=0), default=None, metavar="N",
              help="The iteration to reproduce (default: the run's last completed one).")
@click.option("--launch", is_flag=True,
              help="Run the replay as a new run <run>-replay-<k>, then compare it.")
@click.option("--force", is_flag=True, help="With --launch: replay even if a dataset differs.")
@click.option("--name", default=None, help="With --launch: the replay's run name.")
@json_option
@click.pass_context
def command(ctx: click.Context, run: str | None, iteration: int | None, launch: bool,
            force: bool, name: str | None, as_json: bool) -> None:
    """Print the exact commands that reproduce RUN (default: the run checked out) up to
    iteration N, from its base commit (a run) or its fork point (a fork), with the seed
    bundle of its replay manifest; then how this machine's environment differs from the
    recorded one, and whether each dataset still matches.

    With --launch, run it as a new run (DVC's run cache off) and compare every iteration's
    metrics and DVC output hashes with the original: exit 0 when identical, 16 when not.
    A dataset that differs refuses the launch (exit 13) unless --force; environment drift
    only warns.

    \b
    Example: mlfork replay base
             mlfork replay base --iteration 1 --launch
    """
    from mlfork.errors import DatasetMismatch, Diverged, UsageError
    from mlfork.ops.replaying import launch as launching
    from mlfork.ops.replaying import plan as ops

    if (force or name) and not launch:
        raise UsageError("--force and --name go with --launch")
    if not launch:
        plan = ops.plan(run=run, iteration=iteration)
        for message in plan.warnings:
            warn(message)
        emit_json(plan.to_dict()) if as_json else render_plan(plan)
        if plan.problems:
            raise DatasetMismatch(
                f"{len(plan.problems)} dataset(s) differ from what '{plan.original}' used:"
                " 'mlfork replay --launch' refuses without --force"
            )
        return
    with ProgressView() as view:
        result = launching.launch(run=run, iteration=iteration, force=force, name=name,
                            progress=view, echo=verbose(ctx), argv=["mlfork", *sys.argv[1:]])
    if as_json:
        emit_json(result.to_dict())
    else:
        render_plan(result.plan, launched=True)
        render_comparison(result.comparison)
    note(f"replay '{result.run.name}' {result.run.status}: {result.run.done}/"
         f"{result.run.budget} iterations (branch mlfork/{result.run.name})")
    if not result.identical:
        raise Diverged(result.comparison.summary())


def render_plan(plan: Any, launched: bool = False) -> None:
    import yaml

    echo = click.echo
    echo(f"replay of '{plan.original}' iteration {plan.iteration}"
         f" (manifest_version {plan.manifest_version}, commit {plan.commit[:10]})")
    echo("ran as: " + (shlex.join(plan.original_argv) or "(unknown)"))
    if plan.kind == "run":
        echo(f"{'launched' if launched else 'reproduce'} from the base commit"
             f" {plan.start_commit[:12]}:")
    else:
        f = plan.fork_from
        echo(f"{'launched' if launched else 'reproduce'} from the fork point {f['run']}"
             f" iteration {f['iteration']} {f['step']} ({plan.start_commit[:12]}):")
    for line in plan.commands:
        echo(f"  {line}")
    if not launched:
        echo(f"  (or: mlfork replay {plan.run} --iteration {plan.iteration} --launch)")
    seed = plan.seed
    echo(f"seed bundle: seed={seed.get('config_seed')}, PYTHONHASHSEED={plan.pythonhashseed or '-'}"
         + (f"; the pipeline seeds {', '.join(seed['pipeline'])}" if seed.get("pipeline") else ""))
    if plan.manifest_version > 1:
        echo("environment and datasets: not compared (a manifest from a newer mlfork)")
    else:
        if plan.environment:
            echo("environment (recorded -> this machine):")
            for change in plan.environment:
                echo(f"  {change.line()}")
        else:
            echo("environment: identical to this machine's")
        echo("datasets:" if plan.datasets else "datasets: none recorded")
        for check in plan.datasets:
            echo(f"  {check.line()}")
    if not launched:
        echo(f"config (composed for iteration {plan.iteration}):")
        text = yaml.safe_dump(plan.config, sort_keys=False, default_flow_style=False)
        echo("\n".join("  " + line for line in text.rstrip().splitlines()))
    if plan.config_changes:
        echo("config check: the replay composes another config:")
        for line in plan.config_changes:
            echo(f"  {line}")


def render_comparison(comparison: Any) -> None:
    echo = click.echo
    echo(comparison.summary())
    if comparison.identical:
        return
    if comparison.first_output is not None:
        echo(f"  first differing output: {comparison.first_output.line()}")
    if comparison.largest:
        echo("  largest divergence per metric:")
        for div in comparison.largest:
            echo(f"    {div.line()}")
