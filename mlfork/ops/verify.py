"""`mlfork verify` (DESIGN.md section 7): fork a run at the end of iteration N without
overrides into a scratch run, resume it with DVC's run cache off, compare its iterations with
the run's own, put the workspace back and remove the scratch fork."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import naming
from ..errors import MalformedFile, MlforkError, NotFound, UsageError
from . import lineage, manifest, track
from .divergence import Comparison, compare, iteration_span
from .project import Project
from .replay import Once
from .run import Event, Progress, _quiet, check_new_name, next_free_name

TAG_VERIFY_OF = "mlfork.verify_of"
VERIFY_STEM = "{run}-verify"


@dataclass
class VerifyResult:
    """What `mlfork verify` did."""

    run: str
    from_iteration: int
    iterations: int
    scratch: str
    kept: bool
    comparison: Comparison
    warnings: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.comparison.identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "from_iteration": self.from_iteration,
            "iterations": self.iterations,
            "scratch": self.scratch,
            "kept": self.kept,
            "identical": self.identical,
            "comparison": self.comparison.to_dict(),
            "warnings": list(self.warnings),
        }


def verify(
    *,
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    from_iteration: int,
    iterations: int | None = None,
    keep: bool = False,
    progress: Progress = _quiet,
    echo: bool = False,
    argv: Sequence[str] = (),
) -> VerifyResult:
    """Fork `run` at the end of `from_iteration` without overrides into a scratch run,
    resume it for `iterations` (default: up to the run's last completed iteration) with
    DVC's run cache off, and compare those iterations with the run's. The checked-out
    branch and its DVC outputs are restored at the end; the scratch fork (branch, MLflow
    run, local state) is removed unless `keep`."""
    from .fork import branch
    from .run import resume

    say = Once(progress)
    project = Project.open(path)
    try:
        git = project.git
        src = lineage.resolve_run(project, run)
        rev = lineage.tip(project, src)
        rec = lineage.record(project, src, rev)
        ends = lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)
        n = from_iteration
        if n < 0:
            raise UsageError(f"--from-iteration must be 0 or more, got {n}")
        if n not in ends:
            span = iteration_span(sorted(ends)) if ends else "none yet"
            raise NotFound(
                f"iteration {n} of '{src}' is not completed (completed: {span}); pick one of those"
            )
        last = max(ends)
        if n >= last:
            raise UsageError(
                f"iteration {n} is the last completed iteration of '{src}': nothing after it to"
                f" compare with; pick --from-iteration below {n}, or 'mlfork resume {src}' first"
            )
        k = iterations if iterations is not None else last - n
        if k < 1:
            raise UsageError(f"--iterations must be 1 or more, got {k}")
        if n + k > last:
            raise UsageError(
                f"--iterations {k} goes past the last completed iteration of '{src}' ({last}):"
                f" at most {last - n}"
            )
        previous = git.head_branch()
        if previous is None:
            raise UsageError(
                "HEAD is detached: check out a branch first (verify switches back to it)"
            )
        git.require_clean()
        scratch = next_free_name(project, VERIFY_STEM.format(run=src))
        check_new_name(project, scratch)
        seed = _pythonhashseed(project, ends[n + 1].commit)
        original_rev = ends[n + k].commit
    finally:
        project.close()

    created = False
    warnings: list[str] = []
    comparison: Comparison | None = None
    try:
        branch(
            path=path, source=src, from_iteration=n, name=scratch, iterations=k,
            tags=[f"{TAG_VERIFY_OF}={src}"], argv=argv, progress=say,
        )
        created = True
        resume(path=path, run=scratch, run_cache=False, pythonhashseed=seed, progress=say,
               echo=echo, argv=argv)
        project = Project.open(path)
        try:
            comparison = compare(
                project, original_rev, lineage.tip(project, scratch), range(n + 1, n + k + 1),
                original=src, replay=scratch,
            )
        finally:
            project.close()
    finally:
        warnings = _put_back(path, previous, scratch, created, keep, say)
    assert comparison is not None
    return VerifyResult(
        run=src, from_iteration=n, iterations=k, scratch=scratch, kept=keep and created,
        comparison=comparison, warnings=warnings,
    )


def _pythonhashseed(project: Project, commit: str) -> str | None:
    text = project.git.read(commit, naming.REPLAY_MANIFEST)
    if text is None:
        return None
    try:
        value = manifest.load(text).seed.get("PYTHONHASHSEED")
    except MalformedFile:
        return None
    return str(value) if value not in (None, "") else None


def _put_back(
    path: str | os.PathLike[str],
    previous: str,
    scratch: str,
    created: bool,
    keep: bool,
    progress: Progress,
) -> list[str]:
    """Switch back to `previous` (leftovers of a failed scratch stage restored first) with
    its DVC outputs, and remove the scratch run unless `keep`. Never raises: what cannot be
    done is returned (and reported) as a warning."""
    from .run import _restore_leftovers

    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        progress(Event("warning", scratch, message=message))

    project = Project.open(path)
    try:
        with project.lock(scratch, "verify"):
            git = project.git
            if git.head_branch() != previous:
                try:
                    tip = git.head_commit()
                    policy = project.policy(tip) if tip else None
                    extra = (policy.checkpoint_resume,) if policy and policy.checkpoint_output \
                        and policy.checkpoint_resume else ()
                    managed = set(project.dvc.managed_paths(extra))
                    managed |= {naming.PARAMS_FILE, naming.RUN_RECORD, naming.REPLAY_MANIFEST}
                    _restore_leftovers(project, managed)
                    git.switch(previous)
                    project.dvc.checkout()
                except MlforkError as exc:
                    warn(f"could not switch back to '{previous}' ({exc}): the workspace is on"
                         f" 'mlfork/{scratch}', which is kept")
                    return warnings
            if created and not keep:
                warnings += remove_run(project, scratch, warn)
    except MlforkError as exc:
        warn(f"the scratch run '{scratch}' could not be cleaned up: {exc}")
    finally:
        project.close()
    return warnings


def remove_run(project: Project, name: str, warn: Any) -> list[str]:
    """Delete a run made by mlfork itself (a scratch fork): its branch, its MLflow run,
    its pending tracking writes and its local state and logs."""
    from ..adapters.tracking import Tracker

    git = project.git
    tip = git.resolve_branch(naming.branch_name(name))
    if tip is None:
        return []
    uri = track.tracking_uri(project, tip)
    experiment = track.experiment_name(project, tip)
    git.delete_branch(naming.branch_name(name), tip)
    for pending in track.pending(project):
        if pending.stem[21:] == name:  # <20-digit time>-<run>.json
            pending.unlink()
    state = project.root / naming.STATE_DIR / f"{name}.json"
    if state.exists():
        state.unlink()
    logs = project.root / naming.LOGS_DIR / name
    if logs.is_dir():
        shutil.rmtree(logs, ignore_errors=True)
    try:
        tracker = Tracker(uri)
        run_id = tracker.find_run(experiment, name)
        if run_id is not None:
            tracker.client.delete_run(run_id)
    except Exception as exc:  # the tracking store is a side channel: warn, never fail
        warn(f"the MLflow run of '{name}' could not be deleted ({exc}): delete it in the"
             " MLflow UI, or run 'mlfork sync --rebuild'")
    return []
