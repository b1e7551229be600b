"""mlfork diff A B [--json | --md]"""

from __future__ import annotations

import click

from mlfork.cli._output import emit_json, note, table


@click.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--md", "as_md", is_flag=True, help="Print Markdown (as in 'mlfork report').")
@click.option("--source", type=click.Choice(["auto", "tracking", "git"]), default="auto",
              show_default=True, help="Where the metrics come from (see 'mlfork metrics').")
def command(a: str, b: str, as_json: bool, as_md: bool, source: str) -> None:
    """Compare runs A and B: their overrides, the keys of their composed configs that differ
    (params.yaml at each run's last commit), the metrics where they part (the newest
    checkpoint they share) and at each run's last iteration with deltas (B - A, judged by
    each metric's direction), and whether they are comparable (same locked keys).

    \b
    Example: mlfork diff base lr
    """
    from mlfork.ops.comparing.diff import diff

    if as_json and as_md:
        raise click.UsageError("--json and --md exclude each other")
    d = diff(a=a, b=b, source=source)  # type: ignore[arg-type]
    if d.source_note:
        note(f"mlfork: {d.source_note}")
    if as_json:
        emit_json(d.to_dict())
        return
    if as_md:
        from mlfork.ops.comparing.report import diff_markdown

        click.echo(diff_markdown(d), nl=False)
        return
    fp = d.fork_point
    where = (f"{fp.run} iteration {fp.iteration} {fp.step} ({fp.commit[:10]})" if fp
             else "no shared checkpoint")
    relation = (f"{d.a} is an ancestor of {d.b}" if d.a_is_ancestor else
                f"{d.b} is an ancestor of {d.a}" if d.b_is_ancestor else "")
    click.echo(f"{d.a} vs {d.b}: they part at {where}" + (f"; {relation}" if relation else ""))
    click.echo("")
    table(["run", "overrides", "own"],
          [[d.a, " ".join(d.overrides["a"]) or "-", " ".join(d.overrides["a_own"]) or "-"],
           [d.b, " ".join(d.overrides["b"]) or "-", " ".join(d.overrides["b_own"]) or "-"]])
    click.echo("")
    if d.config:
        table(["config key", d.a, d.b],
              [[c.key, _text(c.a) if c.in_a else "(absent)", _text(c.b) if c.in_b else "(absent)"]
               for c in d.config])
    else:
        click.echo("config: params.yaml is the same")
    click.echo("")
    at = f"fork point (it {fp.metrics_iteration})" if fp and fp.metrics_iteration is not None \
        else "fork point"

    def it(value: int | None) -> str:
        return f"it {value}" if value is not None else "no iteration yet"

    if not d.metrics_logged:
        from mlfork.ops.comparing.stitch import NO_METRICS

        click.echo(f"metrics: {NO_METRICS}")
    else:
        table(["metric", at, f"{d.a} ({it(d.a_iteration)})", f"{d.b} ({it(d.b_iteration)})",
               f"{d.b} - {d.a}", ""],
              [[m.metric + (" *" if m.metric == d.headline else ""), m.fork, m.a, m.b,
                None if m.b_minus_a is None else f"{m.b_minus_a:+.4f}", m.verdict or "-"]
               for m in d.metrics])
    click.echo("")
    bad = [c.key for c in d.locked if not c.same]
    if not d.locked:
        click.echo("comparable: yes (the policy locks none of this project's keys)")
    elif d.comparable:
        click.echo("comparable: yes (same locked keys: "
                   + ", ".join(c.key for c in d.locked) + ")")
    else:
        click.echo(f"comparable: NO (locked keys differ: {', '.join(bad)})")


def _text(value: object) -> str:
    """A config value as written in params.yaml (floats unrounded)."""
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)
