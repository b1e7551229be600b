"""Options shared by run, resume and branch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

MAX_ITERATIONS = 1_000_000  # a budget past this is a typo, not a plan


def positive_float(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive number of seconds")
    return value


def runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--stage-timeout", type=float, default=None, callback=positive_float, metavar="S",
        help="Stop a stage that runs longer than S seconds (resumable).",
    )(fn)
    fn = click.option(
        "--timeout", type=float, default=None, callback=positive_float, metavar="S",
        help="Stop the run after S seconds, between or inside stages (resumable).",
    )(fn)
    return fn


def iterations_option(help_text: str) -> Callable[..., Any]:
    return click.option(
        "--iterations", "-n", type=click.IntRange(min=1, max=MAX_ITERATIONS), default=None,
        metavar="N", help=help_text
    )


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def verbose(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("verbose"))


def wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--wait", is_flag=True, default=None,
        help="Deliver the tracking writes before returning (default: a background"
             " 'mlfork sync' does; MLFORK_WAIT=1 makes this the default).",
    )(fn)


def executor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--jobs, --executor and --executor-param: how runs go side by side."""
    fn = click.option(
        "--executor-param", "executor_params", multiple=True, metavar="KEY=VALUE",
        help="A submitit parameter: cluster=local (this machine), timeout_min=60,"
             " slurm_partition=gpu, gpus_per_node=1...",
    )(fn)
    fn = click.option(
        "--executor", type=click.Choice(["local", "submitit"]), default="local",
        show_default=True,
        help="Where the jobs run: local processes, or submitit (SLURM; its local executor"
             " with --executor-param cluster=local).",
    )(fn)
    fn = click.option(
        "--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="J",
        help="Run at most J at a time (default: one per CPU).",
    )(fn)
    return fn


def fork_point_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--from, --from-iteration and --from-step: the checkpoint a fork starts at."""
    fn = click.option(
        "--from-step", default=None, metavar="STEP",
        help="Fork after stage STEP (of iteration N, or of the last iteration that ran it).",
    )(fn)
    fn = click.option(
        "--from-iteration", type=int, default=None, metavar="N",
        help="Fork at the end of iteration N (default: the latest checkpoint).",
    )(fn)
    fn = click.option(
        "--from", "source", default=None, metavar="RUN",
        help="Run to fork: name, branch or unique prefix (default: the run checked out).",
    )(fn)
    return fn
