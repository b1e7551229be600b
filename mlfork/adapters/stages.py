"""Running one pipeline stage through DVC, supervised.

Stages run in-process through `Repo.reproduce`, one at a time. The stage's own output (its
subprocess writes to our file descriptors 1 and 2) is captured at the descriptor level into
a per-stage log file, with the last lines kept for the error message; a watchdog kills the
stage's processes when a timeout passes. `Repo.reproduce` runs in a worker thread so that
Ctrl-C always reaches mlfork (see `_interruptible`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlfork import naming
from mlfork.adapters.dvc import DvcProject
from mlfork.adapters.dvc_files import in_dir, quiet_dvc
from mlfork.errors import MlforkError

GRACE = 5.0  # seconds a stage gets to stop after Ctrl-C, then after SIGINT
STAGE_ENV = naming.ENV_STAGE
T = TypeVar("T")


@dataclass
class StageOutcome:
    name: str
    ran: bool
    seconds: float
    log: Path | None


class StageCommandFailed(MlforkError):
    """Raised by `run_stage`; the op turns it into StageFailed / RunTimeout / Interrupted."""

    def __init__(self, stage: str, returncode: int, tail: str, timed_out: bool) -> None:
        super().__init__(f"stage '{stage}' failed with exit code {returncode}")
        self.stage = stage
        self.returncode = returncode
        self.tail = tail
        self.timed_out = timed_out


def run_stage(
    dvc: DvcProject,
    name: str,
    *,
    log_path: Path,
    env: dict[str, str],
    deadline: float | None,
    run_cache: bool,
    force: bool = False,
    on_children: Callable[[list[tuple[int, float]]], None] | None = None,
    echo: bool = False,
) -> StageOutcome:
    """Reproduce one stage (not its upstream); `force` runs it even when DVC finds it up to
    date. Raises StageCommandFailed on failure."""
    from dvc.exceptions import DvcException

    dvc.reset()
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    # the stage's processes carry this mark in their environment: the watchdog and Ctrl-C
    # signal them alone, never another child of the process mlfork runs in
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    env = {**env, STAGE_ENV: token}
    watchdog = _Watchdog(deadline, on_children, token)
    try:
        with in_dir(dvc.root), _capture_fds(log_path, tail, echo), watchdog, quiet_dvc():
            result = _interruptible(
                lambda: dvc.repo.reproduce(
                    name, single_item=True, run_cache=run_cache, run_env=env, force=force
                ),
                token,
            )
    except DvcException as exc:
        text = "".join(str(e) + "\n" for e in _chain(exc))
        m = re.search(r"exited with (-?\d+)", text)
        code = int(m.group(1)) if m else 1
        if not m:
            tail.append(text.strip())
        raise StageCommandFailed(name, code, "\n".join(tail), watchdog.fired) from exc
    finally:
        dvc.reset()
    # DVC never runs a frozen stage's command, even when forced (it still "returns" it)
    frozen = any(s.name == name and s.frozen for s in dvc.pipeline().stages)
    return StageOutcome(name, bool(result) and not frozen, time.monotonic() - start, log_path)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


class _Watchdog:
    """Kills the stage's processes when `deadline` (time.monotonic) passes, and reports the
    child pids so that a later `mlfork resume` can wait for orphans of a killed mlfork."""

    def __init__(
        self, deadline: float | None,
        on_children: Callable[[list[tuple[int, float]]], None] | None, token: str,
    ) -> None:
        self.deadline = deadline
        self.on_children = on_children
        self.token = token
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Watchdog:
        if self.deadline is not None or self.on_children is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        known: list[tuple[int, float]] = []
        while not self._stop.wait(0.05):
            try:
                children = stage_processes(self.token, me)
                pids = sorted((c.pid, c.create_time()) for c in children)
            except psutil.Error:
                continue
            if pids and pids != known and self.on_children is not None:
                known = pids
                self.on_children(pids)
            if self.deadline is not None and time.monotonic() >= self.deadline and children:
                self.fired = True
                _signal_children(signal.SIGKILL, children)


def _interruptible(call: Callable[[], T], token: str) -> T:
    """Run `call` (a DVC reproduce) so that Ctrl-C reaches mlfork whatever the stage does.

    On the main thread DVC sets SIGINT to "ignore" while a stage command runs, so mlfork
    would only see the stage's exit code, and a stage that exits 1 on Ctrl-C would look like
    a failure. DVC leaves signals alone off the main thread: the call runs in a worker, and
    the main thread, waiting for it, gets the KeyboardInterrupt. The stage is then given
    `GRACE` seconds to stop on its own (Ctrl-C at a terminal reaches it too), then SIGINT,
    then SIGKILL; a second Ctrl-C skips the waiting. KeyboardInterrupt is re-raised once
    the worker has finished, so DVC never runs on behind mlfork's back.
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: on 3.11 a join interrupted by a signal
    # marks the thread finished while it runs on (the bpo-45274 fix)

    def work() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="mlfork-stage", daemon=True)
    worker.start()
    interrupted = False
    escalate: list[int] = []  # the signals still to send, one per GRACE
    due: float | None = None  # when to send the next one
    while not done.is_set():
        try:
            done.wait(None if due is None else max(0.0, due - time.monotonic()))
        except KeyboardInterrupt:
            escalate = [signal.SIGKILL] if interrupted else [signal.SIGINT, signal.SIGKILL]
            due = time.monotonic() + (0.0 if interrupted else GRACE)
            interrupted = True
            continue
        if due is not None and not done.is_set() and time.monotonic() >= due:
            _signal_children(escalate.pop(0), stage_processes(token))
            due = time.monotonic() + GRACE if escalate else None
    if interrupted:
        raise KeyboardInterrupt
    if "error" in box:
        raise box["error"]
    return box["result"]


def stage_processes(token: str, me: Any = None) -> list[Any]:
    """Our descendants that belong to the stage marked `token` (psutil processes)."""
    import psutil

    found = []
    for child in (me or psutil.Process()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get(STAGE_ENV) == token:
                found.append(child)
    return found


def _signal_children(sig: int, children: list[Any]) -> None:
    """Send `sig` to `children` (psutil processes)."""
    import psutil

    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)


@contextmanager
def _capture_fds(log_path: Path, tail: collections.deque[str], echo: bool) -> Iterator[None]:
    """Send file descriptors 1 and 2 (ours and the stage's) into `log_path` while inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the reader thread's finally

    def pump() -> None:
        pending = b""
        try:
            while chunk := os.read(read_fd, 65536):
                log.write(chunk)
                if echo:
                    os.write(saved_err, chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                tail.extend(line.decode("utf-8", "replace") for line in lines)
            if pending:
                tail.append(pending.decode("utf-8", "replace"))
        finally:
            log.close()
            os.close(read_fd)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        reader.join(timeout=5)
