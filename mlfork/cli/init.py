"""mlfork init [DIR]"""

from __future__ import annotations

import click

from mlfork.cli._output import emit_json, note


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--example", type=click.Choice(["numpy", "torch"]), default=None,
              help="Which example a new project gets: numpy (the default; scikit-learn's"
                   " digits, NumPy models) or torch (a PyTorch network with AdamW, a scheduler,"
                   " a DataLoader, dropout and dvclive's per-step logging; needs"
                   " 'mlfork-runs[example,torch]').")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(directory: str, example: str | None, as_json: bool) -> None:
    """Create the example project in DIRECTORY (new or empty), or adopt the git+DVC project
    DIRECTORY is in.

    A new project gets git, DVC with cache links (reflink, hardlink or symlink: artifacts are
    linked, never copied), the example pipeline and its Hydra config, and a first commit. An
    existing project only gets machine-local settings; no tracked file changes.
    """
    from mlfork.ops.kernel.init import init

    result = init(directory, example)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"{result.mode} mlfork project at {result.root}")
    for action in result.actions:
        note(f"  - {action}")
    for text in result.notes:
        note(f"note: {text}")
    where = "" if directory == "." else f"cd {directory} && "
    # the run's budget: the example's config, or --iterations N
    note(f"next: {where}mlfork run --name base" + ("" if result.mode == "created"
                                                   else " --iterations 4"))
