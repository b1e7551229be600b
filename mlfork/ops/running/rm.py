"""`mlfork rm RUN`: remove a run: its branch, its local state (state, logs, pending tracking
writes) and its MLflow run (marked deleted). Forks that depend on it keep its commits in
their own history; the DVC cache is never touched (other runs share its objects)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from mlfork import faults, naming
from mlfork.adapters.tracking.writer import Tracker
from mlfork.errors import TrackingError, UnknownRun, UsageError
from mlfork.ops.kernel import lineage, worktrees
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring import background, outbox
from mlfork.ops.mirroring import mirror as track


@dataclass
class RmResult:
    run: str
    branch: str
    tip: str
    forks: list[str] = field(default_factory=list)  # runs whose lineage goes through it
    # "deleted" (--wait), "background" (the background `mlfork sync` marks it deleted),
    # "queued" (the store is down: the next `mlfork sync` does)
    tracking: str = "deleted"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def dependents(project: Project, name: str) -> list[str]:
    """The runs whose lineage goes through `name` (its forks, theirs, ...)."""
    out = []
    for other in lineage.run_names(project):
        if other == name:
            continue
        rec = lineage.record(project, other)
        seen = {other}
        while rec.parent is not None and rec.parent.run not in seen:
            if rec.parent.run == name:
                out.append(other)
                break
            seen.add(rec.parent.run)
            parent = project.read_record(rec.parent.commit)
            if parent is None:
                break
            rec = parent
    return sorted(out)


def rm(
    path: str | os.PathLike[str] = ".", *, run: str, force: bool = False,
    wait: bool | None = None,
) -> RmResult:
    """Remove run `run` (its exact name or branch: never a prefix). Refused while it is
    checked out, or while forks depend on it unless `force`. Its MLflow run is marked
    deleted by a background `mlfork sync` unless `wait` (default: MLFORK_WAIT)."""
    project = Project.open(path, require_dvc=False)
    try:
        name = naming.run_from_ref(run) or run
        with project.lock(name, "rm"):
            names = lineage.run_names(project)
            if name not in names:
                raise UnknownRun(run, names)
            if lineage.current_run(project) == name:
                raise UsageError(
                    f"run '{name}' is checked out: switch to another branch first"
                    " ('git switch main'), then remove it"
                )
            worktrees.check_free(project, name)
            forks = dependents(project, name)
            if forks and not force:
                raise UsageError(
                    f"{len(forks)} run(s) fork '{name}' ({', '.join(forks[:8])}): remove them"
                    " first, or pass --force (they keep its commits in their history)"
                )
            tip = lineage.tip(project, name)
            result = RmResult(run=name, branch=naming.branch_name(name), tip=tip, forks=forks)
            remove(project, name, on_warning=result.warnings.append, result=result,
                   wait=background.waits(wait))
            return result
    finally:
        project.close()


def remove(
    project: Project,
    name: str,
    on_warning: Callable[[str], None],
    result: RmResult | None = None,
    wait: bool = True,
) -> None:
    """Delete a run's branch, local state and MLflow run (the last through the outbox, so
    an unreachable tracking store only delays it)."""
    git = project.git
    tip = git.resolve_branch(naming.branch_name(name))
    if tip is None:
        return
    uri = track.tracking_uri(project, tip, write=True)
    experiment = track.experiment_name(project, tip)
    for pending in outbox.pending(project):
        if outbox.outbox_run(pending) == name:
            pending.unlink()
    # the MLflow deletion waits in the outbox before the branch goes: killed in between,
    # the next `mlfork sync` still delivers it
    parked = outbox.park(project, track.RunWrite(run=name, experiment=experiment,
                                                start_time=0, deleted=True))
    try:
        git.delete_branch(naming.branch_name(name), tip)
    except BaseException:
        parked.unlink(missing_ok=True)
        raise
    faults.point("rm.deleted")
    state = project.home / naming.STATE_DIR / f"{name}.json"
    state.unlink(missing_ok=True)
    logs = project.home / naming.LOGS_DIR / name
    if logs.is_dir():
        shutil.rmtree(logs, ignore_errors=True)
    if not wait:
        background.start(project)
        if result is not None:
            result.tracking = "background"
        return
    tracker = Tracker(uri)
    try:
        outbox.flush(project, tracker)
        delivered = True
    except TrackingError as exc:
        on_warning(f"{exc}; the MLflow run of '{name}' is marked deleted by the next"
                   " 'mlfork sync'")
        delivered = False
    for message in tracker.warnings:
        on_warning(message)
    if result is not None:
        result.tracking = "deleted" if delivered else "queued"
