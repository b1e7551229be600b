"""`mlfork run` and `mlfork resume`: the iteration engine.

Order of writes per stage: the stage runs (DVC writes outputs and dvc.lock), then one git
commit publishes it; the MLflow write comes last and is idempotent. A crash anywhere leaves
either a committed stage or leftovers that the next `resume` restores before running it again.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .. import naming
from ..errors import (
    ConfigError,
    DirtyWorkingTree,
    Interrupted,
    InvalidRunName,
    ProjectError,
    RunNameTaken,
    RunTimeout,
    StageFailed,
    UsageError,
)
from ..models import RunRecord, RunResult
from . import lineage, track
from .project import Project, ProjectLock

EventKind = Literal["iteration", "stage_start", "stage_end", "iteration_end", "warning", "note"]


@dataclass
class Event:
    kind: EventKind
    run: str
    iteration: int | None = None
    budget: int | None = None
    stage: str | None = None
    ran: bool | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[Event], None]


def _quiet(_: Event) -> None:
    pass


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def next_free_name(project: Project, stem: str = "run") -> str:
    taken = set(lineage.run_names(project))
    k = 1
    while f"{stem}-{k}" in taken:
        k += 1
    return f"{stem}-{k}"


def check_new_name(project: Project, name: str) -> None:
    if not naming.is_valid_run_name(name):
        raise InvalidRunName(name)
    if project.git.resolve_branch(naming.branch_name(name)) is not None:
        raise RunNameTaken(name)


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
    progress: Progress = _quiet,
    echo: bool = False,
) -> RunResult:
    """Create `mlfork/<name>` at HEAD, switch to it, commit the run record, run iterations."""
    from ..adapters import hydra

    project = Project.open(path)
    sig = project.git.signature()
    name = name or next_free_name(project)
    check_new_name(project, name)
    head = project.git.head_commit()
    if head is None:
        raise ProjectError("the repository has no commit yet: commit the project first")
    project.git.require_clean()
    _check_positive("--iterations", iterations)
    _check_positive("--timeout", timeout)
    _check_positive("--stage-timeout", stage_timeout)
    overrides = list(overrides)
    hydra.parse_overrides(overrides)
    previous_branch = project.git.head_branch()
    # validate before the first write (taking the lock creates .mlfork/local/)
    stages = project.dvc.stage_names()
    if not stages:
        raise ConfigError("dvc.yaml has no stages: add the pipeline's stages first")
    config = project.compose(head, overrides, head, 0, iterations or 1)

    with project.lock(name, "run") as lock:
        budget = iterations or _int_or(config.get("iterations"), 1)
        record = RunRecord(
            name=name,
            iterations=budget,
            overrides=overrides,
            own_overrides=overrides,
            options=_options(config, timeout, stage_timeout),
            tags=_dedupe(tags),
            argv=list(argv),
            created=now_iso(),
            base_commit=head,
            stages=stages,
        )
        branch = naming.branch_name(name)
        project.git.create_branch(branch, head)
        try:
            project.git.set_head(branch)
            project.write_record(record)
            project.git.commit_paths(
                branch,
                [naming.RUN_RECORD],
                naming.format_record_message(name, "start run", _record_body(record)),
                parent=head,
                signature=sig,
            )
        except BaseException:
            _undo_start(project, branch, head, previous_branch)
            raise
        return advance(
            project, name, lock=lock, target=budget, progress=progress, echo=echo, argv=argv
        )


def resume(
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    iterations: int | None = None,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    progress: Progress = _quiet,
    echo: bool = False,
    run_cache: bool = True,
    argv: Sequence[str] = (),
    pythonhashseed: str | None = None,
) -> RunResult:
    """Continue a run up to its budget (or `iterations` more), from its first uncommitted stage."""
    project = Project.open(path)
    sig = project.git.signature()
    name = lineage.resolve_run(project, run)
    _check_positive("--iterations", iterations)
    _check_positive("--timeout", timeout)
    _check_positive("--stage-timeout", stage_timeout)
    with project.lock(name, "resume") as lock:
        _switch_to(project, name)
        rev = lineage.tip(project, name)
        rec = lineage.record(project, name, rev)
        done = lineage.position(project, rev).done(rec.stages)
        target = rec.iterations if iterations is None else done + iterations
        from . import manifest  # the environment differs from the run's last manifest's: warn

        for message in manifest.drift_warnings(project.git.read(rev, naming.REPLAY_MANIFEST)):
            progress(Event("warning", name, message=message))
        return advance(
            project,
            name,
            lock=lock,
            target=target,
            progress=progress,
            echo=echo,
            timeout=timeout,
            stage_timeout=stage_timeout,
            run_cache=run_cache,
            signature=sig,
            argv=argv,
            pythonhashseed=pythonhashseed,
        )


def advance(
    project: Project,
    name: str,
    *,
    lock: ProjectLock,
    target: int,
    progress: Progress = _quiet,
    echo: bool = False,
    timeout: float | None = None,
    stage_timeout: float | None = None,
    run_cache: bool = True,
    signature: Any = None,
    argv: Sequence[str] = (),
    pythonhashseed: str | None = None,
) -> RunResult:
    """Run stages of `name` (checked out) until `target` iterations are complete.
    `pythonhashseed` (a replay re-applying a manifest's seed bundle) overrides the
    PYTHONHASHSEED derived from the config's seed."""
    from ..adapters import hydra
    from ..adapters.dvc import DvcProject, StageCommandFailed

    git, dvc = project.git, project.dvc
    branch = naming.branch_name(name)
    rev = lineage.tip(project, name)
    rec = lineage.record(project, name, rev)
    policy = project.policy(rev)
    stages = dvc.stage_names()
    if stages != rec.stages:
        raise ConfigError(
            f"dvc.yaml's stages {stages} differ from the run's {rec.stages}:"
            " start a new run for a changed pipeline"
        )
    timeout = timeout if timeout is not None else rec.options.get("timeout")
    stage_timeout = stage_timeout if stage_timeout is not None else rec.options.get(
        "stage_timeout"
    )
    resume_input = policy.checkpoint_resume if policy.checkpoint_output else None
    managed = set(dvc.managed_paths((resume_input,) if resume_input else ()))
    managed |= {naming.PARAMS_FILE, naming.RUN_RECORD, naming.REPLAY_MANIFEST}
    _restore_leftovers(project, managed)

    if target > rec.iterations:  # `resume --iterations K` past the budget raises the budget
        rec.iterations = target
        project.write_record(rec)

    mirror = track.Mirror(
        project,
        track.tracking_uri(project, rev),
        on_warning=lambda message: progress(Event("warning", name, message=message)),
        background=True,
    )
    experiment = track.experiment_name(project, rev)
    result = RunResult(name=name, status="running", done=0, budget=rec.iterations)
    pos = lineage.position(project, rev)
    it, si = pos.next(stages)
    result.done = pos.done(stages)
    started = time.monotonic()
    deadline = started + float(timeout) if timeout else None
    env = _stage_env(name)
    params_sent = False
    # everything git has so far: a killed process may have lost writes it had queued
    first = track.full_write(project, name)
    first.params = {}  # the tip's params.yaml may predate this run's config: sent below
    first.status, first.end_time = ("RUNNING" if it < target else None), None
    mirror.send(first)

    try:
        while it < target:
            if si == 0:
                progress(Event("iteration", name, iteration=it, budget=target))
                config = project.compose(rev, rec.overrides, rec.base_commit, it, rec.iterations)
                (project.root / naming.PARAMS_FILE).write_text(
                    hydra.to_yaml(config), encoding="utf-8"
                )
                env["PYTHONHASHSEED"] = pythonhashseed or str(_int_or(config.get("seed"), 0))
                if resume_input and policy.checkpoint_output:
                    source = None
                    if it > 0:
                        outs = DvcProject.lock_outputs(git.read(rev, "dvc.lock"))
                        source = outs.get(policy.checkpoint_output)
                        if source is None:
                            raise ConfigError(
                                f"dvc.lock has no output '{policy.checkpoint_output}' at the end"
                                f" of iteration {it - 1}: check the policy's checkpoint.output"
                            )
                    dvc.set_resume(resume_input, source)
            for stage in stages[si:]:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    project.write_state(name, "timeout")
                    _send_status(mirror, experiment, rec, "KILLED")
                    raise RunTimeout(name, "run", float(timeout or 0))
                stage_deadline = now + float(stage_timeout) if stage_timeout else None
                limits = [d for d in (deadline, stage_deadline) if d is not None]
                progress(Event("stage_start", name, iteration=it, budget=target, stage=stage))
                try:
                    outcome = dvc.run_stage(
                        stage,
                        log_path=project.local("logs", name, f"{it:05d}-{stage}.log"),
                        env=env,
                        deadline=min(limits) if stage_timeout or deadline else None,
                        run_cache=run_cache,
                        on_children=lock.update,
                        echo=echo,
                    )
                except StageCommandFailed as exc:
                    _fail(project, mirror, experiment, name, exc, it, timeout, stage_timeout,
                          deadline)
                if stage == stages[-1]:
                    _write_manifest(project, rec, policy, it, env, argv, rev, mirror.uri,
                                    resume_input)
                body = f"stage {stage} " + (
                    f"ran in {outcome.seconds:.2f}s" if outcome.ran else "was up to date"
                )
                rev = git.commit_paths(
                    branch,
                    sorted(managed),
                    naming.format_checkpoint_message(name, it, stage, body),
                    parent=rev,
                    signature=signature,
                )
                lock.update([])
                result.ran.append((it, stage))
                progress(
                    Event("stage_end", name, iteration=it, budget=target, stage=stage,
                          ran=outcome.ran, seconds=outcome.seconds)
                )
            metrics = lineage.MetricsReader(project).at(rev)
            finished = it + 1 >= rec.iterations
            stamp = git.commit(rev).time * 1000
            mirror.send(track.RunWrite(
                run=name, experiment=experiment, start_time=track.iso_to_ms(rec.created),
                tags={naming.TAG_GIT_COMMIT: rev, "mlfork.budget": str(rec.iterations)},
                params={} if params_sent else track.run_params(project, rev),
                metrics=[[k, v, stamp, it] for k, v in sorted(metrics.items())],
                status="FINISHED" if finished else None,
                end_time=stamp if finished else None,
            ))
            params_sent = True
            result.done = it + 1
            progress(Event("iteration_end", name, iteration=it, budget=target, metrics=metrics))
            it, si = it + 1, 0
    except KeyboardInterrupt:
        project.write_state(name, "interrupted")
        _send_status(mirror, experiment, rec, "KILLED")
        raise Interrupted(name) from None
    finally:
        mirror.close()
        result.warnings.extend(mirror.warnings)
        project.close()

    result.budget = rec.iterations
    result.status = "completed" if result.done >= rec.iterations else "stopped"
    project.write_state(name, result.status)
    result.tip = rev
    result.headline, result.headline_value = lineage.headline_at(project, rev)
    return result


def _write_manifest(
    project: Project,
    rec: RunRecord,
    policy: Any,
    iteration: int,
    env: dict[str, str],
    argv: Sequence[str],
    code_commit: str,
    uri: str,
    resume_input: str | None,
) -> None:
    """.mlfork/replay.json for this iteration, committed with its last stage."""
    import yaml

    from ..adapters.tracking import redact_uri
    from . import manifest

    root = project.root
    config = yaml.safe_load((root / naming.PARAMS_FILE).read_text(encoding="utf-8")) or {}
    lock = root / "dvc.lock"
    params, outs = manifest.dvc_yaml_shape((root / "dvc.yaml").read_bytes())
    exclude = tuple(p for p in (resume_input, policy.checkpoint_output) if p)
    lock_text = lock.read_bytes() if lock.exists() else None
    data = manifest.datasets(
        root, config, policy.locked, lock_text,
        manifest.data_sources(root, lock_text), params, outs, exclude=exclude,
        cache=manifest.HashCache(project.local("hashes.json")),
    )
    embedded = uri.startswith("sqlite:///") and uri.endswith(naming.TRACKING_DB)
    doc = manifest.build(
        rec=rec, iteration=iteration, argv=list(argv or rec.argv), config=config,
        pythonhashseed=env.get("PYTHONHASHSEED", ""), data=data, code_commit=code_commit,
        tracking="embedded" if embedded else redact_uri(uri), created=now_iso(),
    )
    path = root / naming.REPLAY_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.dumps(doc), encoding="utf-8")


