"""The commands that make a run again from where it started, the one recipe both the
report's "Reproduce" section and `mlfork replay` print: a root run is `mlfork run` at its
base commit; a fork is `mlfork branch` at its fork point (its relative keys given back as
counted from there) and `mlfork resume`."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mlfork.models import RunRecord
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project


@dataclass
class Remake:
    kind: Literal["run", "fork"]
    start_commit: str  # the base commit of a root run, the fork point of a fork
    first_iteration: int  # the first iteration the commands compute
    overrides: list[str]  # as the command takes them
    commands: list[str]  # shell-quoted, one a line
    fork_from: dict[str, Any] | None = None  # {run, iteration, step} of a fork


def remake(
    project: Project,
    rec: RunRecord,
    name: str,
    *,
    through: int | None = None,
    pythonhashseed: str = "",
) -> Remake:
    """How to make `rec`'s run again as the run `name`, up to iteration `through` (default:
    its whole budget), with PYTHONHASHSEED set for the commands that run stages."""
    env = f"PYTHONHASHSEED={shlex.quote(pythonhashseed)} " if pythonhashseed else ""
    budget = rec.iterations
    if rec.parent is None:
        overrides = list(rec.overrides)
        run = ["mlfork", "run", "--name", name, "--iterations", str(budget), *overrides]
        return Remake("run", rec.base_commit, 0, overrides,
                      [f"git switch --detach {rec.base_commit[:12]}", env + shlex.join(run)])
    p = rec.parent
    first = lineage.inherited_until(p.iteration, p.step, rec.stages) + 1
    overrides = relative_back(project, rec.own_overrides, p.commit, first)
    branch = ["mlfork", "branch", "--from", p.run, "--from-iteration", str(p.iteration)]
    if rec.stages and p.step != rec.stages[-1]:
        branch += ["--from-step", p.step]
    branch += ["--name", name, "--iterations", str(max(budget - first, 0)), *overrides]
    resume = ["mlfork", "resume", name]
    if through is not None and through + 1 < budget:
        resume += ["--iterations", str(through + 1 - first)]
    return Remake("fork", p.commit, first, overrides,
                  [shlex.join(branch), env + shlex.join(resume)],
                  fork_from={"run": p.run, "iteration": p.iteration, "step": p.step})


def relative_back(
    project: Project, own: Sequence[str], fork_commit: str, completed: int
) -> list[str]:
    """A fork records its relative keys (counted from the fork point) as absolute values:
    give them back as `mlfork branch` takes them."""
    from mlfork.adapters import hydra

    relative = set(project.policy(fork_commit).relative)
    out: list[str] = []
    for ov in hydra.parse_overrides(list(own)):
        value = (ov.value_text or "").strip()
        if ov.key in relative and ov.kind != "delete" and value.isdigit() \
                and int(value) >= completed:
            out.append(ov.with_value(str(int(value) - completed)))
        else:
            out.append(ov.text)
    return out
