"""One exception base; every error states the fix and carries its exit code.

Exit codes (documented in the README):

    0  success
    1  unexpected internal error (a bug: run with -v and report it)
    2  bad usage or bad input: an unparsable or unknown override, a bad option value
    3  not an mlfork project: not a git repository, not a DVC project, missing conf/ entries
    4  the working tree has uncommitted changes
    5  a run name is taken or invalid
    6  not found: unknown run, iteration, stage or metric; an ambiguous prefix; an iteration
       without a replay manifest
    7  a fork would change a locked key
    8  a pipeline stage failed
    9  a timeout stopped the run (resumable)
    10 the tracking store could not be written (the outbox keeps the writes)
    11 no git identity is configured
    12 another mlfork process holds the project lock, or the run is checked out in another
       worktree
    13 a dataset differs from the one a run used (replay refused without --force)
    14 a file mlfork reads is malformed (run record, replay manifest)
    15 an output path cannot be written
    16 a replay or verify did not reproduce the original (metrics or checkpoint hashes
       differ, or nothing was recomputed)
    17 missing data: an input DVC needs is in neither the workspace nor the DVC cache, and
       no DVC remote provided it (the message names the `dvc pull` to run)
    18 git refused an operation (a branch moved while mlfork worked on it, a switch failed)
    19 one or more jobs of `mlfork sweep` or `mlfork resume --jobs` failed (the others ran
       on; each failure names its log and the `mlfork resume` that goes on)
    20 `mlfork merge` refused checkpoints that cannot be averaged (their locked keys differ,
       their model states' names, shapes or dtypes differ, or they are not mlfork.state
       files)
    130 interrupted (Ctrl-C); resumable
    141 the reader of the output went away (`mlfork log` piped into `head -1`): nothing printed
"""

from __future__ import annotations

from collections.abc import Sequence


class MlforkError(Exception):
    """Base of every error mlfork reports. `str(err)` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MlforkError):
    exit_code = 2


class OverrideError(UsageError):
    def __init__(self, override: str, reason: str) -> None:
        reason = " ".join(reason.split())
        super().__init__(f"override '{override}' is invalid: {reason}")
        self.override = override
        self.reason = reason


class ProjectError(MlforkError):
    exit_code = 3


class NotAGitRepository(ProjectError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"'{path}' is not in a git repository: run 'mlfork init' there, or 'git init' first"
        )


class NotADvcProject(ProjectError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"'{path}' is not a DVC project: run 'mlfork init' (or 'dvc init') there first"
        )


class ConfigError(ProjectError):
    pass


class DirtyWorkingTree(MlforkError):
    exit_code = 4

    def __init__(
        self, paths: Sequence[str], what: str = "the working tree has uncommitted changes",
        fix: str = "commit or stash them first",
    ) -> None:
        shown = ", ".join(paths[:8]) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")
        super().__init__(f"{what} ({shown}): {fix}")
        self.paths = list(paths)


class RunNameError(MlforkError):
    exit_code = 5


class RunNameTaken(RunNameError):
    def __init__(self, name: str, flag: str = "--name") -> None:
        super().__init__(f"branch 'mlfork/{name}' exists: pick another {flag}")
        self.name = name


class InvalidRunName(RunNameError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid run name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
        self.name = name


class NotFound(MlforkError):
    exit_code = 6


class UnknownRun(NotFound):
    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        hint = f" (runs: {', '.join(known[:10])})" if known else " ('mlfork runs' lists them)"
        super().__init__(f"unknown run '{name}'{hint}")
        self.name = name


class AmbiguousRun(NotFound):
    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        super().__init__(
            f"run prefix '{prefix}' is ambiguous: {', '.join(candidates)}; give more characters"
        )
        self.candidates = list(candidates)


class ManifestMissing(NotFound):
    def __init__(self, run: str, iteration: int, commit: str) -> None:
        super().__init__(
            f"iteration {iteration} of '{run}' has no replay manifest (.mlfork/replay.json at"
            f" {commit[:10]}): it was made by an mlfork without manifests; 'mlfork log {run}'"
            " shows its checkpoints, a new 'mlfork run' records manifests"
        )


class LockedKeyError(MlforkError):
    exit_code = 7

    def __init__(self, key: str, override: str) -> None:
        super().__init__(
            f"override '{override}' would change locked key '{key}': a fork keeps the locked keys"
            " of its lineage so that its metrics stay comparable; start a new run with"
            " 'mlfork run' instead"
        )
        self.key = key


def _go_on(run: str, retry: str | None) -> str:
    """How to continue: resume the run, or (a command that failed before its first
    checkpoint, and so kept nothing) run the command again."""
    if retry:
        return f"run '{retry}' again (nothing was kept)"
    return f"run 'mlfork resume {run}'"


class StageFailed(MlforkError):
    exit_code = 8

    def __init__(
        self, run: str, iteration: int, stage: str, returncode: int, tail: str,
        retry: str | None = None,
    ) -> None:
        tail_text = " | ".join(line for line in tail.strip().splitlines()[-5:] if line.strip())
        super().__init__(
            f"stage '{stage}' of iteration {iteration} failed with exit code {returncode}"
            + (f": {tail_text}" if tail_text else "")
            + f"; fix it, then {_go_on(run, retry)}"
        )
        self.stage = stage
        self.iteration = iteration
        self.returncode = returncode
        self.tail = tail


class RunTimeout(MlforkError):
    exit_code = 9

    def __init__(
        self, run: str, what: str, seconds: float, flag: str = "--timeout",
        retry: str | None = None,
    ) -> None:
        if retry:
            how = f"run '{retry}' again with a larger {flag} (nothing was kept)"
        else:
            how = (
                f"everything committed is kept: run 'mlfork resume {run} {flag} S' with a"
                f" larger S to go on"
            )
        super().__init__(f"{what} timeout of {seconds:g}s ({flag}) reached; {how}")


class TrackingError(MlforkError):
    exit_code = 10


class NoGitIdentity(MlforkError):
    exit_code = 11

    def __init__(self) -> None:
        super().__init__(
            "no git identity is configured: run 'git config --global user.name \"Your Name\"'"
            " and 'git config --global user.email you@example.com'"
        )


class ProjectLocked(MlforkError):
    exit_code = 12

    def __init__(self, pid: int, what: str) -> None:
        super().__init__(
            f"another mlfork process (pid {pid}, {what}) is working in this project:"
            " wait for it to finish"
        )


class RunBusy(ProjectLocked):
    """The run's branch is checked out in another worktree (a sweep's job, `git worktree`)."""

    def __init__(self, run: str, where: str) -> None:
        MlforkError.__init__(
            self,
            f"run '{run}' is checked out in the worktree {where} (a job of 'mlfork sweep' or"
            f" 'resume --jobs', or your own 'git worktree'): wait for it to finish, or work"
            f" on it there",
        )


class DatasetMismatch(MlforkError):
    exit_code = 13


class MalformedFile(MlforkError):
    exit_code = 14

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is malformed: {reason}")


class OutputPathError(MlforkError):
    exit_code = 15


class WriteError(OutputPathError):
    """The disk is full, the file system read-only, or a file not writable: nothing was
    half-written."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(
            f"cannot write {what}: {reason}; free some space (or make it writable) and run the"
            " command again: nothing was half-written"
        )


