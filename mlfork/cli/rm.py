"""mlfork rm RUN [--force]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option, wait_option
from mlfork.cli._output import emit_json, note, warn
from mlfork.naming import SYNC_LOG


@click.command("rm")
@click.argument("run", metavar="RUN")
@click.option("--force", is_flag=True,
              help="Remove it even though other runs fork it (they keep its commits).")
@wait_option
@json_option
def command(run: str, force: bool, wait: bool | None, as_json: bool) -> None:
    """Remove RUN (its exact name or branch): the branch mlfork/RUN, its local state
    (status, logs, pending tracking writes) and its MLflow run, marked deleted.

    Refused while RUN is checked out, and while other runs fork it unless --force. The DVC
    cache is not touched: other runs share its objects.

    \b
    Example: mlfork rm lr-try-3
    """
    from mlfork.ops.running.rm import rm

    result = rm(run=run, force=force, wait=wait)
    for message in result.warnings:
        warn(message)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"removed run '{result.run}' (branch {result.branch} was {result.tip[:10]})")
    if result.forks:
        note(f"its forks keep its commits: {', '.join(result.forks)}")
    if result.tracking == "background":
        note(f"its MLflow run is marked deleted in the background (log: {SYNC_LOG})")
    if result.tracking == "queued":
        note("its MLflow run is marked deleted once the tracking store is back: 'mlfork sync'")
    note(f"to undo: git branch {result.branch} {result.tip}")
