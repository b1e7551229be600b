"""`mlfork push [RUN]...`: share runs the way code is shared. The DVC objects every
checkpoint of the runs references go to the DVC remote first (so that anyone can fork any
iteration, not only the tip), then the run branches to the git remote (so that nobody sees
a run whose data is not there yet). Both send only what the remote lacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    commits: int = 0  # checkpoints whose objects were pushed
    objects: int = 0  # DVC objects sent (0: the remote had them all)
    absent: int = 0  # objects of the checkpoints this cache does not hold (not pushed)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def checkpoint_objects(project: Project, revs: Sequence[str]) -> list[tuple[str, str]]:
    """(md5, hash name) of every cached output the dvc.lock and .dvc files of `revs` record
    (each file read once: checkpoints share most of them); `cache: false` outputs of the
    pipeline are not objects."""
    from mlfork.adapters.dvc_files import dvcfile_outputs, lock_outputs

    git = project.git
    uncached = {o.path for o in project.pipeline().outs() if not o.cache}
    seen: set[str] = set()
    found: dict[tuple[str, str], None] = {}
    for rev in revs:
        files: list[tuple[str, str, Callable[[bytes], dict[str, dict[str, Any]]]]] = [
            (path, oid, lock_outputs) for path, oid in git.find_files(rev, "dvc.lock")]
        files += [(path, oid, dvcfile_outputs) for path, oid in git.find_suffix(rev, ".dvc")]
        for path, oid, parse in files:
            if oid in seen:
                continue
            seen.add(oid)
            folder = os.path.dirname(path)
            for out, entry in parse(git.blob(oid)).items():
                md5 = entry.get("md5")
                rel = os.path.normpath(os.path.join(folder, out))
                if not md5 or rel in uncached or entry.get("cache") is False:
                    continue
                name = "md5" if entry.get("hash") == "md5" else "md5-dos2unix"
                found[(str(md5), name)] = None
    return list(found)


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
        revs = list(dict.fromkeys(revs))
        result.dvc_remote = project.dvc.default_remote()
        if result.dvc_remote is None:
            result.warnings.append(
                "the project has no default DVC remote: only the run branches were pushed,"
                " and a teammate can fork only what their own cache holds (add one with"
                " 'dvc remote add -d NAME URL', then push again)")
        else:
            objects = checkpoint_objects(project, revs)
            if progress is not None:
                progress(f"pushing the {len(objects)} DVC object(s) of {len(revs)} commit(s)"
                         f" to '{result.dvc_remote}'")
            from mlfork.adapters.dvc_remote import push_objects

            result.objects, result.absent = push_objects(project.dvc, objects)
            result.commits = len(revs)
            if result.absent:
                result.warnings.append(
                    f"{result.absent} object(s) the checkpoints record are not in this DVC"
                    " cache (removed by 'dvc gc'?) and were not pushed: a teammate cannot"
                    " fork where they are needed")
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
