"""Talking to git remotes: through the `git` CLI, so that the user's remotes, credential
helpers, SSH agent and config work exactly as they do for `git push` and `git fetch`."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlfork.errors import GitError, UsageError


@dataclass(frozen=True)
class PushedRef:
    """One ref of a `git push --porcelain`: its status flag and git's summary."""

    local: str
    remote: str
    flag: str  # " " fast-forward, "*" new, "=" up to date, "!" rejected, "+" forced
    summary: str

    @property
    def ok(self) -> bool:
        return self.flag != "!"


def run_git(workdir: Path, *args: str, what: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in `workdir`, never prompting; GitError if git cannot be run at all."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    try:
        return subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True,
                              env=env, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise GitError(f"could not run git to {what}: {exc}") from exc


def first_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The line of git's stderr that says what went wrong."""
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (fatal or lines or [f"exit status {proc.returncode}"])[0]


def remotes(workdir: Path) -> list[str]:
    proc = run_git(workdir, "remote", what="list the remotes")
    return sorted(proc.stdout.split()) if proc.returncode == 0 else []


def choose(workdir: Path, remote: str | None) -> str:
    """`remote`, checked; else the only remote, else `origin`. UsageError naming what to do."""
    known = remotes(workdir)
    if remote is not None:
        if remote not in known:
            raise UsageError(f"no git remote '{remote}'"
                             + (f" (remotes: {', '.join(known)})" if known else
                                ": add one with 'git remote add origin URL'"))
        return remote
    if len(known) == 1:
        return known[0]
    if "origin" in known:
        return "origin"
    if not known:
        raise UsageError("the repository has no git remote: add one with"
                         " 'git remote add origin URL'")
    raise UsageError(f"several git remotes ({', '.join(known)}): name one with --remote")


def push(workdir: Path, remote: str, refspecs: list[str]) -> list[PushedRef]:
    """`git push --porcelain REMOTE REFSPEC...` (never forced): each ref's outcome. A
    rejected ref is reported, not raised; a remote that cannot be reached raises."""
    if not refspecs:
        return []
    proc = run_git(workdir, "push", "--porcelain", remote, *refspecs, what=f"push to {remote}")
    out = []
    for line in proc.stdout.splitlines():
        if "\t" not in line:
            continue
        flag, refs, summary = (line.split("\t") + ["", ""])[:3]
        local, _, target = refs.partition(":")
        out.append(PushedRef(local, target, flag[:1] or " ", summary.strip()))
    if proc.returncode != 0 and not any(not r.ok for r in out):
        raise GitError(f"git push to '{remote}' failed: {first_error(proc)}")
    return out


def fetch(workdir: Path, remote: str, refspecs: list[str]) -> None:
    """`git fetch REMOTE REFSPEC...` into remote-tracking refs (no local branch changes)."""
    proc = run_git(workdir, "fetch", "--no-tags", "--prune", remote, *refspecs,
                what=f"fetch from {remote}")
    if proc.returncode != 0:
        raise GitError(f"git fetch from '{remote}' failed: {first_error(proc)}")
