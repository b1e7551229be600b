"""`mlfork run` and `mlfork resume`: every check first, under the project lock, then the
writes (the run's branch whole at its first commit), then the iteration engine."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlfork import faults, naming
from mlfork.errors import ConfigError, ProjectError, UsageError
from mlfork.models import Pipeline, Policy, RunRecord, RunResult
from mlfork.ops.kernel import lineage, workspace, worktrees
from mlfork.ops.kernel.guard import guarded
from mlfork.ops.kernel.project import Project, ProjectLock
from mlfork.ops.running import params
from mlfork.ops.running.common import (
    Event,
    Progress,
    check_new_name,
    check_overrides,
    check_positive,
    check_tags,
    dedupe,
    gitignore_of,
    handoff_files,
    int_or,
    next_free_name,
    noter,
    now_iso,
    quiet,
    record_commit,
    runtime_options,
)
from mlfork.ops.running.engine import advance


def refuse_on_a_run(project: Project) -> None:
    """`mlfork run` starts a run from the project's code, never from another run's
    checkpoint: refuse where HEAD is a run's branch, or detached at a run's commit."""
    git = project.git
    branch = git.head_branch()
    run = naming.run_from_ref(branch) if branch else None
    head = git.head_commit()
    where = None
    if run is not None and run in lineage.run_names(project):
        where = f"HEAD is on run '{run}' (branch {branch})"
    elif branch is None and head is not None:
        t = git.commit(head).trailers
        if t is not None:
            run = t.run
            where = f"HEAD is detached at a commit of run '{run}' ({head[:10]})"
    if where is None or run is None:
        return
    base = _base_branch(project, run) or "main"
    raise UsageError(
        f"{where}: a new run starts from your project's code, not from a run's checkpoint;"
        f" to go on from a checkpoint of '{run}' with other settings, fork it ('mlfork branch"
        f" --from {run} ...'); to start a new run, switch back first ('git switch {base}')"
    )


def _base_branch(project: Project, run: str) -> str | None:
    """The branch the root of `run`'s lineage started from, if it still exists."""
    try:
        rec = lineage.record(project, run)
        seen = {run}
        while rec.parent is not None and rec.parent.run not in seen:
            seen.add(rec.parent.run)
            parent = project.read_record(rec.parent.commit)
            if parent is None:
                break
            rec = parent
    except Exception:  # noqa: BLE001 - a hint only
        return None
    branch = rec.base_branch
    return branch if branch and project.git.resolve_branch(branch) else None


@dataclass
class Plan:
    """What `start` validated before its first write."""

    overrides: list[str]
    budget: int
    config: dict[str, Any]
    pipeline: Pipeline
    policy: Policy
    absent: list[str] = field(default_factory=list)  # inputs to link (or fetch and link)
    missing: list[str] = field(default_factory=list)  # those of them to fetch first
    warnings: list[str] = field(default_factory=list)


def start(
    path: str | os.PathLike[str] = ".",
    *,
    name: str | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    tags: Sequence[str] = (),
    overrides: Sequence[str] = (),
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    echo: bool = False,
    wait: bool | None = None,
) -> RunResult:
    """Create `mlfork/<name>` at HEAD, switch to it, commit the run record, run iterations.
    Everything is checked before the first write, under the project lock; a failure
    before the first checkpoint leaves the repository and the workspace as they were.
    `wait`: deliver the last tracking writes before returning (default: MLFORK_WAIT, else
    a background `mlfork sync` does)."""
    project = Project.open(path)
    try:
        with project.lock(name or "", "run") as lock:
            return _start(
                project, lock, name=name, iterations=iterations, timeout=timeout,
                stage_timeout=stage_timeout, tags=tags, overrides=overrides, argv=argv,
                progress=progress, echo=echo, wait=wait,
            )
    finally:
        project.close()


def _start(
    project: Project, lock: ProjectLock, *, name: str | None, iterations: int | None,
    timeout: float | None, stage_timeout: float | None, tags: Sequence[str],
    overrides: Sequence[str], argv: Sequence[str], progress: Progress, echo: bool,
    wait: bool | None,
) -> RunResult:
    from mlfork.adapters import hydra

    git = project.git
    sig = git.signature()
    name = next_free_name(project) if name is None else name
    check_new_name(project, name)
    lock.run = name
    head = git.head_commit()
    if head is None:
        raise ProjectError("the repository has no commit yet: commit the project first")
    if iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be 1 or more, got {iterations}")
    check_positive("--timeout", timeout)
    check_positive("--stage-timeout", stage_timeout)
    overrides = list(overrides)
    hydra.parse_overrides(overrides)
    check_overrides(overrides)
    check_tags(tags)
    refuse_on_a_run(project)
    plan = _plan_start(project, head, overrides, iterations)
    workspace.check(project, plan.pipeline, run=None)
    base_branch = git.head_branch()
    for message in plan.warnings:
        progress(Event("warning", name, message=message))

    workspace.settle(project, lock, run=None, note=noter(progress, name))
    with guarded(project, lock) as guard:
        resume = handoff_files(plan.policy)
        guard.save(
            workspace.output_paths(plan.pipeline)
            + sorted(workspace.owned_paths(plan.pipeline, resume))
            + list(project.compose(head, overrides, 0, plan.budget).files)
            + list(resume)
            + [gitignore_of(p) for p in resume],
            plan.pipeline,
        )
        workspace.ensure_inputs(project, plan.missing, "a stage needs it",
                                noter(progress, name))
        project.dvc.checkout(plan.absent)
        record = RunRecord(
            name=name, iterations=plan.budget, overrides=overrides, own_overrides=overrides,
            options=runtime_options(plan.config, timeout, stage_timeout),
            tags=dedupe(tags), argv=list(argv), created=now_iso(), base_commit=head,
            base_branch=base_branch, stages=plan.pipeline.stage_names,
        )
        branch = naming.branch_name(name)
        first = record_commit(project, record, head, "start run", sig)
        faults.point("run.object")
        lock.work(start=name)  # killed from here on: `mlfork resume NAME` goes on
        git.create_branch(branch, first)  # whole, or not at all
        guard.created_branch(branch)
        faults.point("run.created")
        git.set_head(branch)
        faults.point("run.head")
        git.restore([naming.RUN_RECORD])  # the record, into the index and the workspace
        lock.idle()
        faults.point("run.started")
        retry = shlex.join(argv) if argv else f"mlfork run --name {name}"
        result = advance(
            project, name, lock=lock, guard=guard, target=plan.budget, progress=progress,
            echo=echo, argv=argv, signature=sig, retry=retry, wait=wait,
        )
    return result


