"""`mlfork branch`: fork a run at a checkpoint (DESIGN.md section 5).

Everything is validated before the first write. The writes are then: the fork's branch at
the checkpoint commit (created under a ref lock, so one of two racing processes wins), one
commit with the fork's run record and re-composed params.yaml (written straight into the
object database: the workspace is not touched), the switch, and the MLflow run last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlfork import faults, naming
from mlfork.errors import MalformedFile, UsageError
from mlfork.models import Checkpoint, ParentRef, RunRecord, RunResult
from mlfork.ops.kernel import lineage, workspace
from mlfork.ops.kernel.guard import guarded
from mlfork.ops.kernel.project import (
    Project,
    ProjectLock,
)
from mlfork.ops.mirroring import background, outbox
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.running import params
from mlfork.ops.running.common import (
    Event,
    Progress,
    check_new_name,
    check_overrides,
    check_positive,
    check_tags,
    handoff_files,
    next_free_name,
    now_iso,
    quiet,
    record_commit,
    runtime_options,
)
from mlfork.ops.running.engine import advance
from mlfork.ops.running.inherit import check_locked, pick_checkpoint, resolve_overrides


@dataclass
class ForkResult:
    """The new run: where it came from and what it will do."""

    name: str
    branch: str
    fork_run: str  # the run that owns the checkpoint (the resolved parent)
    fork_iteration: int
    fork_step: str
    fork_commit: str
    source: str  # the run named with --from
    budget: int
    start_iteration: int  # the fork's first iteration of its own
    overrides: list[str]
    own_overrides: list[str]
    tags: list[str]
    switched: bool
    commit: str
    run: RunResult | None = None
    # where its MLflow run stands: "delivered" (--wait), "background" (the background
    # `mlfork sync` delivers it), "queued" (the store is down: the next sync delivers it)
    tracking: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run"] = self.run.to_dict() if self.run else None
        return data


def branch(
    path: str | os.PathLike[str] = ".",
    source: str | None = None,
    *,
    from_iteration: int | None = None,
    from_step: str | None = None,
    name: str | None = None,
    iterations: int | None = None,
    tags: Sequence[str] = (),
    inherit_tags: bool = False,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    switch: bool = True,
    run: bool = False,
    overrides: Sequence[str] = (),
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    echo: bool = False,
    timings: dict[str, float] | None = None,
    wait: bool | None = None,
) -> ForkResult:
    """Fork a run at a checkpoint into the new run `name` (see DESIGN.md section 5).

    Everything is checked before the first write; a failure before the fork is complete
    (its branch, its commit, the switch) leaves refs, HEAD, index and workspace as they
    were. With `run`, the fork then continues like `mlfork resume`. Its MLflow run is
    written by a background `mlfork sync` unless `wait` (default: MLFORK_WAIT).

    `timings`, if given, receives the seconds of the git, DVC and config work up to the
    MLflow write (`git_dvc`: validation, the branch and its commit, the switch) and of the
    MLflow write (`mlflow`); bench/fork.py reads them. The fork's own run (`run=True`) is
    not timed."""
    started = time.perf_counter()
    project = Project.open(path)
    try:
        with project.lock(name or "", "branch") as lock:
            plan = _plan(
                project, lock, source=source, from_iteration=from_iteration,
                from_step=from_step, name=name, iterations=iterations, tags=tags,
                inherit_tags=inherit_tags, timeout=timeout, stage_timeout=stage_timeout,
                switch=switch, run=run, overrides=overrides, argv=argv, progress=progress,
            )
            return _write(project, lock, plan, started, switch=switch, run=run, argv=argv,
                          progress=progress, echo=echo, timings=timings,
                          wait=background.waits(wait))
    finally:
        project.close()


def branches(
    path: str | os.PathLike[str] = ".",
    source: str | None = None,
    *,
    forks: Sequence[tuple[str, Sequence[str]]],
    from_iteration: int | None = None,
    from_step: str | None = None,
    iterations: int | None = None,
    tags: Sequence[str] = (),
    timeout: float | None = None,
    stage_timeout: float | None = None,
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    wait: bool | None = None,
    deferred: bool = False,
) -> list[ForkResult]:
    """Several forks of one checkpoint (`mlfork sweep`), each (name, overrides): every one
    planned and checked before the first is written, none switched to (the workspace is
    not touched). The fork point's checkpoint must be in the cache or on the DVC remote.
    `deferred`: their MLflow runs wait in the outbox for the jobs that run them next."""
    started = time.perf_counter()
    shown: set[str] = set()

    def once(event: Event) -> None:  # a warning true of every fork is said once
        if event.kind != "warning" or event.message not in shown:
            shown.add(event.message)
            progress(event)

    project = Project.open(path)
    try:
        with project.lock("", "sweep") as lock:
            taken: set[str] = set()
            plans = []
            for name, overrides in forks:
                if name in taken:
                    raise UsageError(f"two forks of the sweep would be named '{name}'")
                taken.add(name)
                plans.append(_plan(
                    project, lock, source=source, from_iteration=from_iteration,
                    from_step=from_step, name=name, iterations=iterations, tags=tags,
                    inherit_tags=False, timeout=timeout, stage_timeout=stage_timeout,
                    switch=False, run=False, overrides=overrides, argv=argv,
                    progress=once,
                ))
            if plans:
                cp = plans[0].checkpoint
                needed = _required_at(project, cp.commit, project.policy(cp.commit))
                if needed and project.dvc.default_remote() is None:
                    project.dvc.fetch(needed, f"the fork point {cp.run}@{cp.iteration}/"
                                      f"{cp.step} needs it")  # raises MissingData
            return [
                _write(project, lock, plan, started, switch=False, run=False, argv=argv,
                       progress=once, echo=False, timings=None,
                       wait=background.waits(wait), deferred=deferred)
                for plan in plans
            ]
    finally:
        project.close()


@dataclass
class _Plan:
    """A fork, checked and composed, before anything is written."""

    name: str
    source: str
    checkpoint: Checkpoint
    record: RunRecord
    files: dict[str, bytes]  # the fork's params files, composed
    completed: int  # the iterations the fork inherits
    current: str | None  # the run the workspace is on
    extra: list[str]  # files of the hand-off the switch may displace
    required: list[str]  # outputs the fork cannot go on without
    merged: list[str] = field(default_factory=list)  # more parents (`mlfork merge`)
    action: str = ""  # the commit's action and origin, when not a fork's
    origin: str = ""


def _plan(
    project: Project, lock: ProjectLock, *, source: str | None, from_iteration: int | None,
    from_step: str | None, name: str | None, iterations: int | None, tags: Sequence[str],
    inherit_tags: bool, timeout: float | None, stage_timeout: float | None, switch: bool,
    run: bool, overrides: Sequence[str], argv: Sequence[str], progress: Progress,
) -> _Plan:
    """Every check of `mlfork branch`, in order, and the fork's record: nothing written."""
    git = project.git
    src = lineage.resolve_run(project, source)
    src_tip = lineage.tip(project, src)
    src_rec = lineage.record(project, src, src_tip)
    stages = src_rec.stages
    latest = lineage.latest_checkpoint(project, src_tip)
    # the latest checkpoint is found at the tip; only a named one needs the history
    cps = ([] if from_iteration is None and from_step is None
           else lineage.checkpoints(project, src_tip))
    cp = pick_checkpoint(cps, stages, src, from_iteration, from_step, latest)
    if iterations is not None and iterations < 0:
        raise UsageError(f"--iterations must be 0 or more, got {iterations}")
    if run and not switch:
        raise UsageError("--run continues the fork in the workspace: drop --no-switch")
    check_positive("--timeout", timeout)
    check_positive("--stage-timeout", stage_timeout)
    check_overrides(overrides)
    check_tags(tags)
    if name is not None:
        check_new_name(project, name)

    parent_rec = project.read_record(cp.commit)  # the record of the run that ran it
    if parent_rec is None or parent_rec.name != cp.run:
        raise MalformedFile(
            naming.RUN_RECORD, f"the checkpoint {cp.commit[:10]} of '{cp.run}' does not carry"
            f" the record of '{cp.run}'"
        )
    policy = project.policy(cp.commit)
    completed = lineage.inherited_until(cp.iteration, cp.step, stages) + 1
    cumulative, own, k = resolve_overrides(
        parent_rec.overrides, overrides, policy.relative, policy.not_inherited, completed,
        groups=project.config_groups(cp.commit),
    )
    k = iterations if iterations is not None else k
    budget = completed + k if k is not None else src_rec.iterations

    fork_cfg = project.compose(cp.commit, cumulative, cp.iteration, budget)
    if own or list(cumulative) != list(parent_rec.overrides):  # else: the parent's config
        parent_cfg = project.compose(cp.commit, parent_rec.overrides, cp.iteration, budget)
        check_locked(parent_cfg, fork_cfg, policy.locked, own)

    name = name or next_free_name(project, f"{src}-fork")
    check_new_name(project, name)
    lock.run = name
    current = lineage.current_run(project)
    extra = handoff_files(policy)
    if switch:
        workspace.check(project, project.pipeline(), run=current, extra=extra)
    required = _required_at(project, cp.commit, policy) if switch else []
    if required and project.dvc.default_remote() is None:
        project.dvc.fetch(required, f"the fork point {cp.run}@{cp.iteration}/{cp.step}"
                          " needs it")  # raises MissingData: what to run
    all_tags = list(dict.fromkeys([*(parent_rec.tags if inherit_tags else []), *tags]))
    parent = ParentRef(run=cp.run, iteration=cp.iteration, step=cp.step, commit=cp.commit)
    rec = RunRecord(
        name=name,
        iterations=budget,
        overrides=cumulative,
        own_overrides=own,
        parent=parent,
        options=runtime_options(fork_cfg.config, timeout, stage_timeout),
        tags=all_tags,
        argv=list(argv),
        created=now_iso(),
        base_commit=parent_rec.base_commit,
        stages=stages,
    )
    from mlfork.ops.replaying import (
        manifest,  # the parent's manifest was made in another environment: warn
    )

    files = dict(fork_cfg.files)
    carried = _carried_dvc_config(project, cp.commit)
    if carried is not None:
        files[".dvc/config"] = carried
        progress(Event("note", name, message=(
            "the fork's first commit takes .dvc/config from HEAD: it names the DVC remote(s)"
            " the checkpoint's does not, which this clone's config.local completes")))
    for message in fork_cfg.warnings:
        progress(Event("warning", name, message=message))
    for message in manifest.drift_warnings(git.read(cp.commit, naming.REPLAY_MANIFEST)):
        progress(Event("warning", name, message=message))
    try:
        pipeline_at = project.dvc.pipeline_at(cp.commit) if own else None
        for text in params.untracked_overrides(pipeline_at, own) if pipeline_at else []:
            progress(Event("warning", name, message=(
                f"no stage depends on the key of '{text}': DVC will rerun nothing for it"
                " (dvc.yaml's params: name the keys each stage reads)"
            )))
    except Exception:  # noqa: BLE001 - a hint only
        pass

    return _Plan(name, src, cp, rec, files, completed, current, list(extra), required)


