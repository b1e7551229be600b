"""mlfork ui [--port P]"""

from __future__ import annotations

import os
import subprocess

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note


@click.command("ui")
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default 5000).")
@click.option(
    "--print-only", is_flag=True, help="Print the address and the command; start nothing."
)
@json_option
def command(port: int | None, print_only: bool, as_json: bool) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's tracking store and print its address.

    The address printed opens the project's experiment in the UI's "Model training" view.
    Forks are nested under their parents in the run list (with no search filter and the
    default sort); filter `tags.mlfork.root_run = 'base'` shows one lineage. Ctrl-C stops it.
    """
    from mlfork.ops.mirroring.ui import plan

    p = plan(port=port)
    if as_json:
        emit_json(p.to_dict())
    else:
        click.echo(p.open)
    if p.waiting:
        note(f"mlfork: {p.waiting} tracking write(s) are still on their way to the store (in"
             " the background): the UI may lag git until they land ('mlfork sync' waits)")
    if not p.argv:
        note(f"the tracking store is a server: open {p.open}")
        return
    note(f"MLflow UI for {p.uri} (experiment '{p.experiment}') at {p.url}; open {p.open};"
         " Ctrl-C stops it")
    if print_only:
        note("command: " + " ".join(p.argv))
        return
    proc = subprocess.Popen(p.argv, env={**os.environ, **p.env})
    try:
        raise SystemExit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
