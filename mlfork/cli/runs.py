"""mlfork runs [--json]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, table


@click.command("runs")
@json_option
def command(as_json: bool) -> None:
    """List every run: parent and fork point, status, iterations done/budget, and the
    headline metric (`val_metric`) at the run's last checkpoint. `*` marks the run checked out;
    a run only a remote has (a teammate's, after `mlfork pull` or `git fetch`) shows as
    `origin/NAME`.
    """
    from mlfork.ops.kernel.lineage import runs

    infos = runs()
    if as_json:
        emit_json([i.to_dict() for i in infos])
        return
    rows = []
    for i in infos:
        fork = f"{i.parent.run}@{i.parent.iteration}/{i.parent.step}" if i.parent else "-"
        if i.merged:
            fork = "merge of " + " + ".join(i.merged)
        metric = f"{i.headline}={i.headline_value:.4f}" if i.headline_value is not None else "-"
        rows.append(
            [("* " if i.checked_out else "  ") + (f"{i.remote}/" if i.remote else "") + i.name,
             fork, i.status, f"{i.done}/{i.budget}", metric]
        )
    if not rows:
        click.echo("no runs yet: start one with 'mlfork run --name base'", err=True)
        return
    table(["run", "forked from", "status", "iterations", "headline"], rows)
