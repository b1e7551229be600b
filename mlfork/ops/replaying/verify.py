"""`mlfork verify` (DESIGN.md section 7): fork a run at the end of iteration N without
overrides into a scratch run, resume it with DVC's run cache off, compare its iterations with
the run's own, put the workspace back and remove the scratch fork."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlfork import faults, naming
from mlfork.errors import MalformedFile, MlforkError, NotFound, UsageError
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.guard import Guard
from mlfork.ops.kernel.project import Project
from mlfork.ops.replaying import manifest
from mlfork.ops.replaying.divergence import Comparison, compare, iteration_span
from mlfork.ops.replaying.launch import Once
from mlfork.ops.running.common import Event, Progress, check_new_name, next_free_name, quiet

TAG_VERIFY_OF = naming.TAG_VERIFY_OF


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
    path: str | os.PathLike[str] = ".",
    run: str | None = None,
    *,
    from_iteration: int,
    iterations: int | None = None,
    keep: bool = False,
    progress: Progress = quiet,
    echo: bool = False,
    argv: Sequence[str] = (),
) -> VerifyResult:
    """Fork `run` at the end of `from_iteration` without overrides into a scratch run,
    resume it for `iterations` (default: up to the run's last completed iteration) with
    DVC's run cache off, and compare those iterations with the run's. The checked-out
    branch and its DVC outputs are restored at the end; the scratch fork (branch, MLflow
    run, local state) is removed unless `keep`."""
    project = Project.open(path)
    try:  # one lock over the whole check: the fork, its resume and the way back
        with project.lock(run or "", "verify"):
            return _verify(path=path, run=run, from_iteration=from_iteration,
                           iterations=iterations, keep=keep, progress=progress, echo=echo,
                           argv=argv)
    finally:
        project.close()


def _verify(
    *,
    path: str | os.PathLike[str],
    run: str | None,
    from_iteration: int,
    iterations: int | None,
    keep: bool,
    progress: Progress,
    echo: bool,
    argv: Sequence[str],
) -> VerifyResult:
    from mlfork.ops.running.fork import branch
    from mlfork.ops.running.start import resume

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
        from mlfork.ops.kernel import workspace

        workspace.check(project, project.pipeline(), run=lineage.current_run(project))
        scratch = next_free_name(project, naming.verify_stem(src))
        check_new_name(project, scratch)
        seed = _pythonhashseed(project, ends[n + 1].commit)
        original_rev = ends[n + k].commit
    finally:
        project.close()

    created = False
    warnings: list[str] = []
    try:
        branch(
            path=path, source=src, from_iteration=n, name=scratch, iterations=k,
            tags=[f"{TAG_VERIFY_OF}={src}"], argv=argv, progress=say,
        )
        created = True
        faults.point("verify.forked")
        ran = resume(path=path, run=scratch, run_cache=False, force=True, pythonhashseed=seed,
                     progress=say, echo=echo, argv=argv)
        project = Project.open(path)
        try:
            comparison = compare(
                project, original_rev, lineage.tip(project, scratch), range(n + 1, n + k + 1),
                original=src, replay=scratch, recomputed=ran.recomputed,
            )
        finally:
            project.close()
        faults.point("verify.compared")
    finally:
        warnings = _put_back(path, previous, scratch, created, keep, say)
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
    """Switch back to `previous` (leftovers of a failed scratch stage put back first) with
    its DVC outputs, and remove the scratch run unless `keep`. Never raises: what cannot be
    done is returned (and reported) as a warning."""
    from mlfork.ops.kernel import workspace
    from mlfork.ops.running.rm import remove

    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        progress(Event("warning", scratch, message=message))

    project = Project.open(path)
    try:
        with project.lock(scratch, "verify") as lock:
            git = project.git
            if git.head_branch() != previous:
                try:
                    workspace.settle(project, lock, run=None)
                    guard = Guard(project)
                    try:
                        workspace.switch(project, guard, lock, previous)
                    except BaseException:
                        guard.rollback()
                        raise
                    guard.release()
                    lock.idle()
                    faults.point("verify.back")
                except MlforkError as exc:
                    warn(f"could not switch back to '{previous}' ({exc}): the workspace is on"
                         f" 'mlfork/{scratch}', which is kept")
                    return warnings
            if created and not keep:
                remove(project, scratch, on_warning=warn)
    except MlforkError as exc:
        warn(f"the scratch run '{scratch}' could not be cleaned up: {exc}")
    finally:
        project.close()
    return warnings
