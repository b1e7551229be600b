"""The project lock: one mlfork writer per project, held from a command's first check to its
last write, re-entrant within a process. It lives in the git directory (taking it changes
nothing in the working tree) and says who holds it and what that holder was in the middle
of; readers never take it, they check that its holder lives."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfork import naming
from mlfork.errors import ProjectLocked

if TYPE_CHECKING:
    from mlfork.ops.kernel.project import Project


_HELD: dict[str, ProjectLock] = {}  # lock path -> the lock this process holds


LOCK_WAIT = 5.0  # seconds a command waits for another one's lock before it refuses


def alive(payload: dict[str, Any]) -> bool:
    """Is the process a lock record names still running (the same process, not a reused
    pid)?"""
    import psutil

    try:
        proc = psutil.Process(int(payload.get("pid") or 0))
        started = float(payload.get("started") or 0)
        return proc.pid > 0 and (not started or abs(proc.create_time() - started) < 0.01)
    except (psutil.Error, TypeError, ValueError):
        return False


class ProjectLock:
    def __init__(self, fh: Any, run: str, command: str, previous: str = "") -> None:
        import psutil

        self._fh = fh
        self.run = run
        self.command = command
        self.depth = 0
        self.started = psutil.Process().create_time()
        self.children: list[tuple[int, float]] = []
        self.working: dict[str, Any] | None = None
        try:
            loaded = json.loads(previous or "{}")
        except ValueError:
            loaded = {}
        self.previous: dict[str, Any] = loaded if isinstance(loaded, dict) else {}

    @property
    def interrupted_work(self) -> dict[str, Any] | None:
        """What the previous holder was in the middle of when it died (a stage of a run, a
        switch), or None if it finished cleanly."""
        work = self.previous.get("working")
        return dict(work) if isinstance(work, dict) else None

    def update(self, children: list[tuple[int, float]] | None = None) -> None:
        if children is not None:
            self.children = children
        payload = {
            "pid": os.getpid(),
            "started": self.started,
            "run": self.run,
            "command": self.command,
            "children": self.children,
            "working": self.working,
        }
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(payload))
        self._fh.flush()

    def work(self, **what: Any) -> None:
        """Mark the workspace as being changed (a stage running, a switch): if this process
        dies, the next holder knows the changes it finds are leftovers, not a user's."""
        self.working = dict(what)
        self.update()

    def idle(self) -> None:
        """The workspace is consistent again (committed, or put back)."""
        self.working = None
        self.children = []
        self.update()

    def release(self) -> None:
        """Let go: the record says nobody holds the lock, unless work was left half done
        (a failed stage's leftovers: the next holder puts them back)."""
        if self.working is None:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.flush()

    @staticmethod
    def reap_orphans(previous: str, grace: float = 30.0) -> None:
        """Stage processes of an mlfork that was killed may still be writing outputs:
        wait for them (then kill them) before touching the workspace."""
        import psutil

        try:
            children = list(json.loads(previous or "{}").get("children") or [])
        except (ValueError, AttributeError):
            return
        procs = []
        for pid, created in children:
            try:
                proc = psutil.Process(int(pid))
                if abs(proc.create_time() - float(created)) < 0.01:  # not a reused pid
                    procs.append(proc)
            except (psutil.Error, TypeError, ValueError):
                continue
        if not procs:
            return
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def record_of(project: Project, path: Path | None = None) -> dict[str, Any]:
    try:
        loaded = json.loads((path or project.lock_path).read_text("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def running(project: Project) -> set[str]:
    """The runs a live mlfork is running right now, in any worktree of the repository (a
    sweep runs its forks in worktrees of their own)."""
    name = naming.lock_name(project.git.prefix)
    common = project.git.common_dir
    paths = [project.lock_path, common / name]
    with contextlib.suppress(OSError):
        paths += [entry / name for entry in sorted((common / "worktrees").iterdir())]
    out = set()
    for path in dict.fromkeys(paths):
        found = record_of(project, path)
        if found.get("run") and alive(found):
            out.add(str(found["run"]))
    return out

def last_work(project: Project) -> dict[str, Any] | None:
    """What the last holder of the lock was in the middle of (a stage, a switch) if it
    died there; None if it finished cleanly. Under the lock, what the lock found."""
    held = _HELD.get(str(project.lock_path))
    if held is not None:
        return held.interrupted_work
    found = record_of(project)
    if alive(found):
        return None  # still at work: not leftovers
    work = found.get("working")
    return dict(work) if isinstance(work, dict) else None

@contextmanager
def acquire(project: Project, run: str, command: str) -> Iterator[ProjectLock]:
    """One mlfork writer per project, from a command's first check to its last write.
    Re-entrant within a process: an operation that calls another (verify forks and
    resumes) holds it once. The OS drops the lock when the holder dies."""
    path = project.lock_path
    key = str(path)
    if key in _HELD:
        held = _HELD[key]
        outer = (held.run, held.command)
        held.run, held.command, held.depth = run, command, held.depth + 1
        held.update()
        try:
            yield held
        finally:
            held.run, held.command = outer
            held.depth -= 1
            held.update()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:  # a short command (a fork) holding it is waited for, briefly
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            raise ProjectLocked(
                int(holder.get("pid", 0)), holder.get("command", "unknown")
            ) from None
        fh.seek(0)
        previous = fh.read()
        # what a killed command saved to roll back with: the next command resumes
        # from the last commit instead (the lock says what was in progress)
        import shutil

        shutil.rmtree(project.root / naming.GUARD_DIR, ignore_errors=True)
        lock = ProjectLock(fh, run, command, previous)
        lock.reap_orphans(previous)
        lock.update()
        _HELD[key] = lock
        try:
            yield lock
            lock.idle()
        finally:
            del _HELD[key]
            lock.release()
    finally:
        fh.close()
