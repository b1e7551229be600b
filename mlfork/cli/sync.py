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
@click.option("--background", is_flag=True, hidden=True,
              help="Deliver the outbox only, unless another process does (started by mlfork).")
@json_option
def command(rebuild: bool, background: bool, as_json: bool) -> None:
    """Deliver the tracking writes waiting in the outbox, then bring the tracking store up to
    date with git (runs, lineage tags, params, metric histories). Only what the store lacks
    is sent; running it twice changes nothing the second time.

    Commands that write lineage (branch, rm, the end of run and resume) deliver their
    tracking writes in the background unless given --wait; this waits for that delivery
    first. Its log: .mlfork/local/sync.log.
    """
    if background:
        _background()
        return
    from mlfork.ops.mirroring.sync import sync

    result = sync(rebuild=rebuild)
    for message in result.warnings:
        warn(message)
    if result.moved_aside:
        warn(f"the broken tracking store was moved aside to {result.moved_aside}")
    if as_json:
        emit_json(result.to_dict())
        return
    total = len(result.runs) + len(result.current)
    note(
        f"synced {total} run(s) to {result.uri}: {result.delivered} pending write(s)"
        f" delivered, {len(result.runs)} run(s) updated ({result.points} metric point(s)),"
        f" {len(result.current)} already up to date"
        + (f", {result.deleted} run(s) rebuilt" if rebuild else "")
        + (f", {result.repaired} duplicate MLflow run(s) removed" if result.repaired else "")
    )


def _background() -> None:
    """The detached delivery: what it did goes to its log (its stdout), one JSON line."""
    import json
    import time

    from mlfork.ops.kernel.project import Project
    from mlfork.ops.mirroring.background import deliver

    started = time.monotonic()
    project = Project.open(".", require_dvc=False)
    done = deliver(project)
    done["seconds"] = round(time.monotonic() - started, 3)
    click.echo(json.dumps(done, sort_keys=True))