def _carried_dvc_config(project: Project, commit: str) -> bytes | None:
    """HEAD's `.dvc/config` where it names DVC remotes that the checkpoint's lacks: a remote
    added after the checkpoint was made. The fork pushes and pulls with today's remote;
    without it, a clone whose `.dvc/config.local` sets that remote's endpoint or keys has a
    DVC config that does not validate at the checkpoint (no `url`), for mlfork as for
    `dvc pull`."""
    git = project.git
    head = git.head_commit()
    if head is None:
        return None
    mine, theirs = git.read(head, ".dvc/config"), git.read(commit, ".dvc/config")
    if mine is None or mine == theirs:
        return None
    return mine if _remotes(mine) - _remotes(theirs or b"") else None


def _remotes(text: bytes) -> set[str]:
    from configobj import ConfigObj, ConfigObjError

    try:
        sections = ConfigObj(text.decode("utf-8", "replace").splitlines()).keys()
    except ConfigObjError:
        return set()
    return {key.split(None, 1)[1].strip("'\" ") for key in sections
            if key.startswith("remote ") and len(key.split(None, 1)) == 2}


def _write(
    project: Project, lock: ProjectLock, plan: _Plan, started: float, *, switch: bool,
    run: bool, argv: Sequence[str], progress: Progress, echo: bool,
    timings: dict[str, float] | None, wait: bool, deferred: bool = False,
) -> ForkResult:
    """The fork's commit and branch (created whole, or not at all: concurrent forks to one
    name race here and one wins), then the switch and the MLflow run; with `run`, its
    iterations. A failure before the fork is complete puts everything back."""
    git = project.git
    sig = git.signature()
    name, cp, rec = plan.name, plan.checkpoint, plan.record
    fork_branch = naming.branch_name(name)
    action = plan.action or f"fork {cp.run}@{cp.iteration}/{cp.step}"
    origin = plan.origin or f"forked from {cp.run} at iteration {cp.iteration} {cp.step}"
    result = ForkResult(
        name=name, branch=fork_branch, fork_run=cp.run, fork_iteration=cp.iteration,
        fork_step=cp.step, fork_commit=cp.commit, source=plan.source, budget=rec.iterations,
        start_iteration=plan.completed, overrides=rec.overrides,
        own_overrides=rec.own_overrides, tags=rec.tags, switched=False, commit="",
    )
    if not switch:
        result.commit = record_commit(project, rec, cp.commit, action, sig, origin=origin,
                                      files=plan.files, merged=plan.merged)
        faults.point("branch.object")
        git.create_branch(fork_branch, result.commit)  # whole, or not at all; races end here
        faults.point("branch.created")
        result.tracking = _mirror(project, lock, name, progress, timings, started,
                                  wait=wait and not deferred, run=deferred)
        return result

    def note(message: str) -> None:
        progress(Event("note", name, message=message))

    workspace.settle(project, lock, run=plan.current, extra=plan.extra, note=note)
    with guarded(project, lock) as guard:
        result.commit = record_commit(project, rec, cp.commit, action, sig, origin=origin,
                                      files=plan.files, merged=plan.merged)
        git.create_branch(fork_branch, result.commit)  # whole, or not at all; races end here
        guard.created_branch(fork_branch)
        faults.point("branch.created")
        workspace.switch(project, guard, lock, fork_branch, required=plan.required,
                         note=note)
        faults.point("branch.switched")
    lock.idle()
    result.switched = True
    result.tracking = _mirror(project, lock, name, progress, timings, started,
                              wait=wait, run=run)
    faults.point("branch.mirrored")
    if run:
        with guarded(project, lock) as guard:
            result.run = advance(
                project, name, lock=lock, guard=guard, target=rec.iterations, progress=progress,
                echo=echo, signature=sig, argv=argv, wait=wait,
            )
    return result