def _fail(
    project: Project,
    mirror: track.Mirror,
    experiment: str,
    name: str,
    exc: Any,
    iteration: int,
    timeout: Any,
    stage_timeout: Any,
    deadline: float | None,
) -> None:
    rec = lineage.record(project, name)
    if exc.timed_out:
        project.write_state(name, "timeout")
        _send_status(mirror, experiment, rec, "KILLED")
        run_level = deadline is not None and time.monotonic() >= deadline - 0.05
        what, secs = ("run", timeout) if run_level else (f"stage '{exc.stage}'", stage_timeout)
        raise RunTimeout(name, what, float(secs or 0)) from None
    if exc.returncode in (-2, 130):
        project.write_state(name, "interrupted")
        _send_status(mirror, experiment, rec, "KILLED")
        raise Interrupted(name) from None
    project.write_state(name, "failed", f"stage {exc.stage} exited with {exc.returncode}")
    _send_status(mirror, experiment, rec, "FAILED")
    raise StageFailed(name, iteration, exc.stage, exc.returncode, exc.tail) from None


def _send_status(mirror: track.Mirror, experiment: str, rec: RunRecord, status: str) -> None:
    mirror.send(track.RunWrite(
        run=rec.name, experiment=experiment, start_time=track.iso_to_ms(rec.created),
        status=status, end_time=int(time.time() * 1000),
    ))


