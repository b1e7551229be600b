"""mlfork verify [RUN] --from-iteration N [--iterations K] [--keep] [--json]"""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import MAX_ITERATIONS, json_option, verbose
from mlfork.cli._output import ProgressView, emit_json, note


@click.command("verify")
@click.argument("run", required=False)
@click.option("--from-iteration", type=click.IntRange(min=0), required=True, metavar="N",
              help="Fork at the end of iteration N.")
@click.option("--iterations", "-n", type=click.IntRange(min=1, max=MAX_ITERATIONS), default=None,
              metavar="K",
              help="Iterations to run and compare (default: up to RUN's last completed one).")
@click.option("--keep", is_flag=True, help="Keep the scratch fork (branch and MLflow run).")
@json_option
@click.pass_context
def command(ctx: click.Context, run: str | None, from_iteration: int, iterations: int | None,
            keep: bool, as_json: bool) -> None:
    """Check that a fork point is faithful: fork RUN (default: the run checked out) at the
    end of iteration N without overrides, resume the fork for K iterations with DVC's run
    cache off, and compare its metrics and DVC output hashes with RUN's own iterations
    N+1 to N+K. The checked-out branch is restored afterwards, and the scratch fork removed
    unless --keep.

    Exit 0 when identical, 16 when diverged (the first iteration, metric and output that
    differ are printed).

    \b
    Example: mlfork verify base --from-iteration 1
    """
    from mlfork.cli.replay import render_comparison
    from mlfork.errors import Diverged
    from mlfork.ops.replaying.verify import verify

    with ProgressView() as view:
        result = verify(run=run, from_iteration=from_iteration, iterations=iterations,
                        keep=keep, progress=view, echo=verbose(ctx),
                        argv=["mlfork", *sys.argv[1:]])
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(f"verify '{result.run}' from the end of iteration {result.from_iteration}:"
                   f" scratch fork '{result.scratch}' ran {result.iterations} iteration(s)")
        render_comparison(result.comparison)
    if result.kept:
        note(f"kept: branch mlfork/{result.scratch} (delete: git branch -D"
             f" mlfork/{result.scratch})")
    if not result.identical:
        raise Diverged(result.comparison.summary())
