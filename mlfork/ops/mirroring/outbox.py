"""The delivery of tracking writes: the outbox (`.mlfork/local/outbox/`) where writes wait
until the store takes them, the flush that delivers it in order, and the Mirror a command
writes through (in a worker thread during a run, so that stages never wait for MLflow)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlfork import naming
from mlfork.adapters.tracking.store import Undeliverable
from mlfork.adapters.tracking.writer import RunWrite, Tracker
from mlfork.errors import TrackingError
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring.mirror import experiment_name, full_write


@dataclass
class Mirror:
    """Delivers RunWrites; once the store fails, every later write of this process waits in
    the outbox (one warning, no stalls), and `mlfork sync` delivers them.

    With `background=True` the writes go through one worker thread, in order, so that a run
    does not wait for MLflow (its import and store set-up take seconds) before its first
    stage: the stages run as subprocesses meanwhile. `close()` waits for the last write;
    `close(wait=False)` puts what is not delivered yet in the outbox instead, for the
    background `mlfork sync` (see `background.py`)."""

    project: Project
    uri: str
    on_warning: Callable[[str], None] | None = None
    background: bool = False
    warnings: list[str] = field(default_factory=list)
    _tracker: Tracker | None = None
    _down: bool = False
    _queue: queue.Queue[RunWrite | None] | None = None
    _worker: threading.Thread | None = None
    _unsent: list[RunWrite] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
        return self._tracker

    def send(self, write: RunWrite) -> bool:
        """Deliver (or queue, in the background mode) one write; False if it was parked."""
        if not self.background:
            return self._deliver(write)
        if self._worker is None or self._queue is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(
                target=self._drain, args=(self._queue,), name="mlfork-mirror", daemon=True
            )
            self._worker.start()
        with self._lock:
            self._unsent.append(write)
        self._queue.put(write)
        return True

    def close(self, wait: bool = True) -> None:
        """Stop the worker: `wait` for its last write, or park what it has not delivered
        (the write in flight too: writes are idempotent)."""
        if self._worker is None or self._queue is None:
            return
        if wait:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
            return
        with self._lock:
            self._stopping = True
            unsent, self._unsent = self._unsent, []
        for write in unsent:
            park(self.project, write)
        self._queue.put(None)
        self._worker = None

    def _drain(self, writes: queue.Queue[RunWrite | None]) -> None:
        while (write := writes.get()) is not None:
            with self._lock:
                if self._stopping:
                    return
            self._deliver(write)
            with self._lock:
                if write in self._unsent:
                    self._unsent.remove(write)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def _deliver(self, write: RunWrite) -> bool:
        if not self._down:
            try:
                # a write from git is computed in this thread only when it is the caller's
                flush(self.project, self.tracker, refresh=not self.background)
                wanted = (refreshed(self.project, self.tracker, write.run) if write.refresh
                          else write)
                if wanted is not None:  # None: the run is gone, nothing to bring up to date
                    self.tracker.write(wanted)
                return True
            except Undeliverable as exc:  # this write, not the store: set it aside
                path = park(self.project, write, bad=True)
                self._warn(f"{exc}; the write was set aside as {path.name} (git has it all)")
                return False
            except Exception as exc:  # TrackingError, or MLflow failing to even import
                self._down = True
                if not isinstance(exc, TrackingError):
                    exc = TrackingError(f"the tracking store could not be used: {exc!r}")
                self._warn(
                    f"{exc}; the iteration is committed and its tracking write waits in the"
                    " outbox: run 'mlfork sync' when the store is back"
                )
            finally:
                for message in self.tracker.warnings if self._tracker is not None else []:
                    self._warn(message)
                if self._tracker is not None:
                    self._tracker.warnings.clear()
        park(self.project, write)
        return False


def refresh(run: str) -> RunWrite:
    """A write that says only: bring `run` up to date from git (computed on delivery)."""
    return RunWrite(run=run, experiment="", start_time=0, refresh=True)


def refreshed(project: Project, tracker: Tracker, run: str) -> RunWrite | None:
    """The write that brings `run` up to date in the store, from git: only what comes after
    the store's watermark. None when the run no longer exists."""
    rev = project.git.resolve_branch(naming.branch_name(run))
    if rev is None:
        return None
    known = tracker.known(experiment_name(project, rev), run)
    return full_write(project, run, after=known.mirrored if known is not None else None)


def park(project: Project, write: RunWrite, bad: bool = False) -> Any:
    """Put a write in the outbox (`bad`: set aside, never delivered, kept to inspect)."""
    path = project.local("outbox", naming.outbox_entry(write.run, time.time_ns(), bad))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(write.to_dict(), sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # whole, or not at all: a reader never sees half an entry
    return path


def outbox_run(path: Any) -> str:
    """The run an outbox file is for."""
    return naming.outbox_entry_run(str(path.name))


def pending(project: Project) -> list[Any]:
    folder = project.home / naming.OUTBOX_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def flush(project: Project, tracker: Tracker, refresh: bool = True) -> int:
    """Deliver the outbox in order; each delivered write leaves it. A write the store can
    never take (unreadable, or refused for what it holds) is set aside as `.bad` with a
    warning in `tracker.warnings`, and never blocks the others. An entry another process
    delivered meanwhile is skipped. Without `refresh`, entries that bring a run up to date
    from git stay for a later flush (a worker thread does not read git while the command's
    own thread writes it). Raises TrackingError when the store cannot be reached."""
    delivered = 0
    fresh: set[str] = set()  # runs brought up to date from git in this pass
    for path in pending(project):
        try:
            write = RunWrite.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError) as exc:
            _set_aside(path)  # kept for inspection, never retried
            tracker.warnings.append(
                f"outbox entry {path.name} is unreadable ({exc}): set aside as"
                f" {path.with_suffix('.bad').name}"
            )
            continue
        if write.refresh and not refresh:
            continue
        try:
            if write.refresh:
                if write.run not in fresh:
                    fresh.add(write.run)
                    current_write = refreshed(project, tracker, write.run)
                    if current_write is not None:
                        tracker.write(current_write)
            else:
                tracker.write(write)
        except (Undeliverable, ValueError, TypeError, KeyError) as exc:
            _set_aside(path)
            tracker.warnings.append(
                f"{exc}: outbox entry {path.name} set aside as {path.with_suffix('.bad').name}"
                " (git has it all)"
            )
            continue
        path.unlink(missing_ok=True)
        delivered += 1
    return delivered


def _set_aside(path: Any) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.rename(path.with_suffix(".bad"))


class Held:
    """A Mirror that holds its writes while the command's guard is active: a command that
    fails before its first checkpoint leaves the tracking store as it was too (its writes
    are dropped with the rollback); from the first checkpoint on, writes go straight out."""

    def __init__(self, mirror: Mirror, guard: Any) -> None:
        self.mirror = mirror
        self.guard = guard
        self.held: list[RunWrite] = []

    @property
    def uri(self) -> str:
        return self.mirror.uri

    @property
    def warnings(self) -> list[str]:
        return self.mirror.warnings

    def send(self, write: RunWrite) -> None:
        if self.guard is not None and self.guard.active:
            self.held.append(write)
            return
        for held in self.held:
            self.mirror.send(held)
        self.held = []
        self.mirror.send(write)

    def close(self, failed: bool, wait: bool = True) -> None:
        """Deliver what is held, unless the command failed before its first checkpoint;
        without `wait`, what is not delivered yet goes to the outbox."""
        if not (failed and self.guard is not None and self.guard.active):
            for held in self.held:
                self.mirror.send(held)
        self.held = []
        self.mirror.close(wait)
