"""mlfork merge RUN... --name NAME [--strategy mean|weighted] [--weights W,...] [--only PATTERN]"""

from __future__ import annotations

import sys

import click

from mlfork.cli._options import MAX_ITERATIONS, json_option, wait_option
from mlfork.cli._output import ProgressView, emit_json, note, render_run_result


def _weights(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{value}': give numbers separated by commas (0.7,0.3)") from None


@click.command("merge")
@click.argument("runs", nargs=-1, required=True, metavar="RUN[@N]...")
@click.option("--name", required=True, help="The merged run's name.")
@click.option("--strategy", type=click.Choice(["mean", "weighted"]), default="mean",
              show_default=True, help="mean: every run alike; weighted: by --weights.")
@click.option("--weights", callback=_weights, default=None, metavar="W1,W2,...",
              help="One weight per run (--strategy weighted); they are scaled to sum to 1.")
@click.option("--only", default=None, metavar="PATTERN",
              help="Average only the tensors whose names match this glob (e.g. '*lora*');"
                   " the others are the first run's.")
@click.option("--object", "obj", default="model", show_default=True, metavar="NAME",
              help="The object of the mlfork.state checkpoints to average (the keyword it was"
                   " saved under).")
@click.option("--iterations", "-n", type=click.IntRange(min=0, max=MAX_ITERATIONS), default=0,
              show_default=True, metavar="K",
              help="Iterations the merged run trains on from the soup (with 'mlfork resume').")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Tag the merged run (k or k=v).")
@click.option("--switch", is_flag=True, help="Check the merged run out (its soup in the"
                                             " workspace).")
@click.option("--run", "run_now", is_flag=True,
              help="Check it out and train its --iterations at once (like resume).")
@wait_option
@json_option
def command(runs: tuple[str, ...], name: str, strategy: str, weights: list[float] | None,
            only: str | None, obj: str, iterations: int, tags: tuple[str, ...], switch: bool,
            run_now: bool, wait: bool | None, as_json: bool) -> None:
    """Average the checkpoints of RUNs (a model soup) into the new run NAME.

    Each RUN gives its latest completed iteration's checkpoint, RUN@N its iteration N's.
    The checkpoints must be mlfork.state files (see the README); the floating-point tensors
    of their `model` (--object) are averaged, all of them or those --only names; the rest
    of the state is the first run's. The merged run forks the first run at its checkpoint:
    its first commit is a git merge commit with every source checkpoint as a parent, and
    its dvc.lock names the averaged checkpoint, so 'mlfork resume NAME -n K' trains on from
    it. Refused, with nothing written, when the runs' locked keys differ or their model
    states' names, shapes or dtypes do (exit 20, the first mismatch named).

    \b
    Example: mlfork merge lr-a lr-b --name soup
             mlfork merge a@3 b@3 c@3 --strategy weighted --weights 2,1,1 --name soup3
             mlfork merge a b --only '*adapter*' --name adapters -n 1 --run
    """
    from mlfork.ops.running.merge import merge

    with ProgressView() as view:
        result = merge(sources=runs, name=name, strategy=strategy, weights=weights, only=only,
                       obj=obj, iterations=iterations, tags=tags, switch=switch or run_now,
                       run=run_now, argv=["mlfork", *sys.argv[1:]], progress=view, wait=wait)
    if as_json:
        emit_json(result.to_dict())
    else:
        shown = ", ".join(f"{s['run']}@{s['iteration']} ×{s['weight']:.4g}"
                          for s in result.sources)
        click.echo(f"merged '{result.name}' ({result.strategy} of {shown}): {len(result.averaged)}"
                   f" tensor(s) averaged, {len(result.kept)} kept from the first"
                   f" (branch {result.branch}, {result.commit[:10]})")
    if result.run is not None:
        render_run_result(result.run)
    elif result.switched:
        note(f"next: mlfork resume {result.name} --iterations 1")
    else:
        note(f"next: mlfork resume {result.name} --iterations 1   (trains on from the soup)")
