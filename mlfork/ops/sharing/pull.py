"""`mlfork pull [RUN]...`: fetch the run branches of a git remote. New runs get a local
branch; a local run the remote moved ahead is fast-forwarded, unless it is checked out (a
checked-out branch is never rewritten: the command to move it is printed); a local run
that diverged from the remote's is reported and left alone. No DVC object is fetched: a
command that needs a checkpoint's objects (a fork, a resume) fetches exactly those."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlfork import naming
from mlfork.adapters import git_remote
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project


@dataclass
class PullResult:
    remote: str
    created: list[str] = field(default_factory=list)  # new local run branches
    updated: list[str] = field(default_factory=list)  # fast-forwarded
    current: list[str] = field(default_factory=list)  # already as the remote has them
    ahead: list[str] = field(default_factory=list)  # local commits the remote lacks: push
    diverged: list[str] = field(default_factory=list)  # both moved: left alone
    checked_out: list[str] = field(default_factory=list)  # behind, but checked out
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def pull(
    path: str | os.PathLike[str] = ".", runs: Sequence[str] = (), *, remote: str | None = None
) -> PullResult:
    """Fetch `runs` (default: every run) from the git remote `remote` (default: the only
    one, else origin) and bring the local run branches up to them where git allows."""
    project = Project.open(path, require_dvc=False)
    try:
        git = project.git
        target = git_remote.choose(git.workdir, remote)
        names = [naming.run_from_ref(r) or r.rsplit("/", 1)[-1] for r in runs]
        base = f"refs/remotes/{target}/{naming.BRANCH_PREFIX}"
        specs = ([f"+{naming.ref_name(n)}:{base}{n}" for n in names] if names
                 else [f"+{naming.REF_PREFIX}*:{base}*"])
        with project.lock("", "pull"):
            git_remote.fetch(git.workdir, target, specs)
            result = PullResult(remote=target)
            current = lineage.current_run(project)
            for remote_run in git.remote_branches(naming.BRANCH_PREFIX):
                if remote_run.remote != target:
                    continue
                name = naming.run_from_ref(naming.BRANCH_PREFIX + remote_run.name)
                if name is None or (names and name not in names):
                    continue
                _bring(project, name, remote_run.tip, name == current, result)
        return result
    finally:
        project.close()


def _bring(project: Project, name: str, theirs: str, checked_out: bool,
           result: PullResult) -> None:
    git = project.git
    branch = naming.branch_name(name)
    ours = git.resolve_branch(branch)
    if ours is None:
        if git.has_path(theirs, naming.RUN_RECORD):
            git.create_branch(branch, theirs)
            result.created.append(name)
        return
    if ours == theirs:
        result.current.append(name)
    elif git.is_ancestor(ours, theirs):
        if checked_out:
            result.checked_out.append(name)
            result.warnings.append(
                f"run '{name}' is checked out and behind '{result.remote}': bring it up with"
                f" 'git merge --ff-only {result.remote}/{branch}' (then 'dvc checkout')")
        else:
            git.move_branch(branch, ours, theirs)
            result.updated.append(name)
    elif git.is_ancestor(theirs, ours):
        result.ahead.append(name)
    else:
        result.diverged.append(name)
        result.warnings.append(
            f"run '{name}' diverged from '{result.remote}/{branch}': both have commits the"
            " other lacks; left as it is (fork one of them under another name, or reset"
            " one side with git)")
