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
from typing import Any, NoReturn

from mlfork import faults, naming
from mlfork.errors import (
    ConfigError,
    Interrupted,
    MissingData,
    RunTimeout,
    StageFailed,
)
from mlfork.models import Commit, RunResult
from mlfork.ops.kernel import lineage, steps, workspace
from mlfork.ops.kernel.guard import Guard
from mlfork.ops.kernel.project import Project, ProjectLock
from mlfork.ops.mirroring import background
from mlfork.ops.mirroring.run_mirror import RunMirror
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
    """What the engine carries from stage to stage."""

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
    wait: bool | None = None,
) -> RunResult:
    """Run stages of `name` (checked out) until `target` iterations are complete.
    `pythonhashseed` (a replay re-applying a manifest's seed bundle) overrides the
    PYTHONHASHSEED derived from the config's seed. `guard` is released at the first
    checkpoint; until then a failure's message says to run `retry` again, not resume.
    `wait`: deliver the last tracking writes before returning (default: MLFORK_WAIT, else
    in the background)."""
    engine = _Engine(project, name, lock=lock, guard=guard, progress=progress, echo=echo,
                     run_cache=run_cache, force=force, signature=signature, argv=argv,
                     pythonhashseed=pythonhashseed, retry=retry, wait=wait)
    engine.load(target, timeout, stage_timeout)
    return engine.run(target)


