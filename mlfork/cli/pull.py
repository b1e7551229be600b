"""mlfork pull [RUN]... [--remote R]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, warn


@click.command("pull")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--remote", default=None, metavar="R",
              help="The git remote (default: the only one, else origin).")
@json_option
def command(runs: tuple[str, ...], remote: str | None, as_json: bool) -> None:
    """Fetch the run branches of the git remote (default: every run): new runs get a local
    branch, local runs the remote moved ahead are fast-forwarded. A checked-out branch is
    never rewritten, and a run that diverged is reported and left as it is. DVC objects are
    fetched later, exactly those a fork or a resume needs.

    \b
    Example: mlfork pull && mlfork runs
    """
    from mlfork.ops.sharing.pull import pull

    result = pull(runs=runs, remote=remote)
    for message in result.warnings:
        warn(message)
    if as_json:
        emit_json(result.to_dict())
        return
    parts = [f"{len(result.created)} new", f"{len(result.updated)} updated",
             f"{len(result.current)} up to date"]
    if result.ahead:
        parts.append(f"{len(result.ahead)} ahead (mlfork push)")
    if result.diverged:
        parts.append(f"{len(result.diverged)} diverged")
    click.echo(f"pulled from '{result.remote}': " + ", ".join(parts)
               + (f" ({', '.join(result.created)})" if result.created else ""))
