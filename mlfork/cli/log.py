"""mlfork log [RUN] [--json]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, table


@click.command("log")
@click.argument("run", required=False)
@click.option("-n", "--max-count", "limit", type=click.IntRange(min=0), default=None,
              metavar="N", help="Only the newest N checkpoints (only those are read).")
@json_option
def command(run: str | None, limit: int | None, as_json: bool) -> None:
    """List the checkpoints of RUN (default: the run checked out), oldest first: iteration,
    step, commit, the run that owns it (an ancestor, for inherited ones) and the metrics.

    \b
    Example: mlfork log base -n 6"""
    from mlfork.ops.kernel.lineage import log

    cps = log(run=run, limit=limit)
    if as_json:
        emit_json([c.to_dict() for c in cps])
        return
    keys = sorted({k for c in cps for k in c.metrics})[:5]
    rows = [
        [c.iteration, c.step, c.commit[:10], c.run, *[c.metrics.get(k) for k in keys]]
        for c in cps
    ]
    table(["iteration", "step", "commit", "run", *keys], rows)