def _restore_leftovers(project: Project, managed: set[str]) -> None:
    """Changes to pipeline-managed files are leftovers of an interrupted stage: put them back
    as the last commit has them. Anything else is the user's: refuse to touch it."""
    dirty = project.git.dirty_paths()
    foreign = [p for p in dirty if p not in managed]
    if foreign:
        raise DirtyWorkingTree(foreign)
    leftovers = [p for p in dirty if p in managed]
    project.git.restore(leftovers)
    project.dvc.checkout()


def _switch_to(project: Project, name: str) -> None:
    """Check out the run's branch (and its DVC outputs) if another one is checked out."""
    if lineage.current_run(project) == name:
        return
    project.git.require_clean()
    project.git.switch(naming.branch_name(name))
    project.dvc.checkout()


def _undo_start(project: Project, branch: str, head: str, previous: str | None) -> None:
    record = project.root / naming.RUN_RECORD
    if record.exists() and not project.git.has_path(head, naming.RUN_RECORD):
        record.unlink()
    elif record.exists():
        project.git.restore([naming.RUN_RECORD])
    if previous:
        project.git.set_head(previous)
    project.git.delete_branch(branch, head)


def _stage_env(run: str) -> dict[str, str]:
    """The stage's environment: this interpreter's bin first on PATH (so `python` in dvc.yaml
    is the one mlfork runs in), and the run's identity."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": bindir + (os.pathsep + path if path else ""),
        "MLFORK_RUN": run,
    }


def _options(config: dict[str, Any], timeout: float | None, stage_timeout: float | None) -> dict:
    return {
        "timeout": timeout if timeout is not None else config.get("timeout"),
        "stage_timeout": stage_timeout if stage_timeout is not None else config.get(
            "stage_timeout"
        ),
    }


def _record_body(record: RunRecord) -> str:
    lines = [f"iterations: {record.iterations}"]
    if record.own_overrides:
        lines.append("overrides: " + " ".join(record.own_overrides))
    return "\n".join(lines)


def _check_positive(flag: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{flag} must be positive, got {value:g}")


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))