def _required_at(project: Project, commit: str, policy: Any) -> list[str]:
    """The outputs a fork at `commit` cannot go on without, when the cache lacks them:
    the checkpoint the hand-off resumes from."""

    if not (policy.checkpoint_output and policy.checkpoint_resume):
        return []
    entry = project.outputs_at(commit).get(policy.checkpoint_output)
    if entry is None or project.dvc.has_object(entry):
        return []
    return [policy.checkpoint_output]


def _mirror(
    project: Project,
    lock: ProjectLock,
    name: str,
    progress: Progress,
    timings: dict[str, float] | None,
    started: float,
    *,
    wait: bool,
    run: bool,
) -> str:
    """The fork's MLflow run (lineage tags, note, params and the inherited metric points):
    written now with `wait`, else brought up to date from git by the background `mlfork
    sync` (by the fork's own run at its end, with `run`). Where it stands (ForkResult)."""
    if timings is not None:
        timings["git_dvc"] = time.perf_counter() - started
        started = time.perf_counter()
    if not run:
        lock.run = ""  # the fork is made: its status is "stopped", not "running"
        lock.update()
    if wait:
        mirror = outbox.Mirror(
            project,
            track.tracking_uri(project, lineage.tip(project, name), write=True),
            on_warning=lambda message: progress(Event("warning", name, message=message)),
        )
        tracking = "delivered" if mirror.send(outbox.refresh(name)) else "queued"
    else:
        outbox.park(project, outbox.refresh(name))
        if not run:  # with `run`, the run's end starts it
            background.start(project)
        tracking = "background"
    if timings is not None:
        timings["mlflow"] = time.perf_counter() - started
    return tracking
