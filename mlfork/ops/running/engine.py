"""`mlfork run` and `mlfork resume`: the iteration engine.

Order of writes per stage: the stage runs (DVC writes outputs and dvc.lock), then one git
commit publishes it with everything the stage changed that git tracks; the MLflow write
comes last and is idempotent. A command that fails before its first checkpoint puts the
repository and the workspace back as they were (`workspace.Guard`); one that fails later
keeps its checkpoints, and the next command puts the failed stage's leftovers back.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfork import faults, naming
from mlfork.errors import (
    ConfigError,
    Interrupted,
    ProjectError,
    RunTimeout,
    StageFailed,
    UsageError,
)
from mlfork.models import Commit, Pipeline, Policy, RunRecord, RunResult
from mlfork.ops.kernel import lineage, workspace
from mlfork.ops.kernel.project import Project, ProjectLock, record_text
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.running import params
from mlfork.ops.running.common import (
    Event,
    Progress,
    check_new_name,
    check_overrides,
    check_positive,
    check_tags,
    dedupe,
    int_or,
    next_free_name,
    now_iso,
    quiet,
    record_body,
    runtime_options,
)


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
    *,
    path: str | os.PathLike[str] = ".",
    name: str | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    tags: Sequence[str] = (),
    overrides: Sequence[str] = (),
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    echo: bool = False,
) -> RunResult:
    """Create `mlfork/<name>` at HEAD, switch to it, commit the run record, run iterations.
    Everything is checked before the first write, under the project lock; a failure
    before the first checkpoint leaves the repository and the workspace as they were."""
    project = Project.open(path)
    try:
        with project.lock(name or "", "run") as lock:
            return _start(
                project, lock, name=name, iterations=iterations, timeout=timeout,
                stage_timeout=stage_timeout, tags=tags, overrides=overrides, argv=argv,
                progress=progress, echo=echo,
            )
    finally:
        project.close()


def _start(
    project: Project, lock: ProjectLock, *, name: str | None, iterations: int | None,
    timeout: float | None, stage_timeout: float | None, tags: Sequence[str],
    overrides: Sequence[str], argv: Sequence[str], progress: Progress, echo: bool,
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

    workspace.settle(project, lock, run=None, note=_noter(progress, name))
    with workspace.guarded(project, lock) as guard:
        resume = _handoff(plan.policy)
        guard.save(
            workspace.output_paths(plan.pipeline)
            + sorted(workspace.owned_paths(plan.pipeline, resume))
            + list(project.compose(head, overrides, 0, plan.budget).files)
            + list(resume)
            + [_gitignore_of(p) for p in resume],
            plan.pipeline,
        )
        workspace.ensure_inputs(project, plan.missing, "a stage needs it",
                                _noter(progress, name))
        project.dvc.checkout(plan.absent)
        record = RunRecord(
            name=name, iterations=plan.budget, overrides=overrides, own_overrides=overrides,
            options=runtime_options(plan.config, timeout, stage_timeout),
            tags=dedupe(tags), argv=list(argv), created=now_iso(), base_commit=head,
            base_branch=base_branch, stages=plan.pipeline.stage_names,
        )
        branch = naming.branch_name(name)
        first = git.commit_object(
            head, {naming.RUN_RECORD: record_text(record).encode()},
            naming.format_record_message(name, "start run", record_body(record)),
            signature=sig,
        )
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
            echo=echo, argv=argv, signature=sig, retry=retry,
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
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    progress: Progress = quiet,
    echo: bool = False,
    run_cache: bool = True,
    force: bool = False,
    argv: Sequence[str] = (),
    pythonhashseed: str | None = None,
) -> RunResult:
    """Continue a run up to its budget (or `iterations` more), from its first uncommitted
    stage. `force` runs every stage even when DVC finds it up to date (replay, verify)."""
    project = Project.open(path)
    try:
        with project.lock(run or "", "resume") as lock:
            name = lineage.resolve_run(project, run)
            lock.run = name
            return _resume(
                project, lock, name, iterations=iterations, timeout=timeout,
                stage_timeout=stage_timeout, progress=progress, echo=echo,
                run_cache=run_cache, force=force, argv=argv, pythonhashseed=pythonhashseed,
            )
    finally:
        project.close()


def _resume(
    project: Project, lock: ProjectLock, name: str, *, iterations: int | None,
    timeout: float | None, stage_timeout: float | None, progress: Progress, echo: bool,
    run_cache: bool, force: bool, argv: Sequence[str], pythonhashseed: str | None,
) -> RunResult:
    sig = project.git.signature()
    if iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be 1 or more, got {iterations}")
    check_positive("--timeout", timeout)
    check_positive("--stage-timeout", stage_timeout)
    lineage.record(project, name)
    extra = _handoff(project.policy(lineage.tip(project, name)))
    current = lineage.current_run(project)
    workspace.check(project, project.pipeline(), run=current, extra=extra)
    workspace.settle(project, lock, run=current, extra=extra, note=_noter(progress, name))
    with workspace.guarded(project, lock) as guard:
        if current != name:
            workspace.switch(project, guard, lock, naming.branch_name(name),
                             note=_noter(progress, name))
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
            force=force, signature=sig, argv=argv, pythonhashseed=pythonhashseed,
        )
    return result


def _handoff(policy: Policy) -> tuple[str, ...]:
    """The files of the checkpoint hand-off mlfork manages (the resume input, its .dvc)."""
    if policy.checkpoint_output and policy.checkpoint_resume:
        return (policy.checkpoint_resume, policy.checkpoint_resume + ".dvc")
    return ()


def _gitignore_of(path: str) -> str:
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    return f"{folder}/.gitignore" if folder else ".gitignore"


def _noter(progress: Progress, name: str) -> Any:
    return lambda message: progress(Event("note", name, message=message))


@dataclass
class _Iteration:
    """The state `advance` carries from stage to stage."""

    rev: str
    it: int
    files: dict[str, bytes] = field(default_factory=dict)
    blind: set[str] = field(default_factory=set)  # stages DVC's run cache would mistake
    user_commits: list[Commit] = field(default_factory=list)  # not yet noted in a commit
    included: list[str] = field(default_factory=list)  # the user's commits of this iteration
    status: Any = None  # the workspace's git status after the last commit


def advance(
    project: Project,
    name: str,
    *,
    lock: ProjectLock,
    guard: workspace.Guard | None = None,
    target: int,
    progress: Progress = quiet,
    echo: bool = False,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    run_cache: bool = True,
    force: bool = False,
    signature: Any = None,
    argv: Sequence[str] = (),
    pythonhashseed: str | None = None,
    retry: str | None = None,
) -> RunResult:
    """Run stages of `name` (checked out) until `target` iterations are complete.
    `pythonhashseed` (a replay re-applying a manifest's seed bundle) overrides the
    PYTHONHASHSEED derived from the config's seed. `guard` is released at the first
    checkpoint; until then a failure's message says to run `retry` again, not resume."""
    from mlfork.adapters.stages import StageCommandFailed, run_stage

    git, dvc = project.git, project.dvc
    rev = lineage.tip(project, name)
    rec = lineage.record(project, name, rev)
    policy = project.policy(rev)
    dvc.reset()
    pipeline = project.pipeline()
    stages = pipeline.stage_names
    if stages != rec.stages:
        raise ConfigError(
            f"dvc.yaml's stages {stages} differ from the run's {rec.stages}:"
            " start a new run (or fork) for a changed pipeline"
        )
    if stage_timeout is not None:  # `resume --stage-timeout S` replaces the stored value
        rec.options["stage_timeout"] = stage_timeout
    if timeout is not None:
        rec.options["timeout"] = timeout
    timeout = rec.options.get("timeout")
    stage_timeout = rec.options.get("stage_timeout")
    handoff = _handoff(policy)
    resume_input = handoff[0] if handoff else None
    if target > rec.iterations:  # `resume --iterations K` past the budget raises the budget
        rec.iterations = target
    if project.read_record(rev) != rec:
        project.write_record(rec)  # committed with the next checkpoint
    if guard is not None:
        guard.save([naming.RUN_RECORD, naming.REPLAY_MANIFEST, *handoff,
                    *[_gitignore_of(p) for p in handoff]])

    mirror = _Held(track.Mirror(
        project,
        track.tracking_uri(project, rev, write=True),
        on_warning=lambda message: progress(Event("warning", name, message=message)),
        background=True,
    ), guard)
    experiment = track.experiment_name(project, rev)
    result = RunResult(name=name, status="running", done=0, budget=rec.iterations)
    pos = lineage.position(project, rev)
    it, si = pos.next(stages)
    result.done = pos.done(stages)
    deadline = time.monotonic() + float(timeout) if timeout else None
    env = _stage_env(name)
    params_sent = False
    # everything git has so far: a killed process may have lost writes it had queued
    first = track.full_write(project, name)
    first.params = {}  # the tip's params.yaml may predate this run's config: sent below
    first.status, first.end_time = ("RUNNING" if it < target else None), None
    mirror.send(first)
    state = _Iteration(rev=rev, it=it, status=git.status())

    def fail(exc: StageCommandFailed) -> None:
        hint = retry if guard is not None and guard.active else None
        _fail(project, mirror, experiment, rec, exc, it, deadline, hint)

    failed = True
    try:
        while it < target:
            state.it = it
            if si == 0:
                progress(Event("iteration", name, iteration=it, budget=target))
                _prologue(project, lock, guard, rec, policy, state, env, pythonhashseed,
                          resume_input, progress)
                faults.point("stage.prologue")
            for stage in stages[si:]:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    project.write_state(name, "timeout")
                    _send_status(mirror, experiment, rec, "KILLED")
                    raise RunTimeout(name, "run", float(timeout or 0), "--timeout",
                                     retry if guard is not None and guard.active else None)
                limits = [d for d in (deadline, now + float(stage_timeout)
                                      if stage_timeout else None) if d is not None]
                progress(Event("stage_start", name, iteration=it, budget=target, stage=stage))
                lock.work(run=name, iteration=it, stage=stage)
                try:
                    outcome = run_stage(
                        dvc, stage,
                        log_path=project.local("logs", name, f"{it:05d}-{_safe(stage)}.log"),
                        env=env, deadline=min(limits) if limits else None,
                        run_cache=run_cache and stage not in state.blind, force=force,
                        on_children=lock.update, echo=echo,
                    )
                except StageCommandFailed as exc:
                    fail(exc)
                faults.point("stage.ran")
                if stage == stages[-1]:
                    _write_manifest(project, rec, policy, it, env, argv, state, mirror.uri,
                                    resume_input)
                    faults.point("stage.manifest")
                body = f"stage {stage} " + (
                    f"ran in {outcome.seconds:.2f}s" if outcome.ran else "was up to date"
                )
                if state.user_commits:
                    body += "\n\nincludes commits made since the last checkpoint:\n" + "\n".join(
                        f"  {c.id[:10]} {c.message.splitlines()[0] if c.message else ''}"
                        for c in state.user_commits
                    )
                    state.user_commits = []
                state.rev = _commit_stage(project, name, rec, pipeline, state, it, stage, body,
                                          resume_input, signature, progress)
                faults.point("stage.committed")
                if guard is not None:
                    guard.release()
                lock.idle()
                result.ran.append((it, stage))
                if outcome.ran:
                    result.recomputed.append((it, stage))
                progress(
                    Event("stage_end", name, iteration=it, budget=target, stage=stage,
                          ran=outcome.ran, seconds=outcome.seconds)
                )
            metrics = project.metrics.at(state.rev)
            finished = it + 1 >= rec.iterations
            stamp = git.commit(state.rev).time * 1000
            mirror.send(track.RunWrite(
                run=name, experiment=experiment, start_time=track.iso_to_ms(rec.created),
                tags={naming.TAG_GIT_COMMIT: state.rev, naming.TAG_BUDGET: str(rec.iterations)},
                params={} if params_sent else track.run_params(project, state.rev),
                metrics=[[k, v, stamp, it] for k, v in sorted(metrics.items())],
                status="FINISHED" if finished else None,
                end_time=stamp if finished else None,
            ))
            params_sent = True
            faults.point("iteration.sent")
            result.done = it + 1
            progress(Event("iteration_end", name, iteration=it, budget=target, metrics=metrics))
            it, si = it + 1, 0
        failed = False
    except KeyboardInterrupt:
        project.write_state(name, "interrupted")
        _send_status(mirror, experiment, rec, "KILLED")
        raise Interrupted(
            name, retry if guard is not None and guard.active else None
        ) from None
    finally:
        mirror.close(failed)
        result.warnings.extend(mirror.warnings)

    result.budget = rec.iterations
    result.status = "completed" if result.done >= rec.iterations else "stopped"
    project.write_state(name, result.status)
    result.tip = state.rev
    result.headline, result.headline_value = lineage.headline_at(project, state.rev)
    result.suggestion = params.suggest(pipeline, project.params_at(state.rev))
    return result


class _Held:
    """A Mirror that holds its writes while the command's guard is active: a command that
    fails before its first checkpoint leaves the tracking store as it was too (its writes
    are dropped with the rollback); from the first checkpoint on, writes go straight out."""

    def __init__(self, mirror: track.Mirror, guard: workspace.Guard | None) -> None:
        self.mirror = mirror
        self.guard = guard
        self.held: list[track.RunWrite] = []

    @property
    def uri(self) -> str:
        return self.mirror.uri

    @property
    def warnings(self) -> list[str]:
        return self.mirror.warnings

    def send(self, write: track.RunWrite) -> None:
        if self.guard is not None and self.guard.active:
            self.held.append(write)
            return
        for held in self.held:
            self.mirror.send(held)
        self.held = []
        self.mirror.send(write)

    def close(self, failed: bool) -> None:
        """Deliver what is held, unless the command failed before its first checkpoint."""
        if not (failed and self.guard is not None and self.guard.active):
            for held in self.held:
                self.mirror.send(held)
        self.held = []
        self.mirror.close()


def _safe(stage: str) -> str:
    """A stage's addressing as a file name (`sub/dvc.yaml:train@a` has / and :)."""
    return "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in stage)


def _prologue(
    project: Project,
    lock: ProjectLock,
    guard: workspace.Guard | None,
    rec: RunRecord,
    policy: Policy,
    state: _Iteration,
    env: dict[str, str],
    pythonhashseed: str | None,
    resume_input: str | None,
    progress: Progress,
) -> None:
    """Before the first stage of an iteration: the commits the user made since the last
    checkpoint (they belong to this iteration), the composed config written into the
    params files, and the checkpoint hand-off pointed at the previous iteration's output
    (fetched from the DVC remote when the cache lacks it)."""
    from mlfork.adapters.dvc import lock_outputs

    git, it = project.git, state.it
    state.user_commits = lineage.commits_since_checkpoint(project, state.rev)
    state.included = [c.id for c in state.user_commits]
    composed = project.compose(state.rev, rec.overrides, it, rec.iterations)
    lock.work(run=rec.name, iteration=it, stage=None)
    for rel, text in composed.files.items():
        target = project.root / rel
        if not target.exists() or target.read_bytes() != text:
            target.write_bytes(text)
    state.files = composed.files
    values = dict(composed.data)
    for file in project.pipeline().params_files():
        if file not in values:
            values[file] = project.params_file_at(state.rev, file)
    state.blind = params.run_cache_blind(project.pipeline(), values)
    if params.side_effect_files(project.pipeline()):
        state.blind |= set(project.pipeline().stage_names)
    env["PYTHONHASHSEED"] = pythonhashseed or str(int_or(composed.config.get("seed"), 0))
    if resume_input and policy.checkpoint_output:
        source = None
        if it > 0:
            source = lock_outputs(git.read(state.rev, "dvc.lock")).get(policy.checkpoint_output)
            if source is None:
                raise ConfigError(
                    f"dvc.lock has no output '{policy.checkpoint_output}' at the end of"
                    f" iteration {it - 1}: check the policy's checkpoint.output"
                )
            missing = project.dvc.missing_from_cache([policy.checkpoint_output])
            if missing:
                workspace.ensure_inputs(
                    project, missing, f"the checkpoint of iteration {it - 1} (the hand-off)",
                    _noter(progress, rec.name),
                )
        added = project.dvc.set_resume(resume_input, source)
        faults.point("stage.resume")
        if added is not None and guard is not None and guard.active:
            guard.added_cache_object(added)


def _commit_stage(
    project: Project,
    name: str,
    rec: RunRecord,
    pipeline: Pipeline,
    state: _Iteration,
    it: int,
    stage: str,
    body: str,
    resume_input: str | None,
    signature: Any,
    progress: Progress,
) -> str:
    """One checkpoint: everything the stage changed that git tracks, every file DVC
    declares (a `cache: false` metrics file, the .gitignore DVC keeps, dvc.yaml rewritten
    by dvclive), the params files, the run record and the manifest. An untracked file the
    stage wrote outside all of that is named in a warning and not committed."""
    git = project.git
    pipeline = project.pipeline()  # as the stage left dvc.yaml (dvclive adds metrics to it)
    after = git.status()
    before = state.status
    paths = set(after.changed) | set(state.files) | {naming.RUN_RECORD, naming.REPLAY_MANIFEST}
    if resume_input:
        paths |= {resume_input + ".dvc", _gitignore_of(resume_input)}
    strays = project.strays()
    new_strays = set()
    for p in after.untracked:
        if p.startswith(naming.LOCAL_DIR + "/") or p in strays or p in paths:
            continue
        if pipeline.owns(p) or p in state.files:
            paths.add(p)
        elif before is None or p not in before.untracked:
            new_strays.add(p)
    if new_strays:
        shown = _group(sorted(new_strays))
        progress(Event("warning", name, message=(
            f"stage '{stage}' wrote {shown}, which neither git nor DVC tracks: not committed;"
            " declare it in dvc.yaml (outs, metrics, plots) or add it to .gitignore"
        )))
        project.add_strays(new_strays)
    rev = git.commit_paths(
        naming.branch_name(name), sorted(paths),
        naming.format_checkpoint_message(name, it, stage, body),
        parent=state.rev, signature=signature,
    )
    state.status = git.status()
    return rev


def _group(paths: list[str]) -> str:
    """`outputs/ (12 files)` rather than twelve paths."""
    tops: dict[str, int] = {}
    for p in paths:
        top = p.split("/", 1)[0] + ("/" if "/" in p else "")
        tops[top] = tops.get(top, 0) + 1
    shown = [f"'{t}' ({n} files)" if t.endswith("/") and n > 1 else
             f"'{next(p for p in paths if p.startswith(t))}'" for t, n in tops.items()]
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _write_manifest(
    project: Project,
    rec: RunRecord,
    policy: Policy,
    iteration: int,
    env: dict[str, str],
    argv: Sequence[str],
    state: _Iteration,
    uri: str,
    resume_input: str | None,
) -> None:
    """.mlfork/replay.json for this iteration, committed with its last stage."""
    from mlfork.adapters.tracking import redact_uri
    from mlfork.ops.replaying import manifest

    root = project.root
    config = project.params_at_workspace()
    lock = root / "dvc.lock"
    pipeline = project.pipeline()
    exclude = tuple(p for p in (resume_input, policy.checkpoint_output) if p)
    lock_text = lock.read_bytes() if lock.exists() else None
    data = manifest.datasets(
        root, config, policy.locked, lock_text,
        manifest.sources_of(pipeline), manifest.stage_params(pipeline),
        manifest.stage_outs(pipeline), exclude=exclude,
        cache=manifest.HashCache(project.local("hashes.json")),
    )
    embedded = uri.startswith("sqlite:///") and uri.endswith(naming.TRACKING_DB)
    doc = manifest.build(
        rec=rec, iteration=iteration, argv=list(argv or rec.argv), config=config,
        pythonhashseed=env.get("PYTHONHASHSEED", ""), data=data, code_commit=state.rev,
        tracking="embedded" if embedded else redact_uri(uri), created=now_iso(),
        user_commits=state.included,
    )
    path = root / naming.REPLAY_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.dumps(doc), encoding="utf-8")


