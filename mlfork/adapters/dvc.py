"""The DVC adapter: the only module that imports dvc.

Stages run in-process through `Repo.reproduce`, one at a time. The stage's own output
(its subprocess writes to our file descriptors 1 and 2) is captured at the descriptor level
into a per-stage log file, with the last lines kept for the error message; a watchdog kills
the stage's processes when a timeout passes. `Repo.reproduce` runs in a worker thread so
that Ctrl-C always reaches mlfork (see `_interruptible`).
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

import yaml

from ..errors import MlforkError, NotADvcProject, ProjectError

LOCK_FILE = "dvc.lock"
PROJECT_FILE = "dvc.yaml"
LINK_TYPES = "reflink,hardlink,symlink"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
GRACE = 5.0  # seconds a stage gets to stop after Ctrl-C, then after SIGINT
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


def _quiet() -> None:
    """DVC logs progress chatter at INFO to our stderr when used as a library."""
    import logging

    logging.getLogger("dvc").setLevel(logging.WARNING)


class DvcProject:
    def __init__(self, root: Path) -> None:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        _quiet()
        self.root = Path(root)
        if not (self.root / ".dvc").is_dir():
            raise NotADvcProject(str(self.root))
        try:
            self.repo = Repo(str(self.root))
        except NotDvcRepoError as exc:
            raise NotADvcProject(str(self.root)) from exc

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> DvcProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setup ----------------------------------------------------------------------------------

    @staticmethod
    def init(root: Path) -> None:
        """`dvc init` in a git repository, with cache links instead of copies."""
        from dvc.repo import Repo

        _quiet()
        repo = Repo.init(str(root))
        try:
            DvcProject.configure_links(repo)
        finally:
            repo.close()

    @staticmethod
    def configure_links(repo: Any) -> bool:
        """Set `cache.type` to links; False if the project already chose its own."""
        with repo.config.edit("repo") as conf:
            cache = conf.setdefault("cache", {})
            if cache.get("type"):
                return False
            cache["type"] = LINK_TYPES
        return True

    def ensure_links(self) -> bool:
        return self.configure_links(self.repo)

    # -- reading --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what DVC cached about dvc.yaml, dvc.lock and params: they changed on disk."""
        self.repo._reset()

    def stage_names(self) -> list[str]:
        """Pipeline stages in run order: dependencies first, ties in dvc.yaml order."""
        from dvc.stage import PipelineStage

        self.reset()
        graph = self.repo.index.graph
        stages = [s for s in self.repo.index.stages if isinstance(s, PipelineStage)]
        order = {s: i for i, s in enumerate(stages)}
        done: list[Any] = []
        seen: set[Any] = set()

        def visit(stage: Any) -> None:
            if stage in seen:
                return
            seen.add(stage)
            deps = [d for d in graph.successors(stage) if d in order]
            for dep in sorted(deps, key=order.__getitem__):
                visit(dep)
            done.append(stage)

        for stage in stages:
            visit(stage)
        return [s.name for s in done]

    def managed_paths(self, extra_outs: tuple[str, ...] = ()) -> list[str]:
        """Paths a stage may write: dvc.lock, .dvc files, every output, and the .gitignore
        files DVC maintains next to cached outputs. Git stages those that exist."""
        self.reset()
        paths = {LOCK_FILE}
        for stage in self.repo.index.stages:
            if stage.is_data_source:
                paths.add(os.path.relpath(stage.path, self.root))
            for out in stage.outs:
                rel = os.path.relpath(out.fs_path, self.root)
                paths.add(rel)
                if out.use_cache:
                    paths.add(os.path.join(os.path.dirname(rel), ".gitignore"))
        for out in extra_outs:
            paths.update({out, out + ".dvc", os.path.join(os.path.dirname(out), ".gitignore")})
        return sorted(p[2:] if p.startswith("./") else p for p in paths)

    @staticmethod
    def lock_outputs(lock_text: bytes | str | None) -> dict[str, dict[str, Any]]:
        """`path -> {md5, size, hash}` of every stage output in a dvc.lock text."""
        if not lock_text:
            return {}
        data = yaml.safe_load(lock_text) or {}
        outs: dict[str, dict[str, Any]] = {}
        for stage in (data.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                outs[out["path"]] = {k: v for k, v in out.items() if k != "path"}
        return outs

    @staticmethod
    def lock_deps(lock_text: bytes | str | None) -> dict[str, dict[str, Any]]:
        if not lock_text:
            return {}
        data = yaml.safe_load(lock_text) or {}
        deps: dict[str, dict[str, Any]] = {}
        for stage in (data.get("stages") or {}).values():
            for dep in stage.get("deps") or []:
                deps[dep["path"]] = {k: v for k, v in dep.items() if k != "path"}
        return deps

    def data_sources(self) -> dict[str, dict[str, Any]]:
        """`path -> {md5, size}` of every file tracked by a .dvc file (from the .dvc files:
        the hashes DVC already holds, nothing is read)."""
        self.reset()
        found: dict[str, dict[str, Any]] = {}
        for stage in self.repo.index.stages:
            if not stage.is_data_source:
                continue
            for out in stage.outs:
                rel = os.path.relpath(out.fs_path, self.root)
                found[rel] = {"md5": out.hash_info.value, "size": out.meta.size}
        return found

    def status(self) -> dict[str, Any]:
        self.reset()
        return dict(self.repo.status())

    # -- writing --------------------------------------------------------------------------------

    def checkout(self) -> None:
        """`dvc checkout --force`: make the workspace outputs match dvc.lock and .dvc files."""
        from dvc.exceptions import CheckoutError

        lock = self.root / LOCK_FILE
        locked = (yaml.safe_load(lock.read_bytes()) or {}) if lock.exists() else {}
        ran = set(locked.get("stages") or {})
        self.reset()
        targets = []
        for stage in self.repo.index.stages:
            if stage.is_data_source:
                targets.append(stage.path)
            elif stage.name in ran:
                targets.append(stage.addressing)
            else:  # never ran: an interrupted first run may have left partial outputs
                for out in stage.outs:
                    out.remove(ignore_remove=False) if out.exists else None
        if not targets:
            return
        try:
            self.repo.checkout(targets=targets, force=True)
        except CheckoutError as exc:
            raise ProjectError(
                f"DVC could not restore outputs ({exc}); run 'dvc pull' if they live in a remote"
            ) from exc

    def set_resume(self, resume: str, source: dict[str, Any] | None) -> None:
        """Point the hand-off input `resume` at a cached output (`source` is its dvc.lock entry)
        or, with None, at an empty file meaning "start fresh". Links, never copies."""
        path = self.root / resume
        dvcfile = self.root / (resume + ".dvc")
        if path.exists() or path.is_symlink():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.reset()
        if source is None:
            import logging

            path.write_bytes(b"")
            dvc_logger = logging.getLogger("dvc")
            level = dvc_logger.level
            dvc_logger.setLevel(logging.ERROR)  # "'models/resume' is empty": that is the point
            try:
                self.repo.add([str(path)])
            finally:
                dvc_logger.setLevel(level)
            return
        entry: dict[str, Any] = {k: source[k] for k in ("md5", "size", "hash") if k in source}
        entry["path"] = path.name
        dvcfile.write_text(yaml.safe_dump({"outs": [entry]}, sort_keys=False), encoding="utf-8")
        self.reset()
        from dvc.exceptions import CheckoutError

        try:
            self.repo.checkout(targets=[str(dvcfile)], force=True)
        except CheckoutError as exc:
            raise ProjectError(
                f"the checkpoint {source.get('md5')} is not in the DVC cache ({exc});"
                " run 'dvc pull' first"
            ) from exc

    def run_stage(
        self,
        name: str,
        *,
        log_path: Path,
        env: dict[str, str],
        deadline: float | None,
        run_cache: bool,
        on_children: Callable[[list[tuple[int, float]]], None] | None = None,
        echo: bool = False,
    ) -> StageOutcome:
        """Reproduce one stage (not its upstream). Raises StageCommandFailed on failure."""
        from dvc.exceptions import DvcException

        self.reset()
        start = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        watchdog = _Watchdog(deadline, on_children)
        try:
            with _cwd(self.root), _capture_fds(log_path, tail, echo), watchdog:
                result = _interruptible(
                    lambda: self.repo.reproduce(
                        name, single_item=True, run_cache=run_cache, run_env=env
                    )
                )
        except DvcException as exc:
            text = "".join(str(e) + "\n" for e in _chain(exc))
            m = re.search(r"exited with (-?\d+)", text)
            code = int(m.group(1)) if m else 1
            if not m:
                tail.append(text.strip())
            raise StageCommandFailed(name, code, "\n".join(tail), watchdog.fired) from exc
        return StageOutcome(name, bool(result), time.monotonic() - start, log_path)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


class _Watchdog:
    """Kills the stage's processes when `deadline` (time.monotonic) passes, and reports the
    child pids so that a later `mlfork resume` can wait for orphans of a killed mlfork."""

    def __init__(
        self, deadline: float | None, on_children: Callable[[list[tuple[int, float]]], None] | None
    ) -> None:
        self.deadline = deadline
        self.on_children = on_children
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
                children = me.children(recursive=True)
                pids = sorted((c.pid, c.create_time()) for c in children)
            except psutil.Error:
                continue
            if pids and pids != known and self.on_children is not None:
                known = pids
                self.on_children(pids)
            if self.deadline is not None and time.monotonic() >= self.deadline and children:
                self.fired = True
                _signal_children(signal.SIGKILL, children)


def _interruptible(call: Callable[[], T]) -> T:
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
            _signal_children(escalate.pop(0))
            due = time.monotonic() + GRACE if escalate else None
    if interrupted:
        raise KeyboardInterrupt
    if "error" in box:
        raise box["error"]
    return box["result"]


def _signal_children(sig: int, children: list[Any] | None = None) -> None:
    """Send `sig` to `children` (psutil processes; default: every descendant of ours)."""
    import psutil

    for child in psutil.Process().children(recursive=True) if children is None else children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """DVC's Python API resolves stage names and stage-cache paths against the process's
    working directory (its CLI always runs inside the repository): work from the root."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


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
