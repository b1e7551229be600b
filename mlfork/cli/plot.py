"""mlfork plot [RUN]... [-o FILE.png|.svg] [--metric M] [--x iteration|since-fork|step]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note


@click.command("plot")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("-o", "--output", default=None, metavar="FILE",
              help="A .png or .svg file (default: <first run>-<metric>.png here).")
@click.option("--metric", "-m", default=None, metavar="M",
              help="The metric to draw (default: the headline metric, val_metric).")
@click.option("--x", "x_axis", type=click.Choice(["iteration", "since-fork", "step"]),
              default="iteration", show_default=True,
              help="x axis: the iteration, iterations since each run's fork point, or the"
                   " global step of the per-step series (see 'mlfork metrics --x step').")
@click.option("--source", type=click.Choice(["auto", "tracking", "git"]), default="auto",
              show_default=True, help="Where the metrics come from (see 'mlfork metrics').")
@json_option
def command(runs: tuple[str, ...], output: str | None, metric: str | None, x_axis: str,
            source: str, as_json: bool) -> None:
    """Draw the stitched curves of RUNs (default: the run checked out), one colour per run,
    with a dashed vertical line at each fork point of their lineages.

    \b
    Example: mlfork plot base lr lr2 -o curves.png
             mlfork plot lr lr2 --metric log_loss --x since-fork -o forks.svg
             mlfork plot base lr --x step --metric loss -o steps.png
    """
    from mlfork.ops.comparing.plot import plot

    result = plot(runs=list(runs) or None, output=output, metric=metric,
                  x=x_axis, source=source)  # type: ignore[arg-type]
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(result.path)
    note(f"plotted {result.metric} of {', '.join(result.runs)} with"
         f" {len(result.fork_lines)} fork line(s)")
