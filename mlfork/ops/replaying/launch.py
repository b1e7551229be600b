"""`mlfork replay RUN --launch`: run the plan as a new run `<run>-replay-<k>` (a root run from
its base commit, a fork from its fork point), every stage recomputed, then compare it with
the original iteration by iteration."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mlfork import faults, naming
from mlfork.errors import DatasetMismatch, MalformedFile, NotFound
from mlfork.models import RunResult
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.guard import guarded
from mlfork.ops.kernel.project import Project
from mlfork.ops.replaying.divergence import compare
from mlfork.ops.replaying.plan import (
    TAG_REPLAY_ITERATION,
    TAG_REPLAY_OF,
    ReplayPlan,
    ReplayResult,
    fork_point_moved,
    plan_for,
)
from mlfork.ops.running.common import Event, Progress, check_new_name, now_iso, quiet, record_commit
from mlfork.ops.running.engine import advance


class Once:
    """Forwards progress events, each distinct warning once (fork and resume warn about the
    same environment drift)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: set[str] = set()

    def __call__(self, event: Event) -> None:
        if event.kind == "warning":
            if event.message in self.seen:
                return
            self.seen.add(event.message)
        self.progress(event)


def drift_messages(p: ReplayPlan) -> list[str]:
    head = f"this machine's environment differs from the one that ran {p.original} iteration"
    return [f"{head} {p.iteration}: {c.line()}" for c in p.environment]


def launch(
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    *,
    iteration: int | None = None,
    force: bool = False,
    name: str | None = None,
    progress: Progress = quiet,
    echo: bool = False,
    argv: Sequence[str] = (),
) -> ReplayResult:
    """Relaunch `run` (up to `iteration`) as the new run `name` (default
    `<run>-replay-<k>`) from the same starting point, with the manifest's overrides and
    PYTHONHASHSEED, DVC's run cache off; then compare every iteration with the original.
    Environment drift warns; a dataset that differs refuses (DatasetMismatch) unless
    `force`. The workspace ends on the replay's branch, as after `mlfork run`."""
    project = Project.open(path)
    try:  # one lock over the whole replay: the start or fork, the resume, the comparison
        with project.lock(run or "", "replay"):
            return _launch(path=path, run=run, iteration=iteration, force=force, name=name,
                           progress=progress, echo=echo, argv=argv)
    finally:
        project.close()


def _launch(
    *,
    path: str | os.PathLike[str],
    run: str | None,
    iteration: int | None,
    force: bool,
    name: str | None,
    progress: Progress,
    echo: bool,
    argv: Sequence[str],
) -> ReplayResult:
    from mlfork.ops.running.fork import branch
    from mlfork.ops.running.start import resume

    say = Once(progress)
    project = Project.open(path)
    try:
        p = plan_for(project, run, iteration, name)
        check_new_name(project, p.name)
        from mlfork.ops.kernel import workspace

        workspace.check(project, project.pipeline(), run=lineage.current_run(project))
        bad = p.problems
        if bad and not force:
            raise DatasetMismatch(
                f"{len(bad)} dataset(s) differ from what '{p.original}' used ({bad[0].line()}):"
                " nothing was launched; restore the data, or pass --force to replay anyway"
            )
        if p.fork_from is not None:
            moved = fork_point_moved(project, p.fork_from["run"], p.fork_from["iteration"],
                                      p.fork_from["step"], p.start_commit)
            if moved:
                raise NotFound(moved)
    finally:
        project.close()

    for message in [*p.warnings, *drift_messages(p)]:
        say(Event("warning", p.name, message=message))
    for check in bad:
        say(Event("warning", p.name, message=f"--force: replaying although {check.line()}"))
    if p.config_changes:
        say(Event("warning", p.name, message="the replay composes another config than the"
                  " manifest's: " + "; ".join(p.config_changes[:5])))
    tags = [f"{TAG_REPLAY_OF}={p.original}", f"{TAG_REPLAY_ITERATION}={p.iteration}"]
    seed = p.pythonhashseed or None
    if p.fork_from is None:  # a root run: from its base commit
        result = _start_at(path, p, tags, say, echo, argv, seed)
    else:
        mid_iteration = p.first_iteration == p.fork_from["iteration"]  # forked after a stage
        forked = branch(
            path=path, source=p.fork_from["run"], from_iteration=p.fork_from["iteration"],
            from_step=p.fork_from["step"] if mid_iteration else None,
            name=p.name, iterations=p.budget - p.first_iteration, tags=tags,
            overrides=p.overrides, argv=argv, progress=say,
        )
        if forked.fork_commit != p.start_commit:  # a race with a rewrite of the parent
            raise NotFound(f"'{p.fork_from['run']}' moved while forking: replay '{p.name}' again")
        more = p.iteration + 1 - p.first_iteration if p.iteration + 1 < p.budget else None
        result = resume(
            path=path, run=p.name, iterations=more, run_cache=False, force=True,
            pythonhashseed=seed, progress=say, echo=echo, argv=argv,
        )
    project = Project.open(path)
    try:
        replay_tip = lineage.tip(project, p.name)
        comparison = compare(
            project, p.commit, replay_tip, range(p.first_iteration, p.iteration + 1),
            original=p.original, replay=p.name, recomputed=result.recomputed,
        )
    finally:
        project.close()
    return ReplayResult(plan=p, run=result, comparison=comparison)


def _start_at(
    path: str | os.PathLike[str],
    p: ReplayPlan,
    tags: list[str],
    progress: Progress,
    echo: bool,
    argv: Sequence[str],
    pythonhashseed: str | None,
) -> RunResult:
    """`mlfork run` at the original's base commit rather than HEAD: the branch is created
    there with its run record committed straight into the object database, then checked
    out (with its DVC outputs); the user's branch is not touched. A failure before the
    first checkpoint puts everything back."""
    from mlfork.models import RunRecord
    from mlfork.ops.kernel import workspace

    project = Project.open(path)
    try:
        git = project.git
        sig = git.signature()
        original = project.read_record(p.commit)
        if original is None:
            raise MalformedFile(naming.RUN_RECORD, f"none at {p.commit[:10]}")
        with project.lock(p.name, "replay") as lock:
            workspace.settle(project, lock, run=lineage.current_run(project))
            with guarded(project, lock) as guard:
                record = RunRecord(
                    name=p.name, iterations=p.budget, overrides=list(p.overrides),
                    own_overrides=list(p.overrides),
                    options={"timeout": None, "stage_timeout": None}, tags=tags,
                    argv=list(argv), created=now_iso(), base_commit=p.start_commit,
                    base_branch=original.base_branch, stages=list(original.stages),
                )
                branch = naming.branch_name(p.name)
                first = record_commit(
                    project, record, p.start_commit, "start run", sig,
                    origin=f"replay of {p.original} up to iteration {p.iteration}",
                )
                git.create_branch(branch, first)
                guard.created_branch(branch)
                faults.point("replay.created")
                workspace.switch(project, guard, lock, branch)
                faults.point("replay.switched")
                lock.idle()
                result = advance(
                    project, p.name, lock=lock, guard=guard, target=p.iteration + 1,
                    progress=progress, echo=echo, run_cache=False, force=True, signature=sig,
                    argv=argv, pythonhashseed=pythonhashseed,
                )
            return result
    finally:
        project.close()