WRITE_ERRNOS = (28, 30, 122, 13, 1)  # ENOSPC, EROFS, EDQUOT, EACCES, EPERM


def write_error(exc: OSError) -> WriteError:
    what = f"'{exc.filename}'" if exc.filename else "the project"
    return WriteError(what, exc.strerror or str(exc))


class Diverged(MlforkError):
    """A replay or `mlfork verify` did not reproduce the original bit for bit."""

    exit_code = 16


class MissingData(MlforkError):
    """An input a stage or a checkpoint hand-off needs is in neither the workspace nor the
    DVC cache, and no DVC remote provided it."""

    exit_code = 17


class GitError(MlforkError):
    """git refused an operation: a ref moved under mlfork, a switch that failed."""

    exit_code = 18


class Interrupted(MlforkError):
    exit_code = 130

    def __init__(self, run: str, retry: str | None = None) -> None:
        if retry:
            super().__init__(f"interrupted before the first checkpoint: {_go_on(run, retry)}")
        else:
            super().__init__(
                f"interrupted; everything committed is kept: run 'mlfork resume {run}' to go on"
            )


class JobsFailed(MlforkError):
    """Some jobs of `mlfork sweep` / `mlfork resume --jobs` failed; the others ran on."""

    exit_code = 19

    def __init__(self, failed: list[str], total: int) -> None:
        super().__init__(
            f"{len(failed)} of {total} job(s) failed ({', '.join(failed)}): each line above"
            " names its log and the 'mlfork resume' that goes on from where it stopped"
        )


class MergeMismatch(MlforkError):
    """`mlfork merge`: the checkpoints cannot be averaged (the first mismatch named)."""

    exit_code = 20


class JobsInterrupted(Interrupted):
    """`mlfork sweep` or `mlfork resume --jobs` was interrupted: its jobs were stopped."""

    def __init__(self, runs: list[str], jobs: int) -> None:
        MlforkError.__init__(
            self,
            f"interrupted; the running jobs were stopped, everything they committed is kept:"
            f" run 'mlfork resume {' '.join(runs)} --jobs {jobs}' to go on",
        )
