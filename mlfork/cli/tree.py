"""mlfork tree [--json]"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mlfork.cli._options import json_option
from mlfork.cli._output import emit_json, note

if TYPE_CHECKING:
    from mlfork.ops.comparing.tree import TreeNode


@click.command("tree")
@json_option
def command(as_json: bool) -> None:
    """Every run as a tree of forks, like `git log --graph` for runs: each edge says where
    the fork was made (@N: after iteration N; @N/STAGE: inside it, after STAGE), each node
    the run's status, iterations done/budget and headline metric. `*` marks the run checked
    out."""
    from mlfork.ops.comparing.tree import tree

    roots = tree()
    if as_json:
        emit_json([r.to_dict() for r in roots])
        return
    if not roots:
        note("no runs yet: start one with 'mlfork run --name base'")
        return
    lines: list[tuple[str, str]] = []

    def walk(node: TreeNode, prefix: str, tail: str) -> None:
        i = node.info
        at = f"  @{node.fork_label}" if node.fork_label and not node.missing_parent else ""
        if node.missing_parent:
            at = f"  (forked from '{node.missing_parent}', whose branch is gone)"
        if i.merged:
            at += f"  (merge of {', '.join(i.merged)})"
        head = f"{i.headline}={i.headline_value:.4f}" if i.headline_value is not None else "-"
        mark = "* " if i.checked_out else ""
        where = f"{i.remote}/" if i.remote else ""
        lines.append((f"{prefix}{mark}{where}{i.name}{at}",
                      f"{i.status} {i.done}/{i.budget}  {head}"))
        for k, child in enumerate(node.children):
            end = k == len(node.children) - 1
            walk(child, tail + ("└── " if end else "├── "), tail + ("    " if end else "│   "))

    for root in roots:
        walk(root, "", "")
    width = max(len(left) for left, _ in lines)
    for left, right in lines:
        click.echo(f"{left.ljust(width)}  {right}")