def _plan_start(
    project: Project, head: str, overrides: list[str], iterations: int | None
) -> Plan:
    pipeline = project.pipeline()
    if not pipeline.stages:
        raise ConfigError("dvc.yaml has no stages: add the pipeline's stages first")
    composed = project.compose(head, overrides, 0, iterations)
    config = composed.config
    budget = iterations if iterations is not None else int_or(config.get("iterations"), 1)
    if budget < 1:
        raise ConfigError(f"the config's 'iterations' is {budget}: give --iterations N (1 or"
                          " more)")
    policy = project.policy(head)
    plan = Plan(overrides, budget, config, pipeline, policy, warnings=list(composed.warnings))
    plan.absent = workspace.absent_inputs(project, pipeline)
    plan.missing = project.dvc.missing_from_cache(plan.absent) if plan.absent else []
    if plan.missing and project.dvc.default_remote() is None:
        project.dvc.fetch(plan.missing, "a stage needs it")  # raises MissingData: the fix
    for text in params.untracked_overrides(pipeline, overrides):
        plan.warnings.append(
            f"no stage depends on the key of '{text}': DVC will rerun nothing for it"
            " (dvc.yaml's params: name the keys each stage reads)"
        )
    if budget > 1 and not params.iterates(pipeline, policy, config):
        plan.warnings.append(params.NOT_ITERATING)
    return plan


def resume(
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    *,
    iterations: int | None = None,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    progress: Progress = quiet,
    echo: bool = False,
    run_cache: bool = True,
    force: bool = False,
    argv: Sequence[str] = (),
    pythonhashseed: str | None = None,
    wait: bool | None = None,
) -> RunResult:
    """Continue a run up to its budget (or `iterations` more), from its first uncommitted
    stage. `force` runs every stage even when DVC finds it up to date (replay, verify).
    `wait`: deliver the last tracking writes before returning (see `start`)."""
    project = Project.open(path)
    try:
        with project.lock(run or "", "resume") as lock:
            name = lineage.resolve_run(project, run)
            lock.run = name
            return _resume(
                project, lock, name, iterations=iterations, timeout=timeout,
                stage_timeout=stage_timeout, progress=progress, echo=echo,
                run_cache=run_cache, force=force, argv=argv, pythonhashseed=pythonhashseed,
                wait=wait,
            )
    finally:
        project.close()


def _resume(
    project: Project, lock: ProjectLock, name: str, *, iterations: int | None,
    timeout: float | None, stage_timeout: float | None, progress: Progress, echo: bool,
    run_cache: bool, force: bool, argv: Sequence[str], pythonhashseed: str | None,
    wait: bool | None,
) -> RunResult:
    sig = project.git.signature()
    if iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be 1 or more, got {iterations}")
    check_positive("--timeout", timeout)
    check_positive("--stage-timeout", stage_timeout)
    lineage.record(project, name)
    worktrees.check_free(project, name)
    extra = handoff_files(project.policy(lineage.tip(project, name)))
    current = lineage.current_run(project)
    workspace.check(project, project.pipeline(), run=current, extra=extra)
    workspace.settle(project, lock, run=current, extra=extra, note=noter(progress, name))
    with guarded(project, lock) as guard:
        branch = naming.branch_name(name)
        if project.git.resolve_branch(branch) is None:  # a teammate's run, not local yet
            project.git.create_branch(branch, lineage.tip(project, name))
            guard.created_branch(branch)
        if current != name:
            workspace.switch(project, guard, lock, branch, note=noter(progress, name))
            lock.idle()
        rev = lineage.tip(project, name)
        rec = lineage.record(project, name, rev)
        done = lineage.position(project, rev).done(rec.stages)
        target = rec.iterations if iterations is None else done + iterations
        from mlfork.ops.replaying import (
            manifest,  # the environment differs from the last manifest's: warn
        )

        for message in manifest.drift_warnings(project.git.read(rev, naming.REPLAY_MANIFEST)):
            progress(Event("warning", name, message=message))
        result = advance(
            project, name, lock=lock, guard=guard, target=target, progress=progress,
            echo=echo, timeout=timeout, stage_timeout=stage_timeout, run_cache=run_cache,
            force=force, signature=sig, argv=argv, pythonhashseed=pythonhashseed, wait=wait,
        )
    return result
