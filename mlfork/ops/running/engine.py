"""`mlfork run` and `mlfork resume`: the iteration engine.

Order of writes per stage: the stage runs (DVC writes outputs and dvc.lock), then one git
commit publishes it with everything the stage changed that git tracks; the MLflow write
comes last and is idempotent. A command that fails before its first checkpoint puts the
repository and the workspace back as they were (`Guard`); one that fails later
keeps its checkpoints, and the next command puts the failed stage's leftovers back.
"""

from __future__ import annotations

import os
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
    RunTimeout,
    StageFailed,
)
from mlfork.models import Commit, Pipeline, Policy, RunRecord, RunResult
from mlfork.ops.kernel import lineage, workspace
from mlfork.ops.kernel.guard import Guard
from mlfork.ops.kernel.project import Project, ProjectLock
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.replaying import capture
from mlfork.ops.running import params
from mlfork.ops.running.common import (
    Event,
    Progress,
    gitignore_of,
    handoff_files,
    int_or,
    noter,
    quiet,
)


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
    guard: Guard | None = None,
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
    handoff = handoff_files(policy)
    resume_input = handoff[0] if handoff else None
    if target > rec.iterations:  # `resume --iterations K` past the budget raises the budget
        rec.iterations = target
    if project.read_record(rev) != rec:
        project.write_record(rec)  # committed with the next checkpoint
    if guard is not None:
        guard.save([naming.RUN_RECORD, naming.REPLAY_MANIFEST, *handoff,
                    *[gitignore_of(p) for p in handoff]])

    mirror = track.Held(track.Mirror(
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
                    capture.write_manifest(project, rec, policy, it, env, argv, state.rev,
                                           state.included, mirror.uri, resume_input)
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


def _safe(stage: str) -> str:
    """A stage's addressing as a file name (`sub/dvc.yaml:train@a` has / and :)."""
    return "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in stage)


def _prologue(
    project: Project,
    lock: ProjectLock,
    guard: Guard | None,
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
    from mlfork.adapters.dvc_files import lock_outputs

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
                    noter(progress, rec.name),
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
        paths |= {resume_input + ".dvc", gitignore_of(resume_input)}
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


def _fail(
    project: Project,
    mirror: track.Held,
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


def _send_status(mirror: track.Held, experiment: str, rec: RunRecord, status: str) -> None:
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
