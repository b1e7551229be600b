"""Tracking writes delivered in the background: git is the truth and MLflow an index, so no
command waits for MLflow unless asked (`--wait`, or MLFORK_WAIT=1).

A command that wrote lineage puts its tracking writes in the outbox and starts one detached
`mlfork sync --background` (as DVC starts its own daemons), which delivers the outbox and
exits once it is empty. One delivers at a time (a lock in .mlfork/local/); a second one
finds the lock taken and leaves, and the holder looks at the outbox again after it lets go,
so a write parked meanwhile is never stranded. Killed, it loses nothing: the outbox stays
and the next command (or `mlfork sync`) delivers it. Its log is .mlfork/local/sync.log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from mlfork import naming
from mlfork.adapters.tracking.writer import Tracker
from mlfork.errors import ProjectLocked, TrackingError
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.mirroring import outbox

WAIT_ENV = "MLFORK_WAIT"  # "1": every command delivers its tracking writes itself
SYNC_WAIT = 60.0  # seconds a foreground `mlfork sync` waits for a background one
MAX_ROUNDS = 100
LOG_LIMIT = 1 << 20  # bytes of sync.log before it is rotated to sync.log.1


def waits(wait: bool | None) -> bool:
    """Does this command deliver its tracking writes in the foreground?"""
    if wait is not None:
        return wait
    return os.environ.get(WAIT_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def delivering(project: Project, timeout: float | None) -> Iterator[bool]:
    """Hold the delivery lock: True once held; False at once (timeout None) or after
    `timeout` seconds when another process holds it."""
    fh = open(project.local("sync.lock"), "a+")  # noqa: SIM115 - held for the block
    try:
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
                break
            except BlockingIOError:
                if timeout is None or time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def start(project: Project) -> int | None:
    """Start the background delivery of the outbox, unless it is empty; its pid."""
    if not outbox.pending(project):
        return None
    env = dict(os.environ)
    env.pop("MLFORK_FAULT", None)  # a fault injected into a command is the command's alone
    path = project.local("sync.log")
    with contextlib.suppress(OSError):  # the log keeps the last MiB or two, not everything
        if path.stat().st_size > LOG_LIMIT:
            os.replace(path, path.with_name(path.name + ".1"))
    log = open(path, "ab")  # noqa: SIM115 - handed to the child
    try:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by pid {os.getpid()}\n"
                  .encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlfork", "sync", "--background"],
            cwd=project.home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
        )
    except OSError:  # cannot start a process: the outbox waits for the next command
        return None
    finally:
        log.close()
    return proc.pid


def deliver(project: Project) -> dict[str, Any]:
    """`mlfork sync --background`: deliver the outbox until it is empty, unless another
    process is doing so. Returns what it did (for its log)."""
    done: dict[str, Any] = {"delivered": 0, "rounds": 0, "warnings": []}
    uri = track.tracking_uri(project, project.git.head_commit(), write=True)
    tracker = Tracker(uri)
    for _ in range(MAX_ROUNDS):
        with delivering(project, None) as held:
            if not held:
                done["busy"] = True
                return done
            done["rounds"] += 1
            try:
                done["delivered"] += outbox.flush(project, tracker)
            except TrackingError as exc:  # the store is down: the outbox waits for it
                done["error"] = str(exc)
                return done
            finally:
                done["warnings"] += tracker.warnings
                tracker.warnings.clear()
        if not outbox.pending(project):
            return done
    return done


@contextlib.contextmanager
def foreground(project: Project) -> Iterator[None]:
    """Hold the delivery lock for a foreground sync, waiting for a background one."""
    with delivering(project, SYNC_WAIT) as held:
        if not held:
            try:
                pid = int((project.home / naming.SYNC_LOCK).read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            raise ProjectLocked(pid, f"delivering tracking writes for {SYNC_WAIT:.0f} s,"
                                     f" log in {naming.SYNC_LOG}")
        yield