class _Engine:
    """One `advance`, in named steps: `load` the run (record, policy, pipeline, options),
    then `run`: per iteration a `prologue`, each stage run and `commit_stage`d, the
    iteration's metrics sent (`end_iteration`); the outcome `finish`ed."""

    def __init__(
        self,
        project: Project,
        name: str,
        *,
        lock: ProjectLock,
        guard: Guard | None,
        progress: Progress,
        echo: bool,
        run_cache: bool,
        force: bool,
        signature: Any,
        argv: Sequence[str],
        pythonhashseed: str | None,
        retry: str | None,
        wait: bool | None = None,
    ) -> None:
        self.project, self.name, self.lock, self.guard = project, name, lock, guard
        self.progress, self.echo, self.run_cache, self.force = progress, echo, run_cache, force
        self.signature, self.argv, self.pythonhashseed = signature, argv, pythonhashseed
        self.retry = retry
        self.wait = background.waits(wait)
        self.env = _stage_env(name)

    # -- load ------------------------------------------------------------------------------

    def load(self, target: int, timeout: float | None, stage_timeout: float | None) -> None:
        """The run as its tip has it, with `resume`'s replacements of the stored options
        and budget written into its record (committed with the next checkpoint)."""
        project, name = self.project, self.name
        rev = lineage.tip(project, name)
        rec = lineage.record(project, name, rev)
        self.policy = project.policy(rev)
        project.dvc.reset()
        self.pipeline = project.pipeline()
        self.stages = self.pipeline.stage_names
        if self.stages != rec.stages:
            raise ConfigError(
                f"dvc.yaml's stages {self.stages} differ from the run's {rec.stages}:"
                " start a new run (or fork) for a changed pipeline"
            )
        if stage_timeout is not None:  # `resume --stage-timeout S` replaces the stored value
            rec.options["stage_timeout"] = stage_timeout
        if timeout is not None:
            rec.options["timeout"] = timeout
        if target > rec.iterations:  # `resume --iterations K` past the budget raises it
            rec.iterations = target
        if project.read_record(rev) != rec:
            project.write_record(rec)
        self.rec = rec
        self.timeout = rec.options.get("timeout")
        self.stage_timeout = rec.options.get("stage_timeout")
        handoff = handoff_files(self.policy)
        self.resume_input = handoff[0] if handoff else None
        if self.guard is not None:
            self.guard.save([naming.RUN_RECORD, naming.REPLAY_MANIFEST, *handoff,
                             *[gitignore_of(p) for p in handoff]])
        self.state = _Iteration(rev=rev, it=0, status=project.git.status())

    def hint(self) -> str | None:
        """What to run again after a failure before the first checkpoint (else resume)."""
        return self.retry if self.guard is not None and self.guard.active else None

    # -- run -------------------------------------------------------------------------------

    def run(self, target: int) -> RunResult:
        project, name, rec, state = self.project, self.name, self.rec, self.state
        self.mirror = RunMirror(
            project, rec, state.rev, self.guard, self.wait,
            on_warning=lambda message: self.progress(Event("warning", name, message=message)),
        )
        result = RunResult(name=name, status="running", done=0, budget=rec.iterations)
        pos = lineage.position(project, state.rev)
        it, si = pos.next(self.stages)
        result.done = pos.done(self.stages)
        self.deadline = time.monotonic() + float(self.timeout) if self.timeout else None
        self.mirror.started(state.rev, running=it < target)
        failed = True
        try:
            while it < target:
                state.it = it
                if si == 0:
                    self.progress(Event("iteration", name, iteration=it, budget=target))
                    self.prologue()
                    faults.point("stage.prologue")
                for stage in self.stages[si:]:
                    self.run_stage(stage, target, result)
                self.end_iteration(target)
                result.done = it + 1
                it, si = it + 1, 0
            failed = False
            self.finish(result)  # its state is what the last tracking write says
        except KeyboardInterrupt:
            project.write_state(name, "interrupted")
            self.send_status("KILLED")
            raise Interrupted(name, self.hint()) from None
        finally:
            self.mirror.close(failed, self.lock)
            result.warnings.extend(self.mirror.warnings)
        return result

    def prologue(self) -> None:
        """Before the first stage of an iteration: the commits the user made since the last
        checkpoint (they belong to this iteration), the composed config written into the
        params files, and the checkpoint hand-off pointed at the previous iteration's output
        (fetched from the DVC remote when the cache lacks it)."""

        project, rec, state, policy = self.project, self.rec, self.state, self.policy
        it = state.it
        state.user_commits = lineage.commits_since_checkpoint(project, state.rev)
        state.included = [c.id for c in state.user_commits]
        composed = project.compose(state.rev, rec.overrides, it, rec.iterations)
        self.lock.work(run=rec.name, iteration=it, stage=None)
        for rel, text in composed.files.items():
            path = project.root / rel
            if not path.exists() or path.read_bytes() != text:
                path.write_bytes(text)
        state.files = composed.files
        values = dict(composed.data)
        pipeline = project.pipeline()
        for file in pipeline.params_files():
            if file not in values:
                values[file] = project.params_file_at(state.rev, file)
        state.blind = params.run_cache_blind(pipeline, values)
        if params.side_effect_files(pipeline):
            state.blind |= set(pipeline.stage_names)
        seed = str(int_or(composed.config.get("seed"), 0))
        self.env["PYTHONHASHSEED"] = self.pythonhashseed or seed
        # where the iteration's per-step series start on the run's global step axis
        try:
            self.env[steps.OFFSET_ENV] = str(project.steps.offset(state.rev, it))
        except MissingData as exc:  # earlier series nowhere to be had: no offset to give
            self.env.pop(steps.OFFSET_ENV, None)
            self.progress(Event("warning", rec.name, message=f"{exc} (no {steps.OFFSET_ENV}"
                                                              " for this iteration)"))
        if not (self.resume_input and policy.checkpoint_output):
            return
        source = None
        if it > 0:
            source = project.outputs_at(state.rev).get(policy.checkpoint_output)
            if source is None:
                raise ConfigError(
                    f"dvc.lock has no output '{policy.checkpoint_output}' at the end of"
                    f" iteration {it - 1}: check the policy's checkpoint.output"
                )
            missing = project.dvc.missing_from_cache([policy.checkpoint_output])
            if missing:
                workspace.ensure_inputs(
                    project, missing, f"the checkpoint of iteration {it - 1} (the hand-off)",
                    noter(self.progress, rec.name),
                )
        added = project.dvc.set_resume(self.resume_input, source)
        faults.point("stage.resume")
        if added is not None and self.guard is not None and self.guard.active:
            self.guard.added_cache_object(added)

    def run_stage(self, stage: str, target: int, result: RunResult) -> None:
        """One stage under the run's deadlines, then its checkpoint."""
        from mlfork.adapters.stages import StageCommandFailed, run_stage

        project, name, state = self.project, self.name, self.state
        it = state.it
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            project.write_state(name, "timeout")
            self.send_status("KILLED")
            raise RunTimeout(name, "run", float(self.timeout or 0), "--timeout", self.hint())
        limits = [d for d in (self.deadline, now + float(self.stage_timeout)
                              if self.stage_timeout else None) if d is not None]
        self.progress(Event("stage_start", name, iteration=it, budget=target, stage=stage))
        self.lock.work(run=name, iteration=it, stage=stage)
        try:
            outcome = run_stage(
                project.dvc, stage,
                log_path=project.local("logs", name, f"{it:05d}-{_safe(stage)}.log"),
                env=self.env, deadline=min(limits) if limits else None,
                run_cache=self.run_cache and stage not in state.blind, force=self.force,
                on_children=self.lock.update, echo=self.echo,
            )
        except StageCommandFailed as exc:
            self.fail(exc)
        faults.point("stage.ran")
        if stage == self.stages[-1]:
            capture.write_manifest(project, self.rec, self.policy, it, self.env, self.argv,
                                   state.rev, state.included, self.mirror.uri,
                                   self.resume_input)
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
        state.rev = self.commit_stage(stage, body)
        faults.point("stage.committed")
        if self.guard is not None:
            self.guard.release()
        self.lock.idle()
        result.ran.append((it, stage))
        if outcome.ran:
            result.recomputed.append((it, stage))
        self.progress(Event("stage_end", name, iteration=it, budget=target, stage=stage,
                            ran=outcome.ran, seconds=outcome.seconds))

    def commit_stage(self, stage: str, body: str) -> str:
        """One checkpoint: everything the stage changed that git tracks, every file DVC
        declares (a `cache: false` metrics file, the .gitignore DVC keeps, dvc.yaml
        rewritten by dvclive), the params files, the run record and the manifest. An
        untracked file the stage wrote outside all of that is named in a warning and not
        committed."""
        project, state, git = self.project, self.state, self.project.git
        pipeline = project.pipeline()  # as the stage left dvc.yaml (dvclive adds metrics)
        after = git.status()
        before = state.status
        paths = set(after.changed) | set(state.files) | {naming.RUN_RECORD,
                                                           naming.REPLAY_MANIFEST}
        if self.resume_input:
            paths |= {self.resume_input + ".dvc", gitignore_of(self.resume_input)}
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
            self.progress(Event("warning", self.name, message=(
                f"stage '{stage}' wrote {shown}, which neither git nor DVC tracks: not"
                " committed; declare it in dvc.yaml (outs, metrics, plots) or add it to"
                " .gitignore"
            )))
            project.add_strays(new_strays)
        rev = git.commit_paths(
            naming.branch_name(self.name), sorted(paths),
            naming.format_checkpoint_message(self.name, state.it, stage, body),
            parent=state.rev, signature=self.signature,
        )
        state.status = git.status()
        return rev

    def end_iteration(self, target: int) -> None:
        """The iteration's metrics (and the run's params, once) to the tracking store."""
        project, name, state = self.project, self.name, self.state
        it = state.it
        metrics = project.metrics.at(state.rev)
        self.mirror.iteration(state.rev, it, metrics)
        faults.point("iteration.sent")
        self.progress(Event("iteration_end", name, iteration=it, budget=target,
                            metrics=metrics))

    def finish(self, result: RunResult) -> RunResult:
        project, rev = self.project, self.state.rev
        result.budget = self.rec.iterations
        result.status = "completed" if result.done >= self.rec.iterations else "stopped"
        project.write_state(self.name, result.status)
        result.tip = rev
        result.headline, result.headline_value = lineage.headline_at(project, rev)
        result.suggestion = params.suggest(self.pipeline, project.params_at(rev))
        return result

    # -- failure ---------------------------------------------------------------------------

    def fail(self, exc: Any) -> NoReturn:
        """A stage's failure as the run's: its state recorded, the MLflow run closed, the
        error raised (a timeout names the option that set it)."""
        project, name, rec = self.project, self.name, self.rec
        retry = self.hint()
        if exc.timed_out:
            project.write_state(name, "timeout")
            self.send_status("KILLED")
            if self.deadline is not None and time.monotonic() >= self.deadline - 0.05:
                raise RunTimeout(name, "run", float(rec.options.get("timeout") or 0),
                                 "--timeout", retry) from None
            raise RunTimeout(name, f"stage '{exc.stage}'",
                             float(rec.options.get("stage_timeout") or 0), "--stage-timeout",
                             retry) from None
        if exc.returncode in (-2, 130):
            project.write_state(name, "interrupted")
            self.send_status("KILLED")
            raise Interrupted(name, retry) from None
        project.write_state(name, "failed", f"stage {exc.stage} exited with {exc.returncode}")
        self.send_status("FAILED")
        raise StageFailed(name, self.state.it, exc.stage, exc.returncode, exc.tail,
                          retry) from None

    def send_status(self, status: str) -> None:
        self.mirror.status(status)


def _safe(stage: str) -> str:
    """A stage's addressing as a file name (`sub/dvc.yaml:train@a` has / and :)."""
    return "".join(ch if ch.isalnum() or ch in "._@-" else "_" for ch in stage)


def _group(paths: list[str]) -> str:
    """`outputs/ (12 files)` rather than twelve paths."""
    tops: dict[str, int] = {}
    for p in paths:
        top = p.split("/", 1)[0] + ("/" if "/" in p else "")
        tops[top] = tops.get(top, 0) + 1
    shown = [f"'{t}' ({n} files)" if t.endswith("/") and n > 1 else
             f"'{next(p for p in paths if p.startswith(t))}'" for t, n in tops.items()]
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _stage_env(run: str) -> dict[str, str]:
    """The stage's environment: this interpreter's bin first on PATH (so `python` in dvc.yaml
    is the one mlfork runs in), and the run's identity."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": bindir + (os.pathsep + path if path else ""),
        naming.ENV_RUN: run,
    }
