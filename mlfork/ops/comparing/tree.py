"""`mlfork tree`: every run as a tree of forks, read from git."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mlfork.models import RunInfo
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project


@dataclass
class TreeNode:
    """A run and the forks made from it (`mlfork tree`)."""

    info: RunInfo
    children: list[TreeNode] = field(default_factory=list)
    missing_parent: str | None = None  # the parent run's branch is gone
    inherited_until: int | None = None  # the last iteration inherited from the parent

    @property
    def fork_label(self) -> str | None:
        """`2` for a fork after iteration 2, `2/train` for one inside it."""
        p = self.info.parent
        if p is None:
            return None
        at_end = self.inherited_until == p.iteration
        return f"{p.iteration}" if at_end else f"{p.iteration}/{p.step}"

    @property
    def name(self) -> str:
        return self.info.name

    def to_dict(self) -> dict[str, Any]:
        i = self.info
        return {
            "name": i.name,
            "status": i.status,
            "done": i.done,
            "budget": i.budget,
            "headline": i.headline,
            "headline_value": i.headline_value,
            "checked_out": i.checked_out,
            "tip": i.tip,
            "parent": i.parent.run if i.parent else None,
            "fork": {
                "iteration": i.parent.iteration,
                "step": i.parent.step,
                "commit": i.parent.commit,
                "inherited_until": self.inherited_until,
            }
            if i.parent
            else None,
            "missing_parent": self.missing_parent,
            "merged": list(i.merged),
            "children": [c.to_dict() for c in self.children],
        }

    def walk(self) -> list[TreeNode]:
        out = [self]
        for child in self.children:
            out += child.walk()
        return out


def tree(path: str | os.PathLike[str] = ".") -> list[TreeNode]:
    """Every run as a forest of forks, read from git: roots by name, each run's forks by
    fork iteration, then name."""
    project = Project.open(path, require_dvc=False)
    nodes: dict[str, TreeNode] = {}
    for name in lineage.visible_runs(project):
        info = lineage.run_info(project, name)
        until = None
        if info.parent is not None:
            stages = lineage.record(project, name, info.tip).stages
            until = lineage.inherited_until(info.parent.iteration, info.parent.step, stages)
        nodes[name] = TreeNode(info, inherited_until=until)
    roots: list[TreeNode] = []
    for node in nodes.values():
        parent = node.info.parent
        if parent is not None and parent.run in nodes and parent.run != node.name:
            nodes[parent.run].children.append(node)
        else:
            if parent is not None:
                node.missing_parent = parent.run
            roots.append(node)
    reachable = {n.name for r in roots for n in r.walk()}
    for node in nodes.values():  # a cycle (hand-edited records) must not hide runs
        if node.name not in reachable:
            node.missing_parent = node.info.parent.run if node.info.parent else None
            roots.append(node)
            reachable |= {n.name for n in node.walk()}
    for node in nodes.values():
        node.children.sort(
            key=lambda c: (c.info.parent.iteration if c.info.parent else -1, c.name)
        )
    roots.sort(key=lambda n: n.name)
    return roots
