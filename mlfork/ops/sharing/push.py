"""`mlfork push [RUN]...`: share runs the way code is shared. The DVC objects every
checkpoint of the runs references go to the DVC remote first (so that anyone can fork any
iteration, not only the tip), then the run branches to the git remote (so that nobody sees
a run whose data is not there yet). Both send only what the remote lacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlfork import naming
from mlfork.adapters import git_remote
from mlfork.errors import GitError, UsageError
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project


@dataclass
class PushResult:
    remote: str
    runs: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)  # branches the remote did not have as-is
    up_to_date: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # the remote moved on: pull first
    dvc_remote: str | None = None
    commits: int = 0  # distinct DVC states whose objects were pushed
    objects: int = 0  # DVC objects sent (0: the remote had them all)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def dvc_states(project: Project, revs: Sequence[str]) -> list[str]:
    """One commit per distinct set of DVC files (every dvc.lock and .dvc file, by blob):
    commits that record the same outputs reference the same objects."""
    git = project.git
    seen: dict[tuple[tuple[str, str], ...], str] = {}
    for rev in revs:
        key = tuple(git.find_files(rev, "dvc.lock")) + tuple(git.find_suffix(rev, ".dvc"))
        seen.setdefault(key, rev)
    return list(seen.values())


def push(
    path: str | os.PathLike[str] = ".",
    runs: Sequence[str] = (),
    *,
    remote: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> PushResult:
    """Push `runs` (default: every local run) to the git remote `remote` (default: the only
    one, else origin) and their DVC objects to the project's default DVC remote."""
    project = Project.open(path)
    try:
        git = project.git
        target = git_remote.choose(git.workdir, remote)
        local = lineage.run_names(project)
        names = [lineage.resolve_run(project, r) for r in runs] if runs else local
        for name in names:
            if name not in local:
                raise UsageError(f"run '{name}' has no local branch: only local runs are"
                                 " pushed ('mlfork pull' makes remote ones local)")
        result = PushResult(remote=target, runs=sorted(names))
        if not names:
            return result
        revs: list[str] = []
        for name in names:
            tip = lineage.tip(project, name)
            revs += [tip, *(cp.commit for cp in lineage.checkpoints(project, tip))]
        states = dvc_states(project, list(dict.fromkeys(revs)))
        result.dvc_remote = project.dvc.default_remote()
        if result.dvc_remote is None:
            result.warnings.append(
                "the project has no default DVC remote: only the run branches were pushed,"
                " and a teammate can fork only what their own cache holds (add one with"
                " 'dvc remote add -d NAME URL', then push again)")
        else:
            if progress is not None:
                progress(f"pushing the DVC objects of {len(states)} checkpoint state(s) to"
                         f" '{result.dvc_remote}'")
            from mlfork.adapters.dvc_remote import push_revs

            result.objects = push_revs(project.dvc, states)
            result.commits = len(states)
        refspecs = [f"{naming.ref_name(n)}:{naming.ref_name(n)}" for n in sorted(names)]
        for ref in git_remote.push(git.workdir, target, refspecs):
            name = naming.run_from_ref(ref.local) or ref.local
            if not ref.ok:
                result.rejected.append(name)
            elif ref.flag == "=":
                result.up_to_date.append(name)
            else:
                result.pushed.append(name)
        if result.rejected:
            raise GitError(
                f"the remote '{target}' has other commits on {', '.join(result.rejected)}"
                f" (pushed: {len(result.pushed)}): 'mlfork pull' shows how they diverged;"
                " a run branch is never overwritten")
        return result
    finally:
        project.close()
