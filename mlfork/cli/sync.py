"""mlfork sync [--rebuild]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note, warn


@click.command("sync")
@click.option(
    "--rebuild", is_flag=True,
    help="Delete the project's runs from the store and recreate them from git alone.",
)
@json_option
def command(rebuild: bool, as_json: bool) -> None:
    """Deliver the tracking writes waiting in the outbox, then bring the tracking store up to
    date with git (runs, lineage tags, params, metric histories). Running it twice changes
    nothing the second time."""
    from mlfork.ops.mirroring.sync import sync

    result = sync(rebuild=rebuild)
    for message in result.warnings:
        warn(message)
    if result.moved_aside:
        warn(f"the broken tracking store was moved aside to {result.moved_aside}")
    if as_json:
        emit_json(result.to_dict())
        return
    note(
        f"synced {len(result.runs)} run(s) to {result.uri}: {result.delivered} pending write(s)"
        f" delivered" + (f", {result.deleted} run(s) rebuilt" if rebuild else "")
        + (f", {result.repaired} duplicate MLflow run(s) removed" if result.repaired else "")
    )
