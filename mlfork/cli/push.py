"""mlfork push [RUN]... [--remote R]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note, warn


@click.command("push")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--remote", default=None, metavar="R",
              help="The git remote (default: the only one, else origin).")
@json_option
def command(runs: tuple[str, ...], remote: str | None, as_json: bool) -> None:
    """Share RUNs (default: every local run): the DVC objects that any checkpoint of them
    references go to the project's default DVC remote, then the branches mlfork/RUN go to
    the git remote. Both send only what the remote lacks, so that a teammate can fork any
    iteration. A branch the remote has moved on is never overwritten.

    \b
    Example: mlfork push base          (a teammate: mlfork pull, then mlfork branch --from base)
    """
    from mlfork.ops.sharing.push import push

    result = push(runs=runs, remote=remote, progress=note)
    for message in result.warnings:
        warn(message)
    if as_json:
        emit_json(result.to_dict())
        return
    if result.dvc_remote:
        note(f"DVC: {result.objects} object(s) sent to '{result.dvc_remote}' for"
             f" {result.commits} checkpoint state(s) (the rest it had)")
    click.echo(f"pushed to '{result.remote}': {len(result.pushed)} run(s) sent"
               + (f" ({', '.join(result.pushed)})" if result.pushed else "")
               + f", {len(result.up_to_date)} already there")
