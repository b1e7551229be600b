"""mlfork metrics [RUN]... [--stitched | --own] [--metric M]... [--format table|csv|json]"""

from __future__ import annotations

import math

import click

from mlfork.cli._output import emit_json, note, table


@click.command("metrics")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--stitched/--own", "stitched", default=True,
              help="The lineage's points up to each fork point, then the run's own (default);"
                   " or the run's own points only.")
@click.option("--metric", "-m", "names", multiple=True, metavar="M",
              help="Only this metric (repeatable).")
@click.option("--x", "x", type=click.Choice(["iteration", "step"]), default="iteration",
              show_default=True,
              help="iteration: one point per iteration (the metrics files); step: the per-step"
                   " series (DVC plots files, dvclive's) on the run's global step axis, which"
                   " goes on across iterations and forks.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="table: one column per metric; csv and json: one row per"
                                      " (run, iteration or step, metric).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--source", type=click.Choice(["auto", "tracking", "git"]), default="auto",
              show_default=True,
              help="Where the points come from: the tracking store, git, or the store unless it"
                   " is unreachable or behind git.")
def command(runs: tuple[str, ...], stitched: bool, names: tuple[str, ...], x: str, fmt: str,
            as_json: bool, source: str) -> None:
    """The metric series of RUNs (default: the run checked out), one row per run,
    iteration and metric, with the run that owns each point: a fork's series starts
    with its ancestors' points (inherited) and goes on with its own.

    \b
    Example: mlfork metrics lr2 --metric accuracy
             mlfork metrics base lr --format csv > metrics.csv
             mlfork metrics lr2 --x step --metric loss
    """
    from mlfork.ops.comparing.stitch import metrics, steps

    read = steps if x == "step" else metrics
    df = read(runs=list(runs) or None, mode="stitched" if stitched else "own",
              metrics=names, source=source)  # type: ignore[arg-type]
    if df.attrs.get("note"):
        note(f"mlfork: {df.attrs['note']}")
    fmt = "json" if as_json else fmt
    if fmt == "json":
        records = df.to_dict("records")
        for r in records:
            if isinstance(r["value"], float) and not math.isfinite(r["value"]):
                r["value"] = None if math.isnan(r["value"]) else str(r["value"])
        emit_json(records)
    elif fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif df.empty and df.attrs.get("logged", True):
        note("no metric points: 'mlfork log RUN' shows the run's checkpoints")
    elif df.empty:
        pass  # the note above said why
    else:
        wide = df.pivot_table(index=["run", x, "owner"], columns="metric",
                              values="value", sort=False).reset_index()
        keys = [c for c in wide.columns if c not in ("run", x, "owner")]
        rank = {r: i for i, r in enumerate(dict.fromkeys(df["run"]))}
        wide = wide.sort_values(["run", x],
                                key=lambda s: s.map(rank) if s.name == "run" else s)
        rows = [[r["run"], r[x], r["owner"] if r["owner"] != r["run"] else "(own)",
                 *[r[k] for k in keys]] for r in wide.to_dict("records")]
        table(["run", x, "owner", *keys], rows)