def _fail(
    project: Project,
    mirror: _Held,
    experiment: str,
    rec: RunRecord,
    exc: Any,
    iteration: int,
    deadline: float | None,
    retry: str | None,
) -> None:
    name = rec.name
    if exc.timed_out:
        project.write_state(name, "timeout")
        _send_status(mirror, experiment, rec, "KILLED")
        run_level = deadline is not None and time.monotonic() >= deadline - 0.05
        if run_level:
            raise RunTimeout(name, "run", float(rec.options.get("timeout") or 0), "--timeout",
                             retry) from None
        raise RunTimeout(name, f"stage '{exc.stage}'",
                         float(rec.options.get("stage_timeout") or 0), "--stage-timeout",
                         retry) from None
    if exc.returncode in (-2, 130):
        project.write_state(name, "interrupted")
        _send_status(mirror, experiment, rec, "KILLED")
        raise Interrupted(name, retry) from None
    project.write_state(name, "failed", f"stage {exc.stage} exited with {exc.returncode}")
    _send_status(mirror, experiment, rec, "FAILED")
    raise StageFailed(name, iteration, exc.stage, exc.returncode, exc.tail, retry) from None


def _send_status(mirror: _Held, experiment: str, rec: RunRecord, status: str) -> None:
    mirror.send(track.RunWrite(
        run=rec.name, experiment=experiment, start_time=track.iso_to_ms(rec.created),
        status=status, end_time=int(time.time() * 1000),
    ))


def _stage_env(run: str) -> dict[str, str]:
    """The stage's environment: this interpreter's bin first on PATH (so `python` in dvc.yaml
    is the one mlfork runs in), and the run's identity."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": bindir + (os.pathsep + path if path else ""),
        naming.ENV_RUN: run,
    }
