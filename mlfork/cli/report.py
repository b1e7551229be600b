"""mlfork report [FORK] [--base RUN] [-o report.md] [--assets DIR] [--force]"""

from __future__ import annotations

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note


@click.command("report")
@click.argument("fork", required=False, metavar="[FORK]")
@click.option("--base", default=None, metavar="RUN",
              help="The run to compare with (default: the fork's parent); must be an"
                   " ancestor of FORK unless --force.")
@click.option("-o", "--output", default="report.md", show_default=True, metavar="FILE",
              help="Where to write the Markdown (its folder must exist).")
@click.option("--assets", default=None, metavar="DIR",
              help="Where to write the plot image (default: the report's folder).")
@click.option("--force", is_flag=True, help="Compare with a --base that is not an ancestor.")
@click.option("--source", type=click.Choice(["auto", "tracking", "git"]), default="auto",
              show_default=True, help="Where the metrics come from (see 'mlfork metrics').")
@json_option
def command(fork: str | None, base: str | None, output: str, assets: str | None,
            force: bool, source: str, as_json: bool) -> None:
    """Write a pull-request report of FORK (default: the run checked out) against its parent
    or --base: the lineage (a Mermaid graph), the overrides, the config diff, a metrics
    table (base at the fork point, base final, fork final, delta, better or worse), the
    stitched curves as an image beside the report, the locked-key check, and the commands
    that reproduce the fork. A hidden marker `<!-- mlfork-report: FORK -->` lets a CI job
    update its earlier comment (examples/github-actions/mlfork-report.yml).

    \b
    Example: mlfork report lr -o report.md
             cat report.md >> "$GITHUB_STEP_SUMMARY"
    """
    from mlfork.ops.comparing.report import report

    result = report(fork=fork, base=base, output=output, assets=assets, force=force,
                    source=source)  # type: ignore[arg-type]
    if as_json:
        emit_json(result.to_dict())
        return
    if result.source_note:
        note(f"mlfork: {result.source_note}")
    click.echo(result.path)
    if result.image:
        click.echo(result.image)
    if result.forced:
        note(f"mlfork: warning: '{result.base}' is not an ancestor of '{result.fork}':"
             " compared anyway (--force)")
    note(f"report of '{result.fork}' against '{result.base}' written"
         + ("" if result.comparable else "; the locked keys differ: not comparable"))
