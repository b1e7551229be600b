"""Mirror git into MLflow: what each run looks like in the tracking store, derived from git
alone, and the outbox that keeps writes the store could not take."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlfork import naming
from mlfork.adapters.tracking.store import Undeliverable, default_uri
from mlfork.adapters.tracking.writer import RunWrite, Tracker
from mlfork.errors import TrackingError
from mlfork.models import Checkpoint, RunRecord
from mlfork.nested import flatten
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

EXCLUDED_PARAMS = ("iteration", "iterations")


def experiment_name(project: Project, rev: str) -> str:
    return project.policy(rev).experiment or project.root.name


def tracking_uri(project: Project, rev: str | None = None, write: bool = False) -> str:
    """The tracking store's URI. `write`: the caller will write to it, so the embedded
    store's self-ignoring .mlfork/local/ is made (a reader changes nothing)."""
    configured = project.policy(rev).tracking_uri if rev else None
    if write:
        project.local("mlflow.db")
    return default_uri(project.root, configured)


def iso_to_ms(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return 0


def user_tags(tags: Iterable[str]) -> dict[str, str]:
    """`--tag k=v` -> MLflow tag k=v; `--tag k` -> k=true."""
    out: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        out[key] = value if _ else "true"
    return out


def lineage_chain(project: Project, rec: RunRecord) -> list[dict[str, Any]]:
    """The ancestry, root first: [{run, iteration, step, commit}, ..., {run: <this run>}]."""
    chain: list[dict[str, Any]] = [{"run": rec.name}]
    parent = rec.parent
    seen = {rec.name}
    while parent is not None and parent.run not in seen:
        seen.add(parent.run)
        chain[0].update(
            {"iteration": parent.iteration, "step": parent.step, "commit": parent.commit[:12]}
        )
        chain.insert(0, {"run": parent.run})
        try:
            parent_rec = project.read_record(parent.commit)
        except Exception:  # a malformed ancestor record ends the chain, it does not fail it
            parent_rec = None
        parent = parent_rec.parent if parent_rec is not None else None
    return chain


def lineage_tags(project: Project, rec: RunRecord) -> dict[str, str]:
    chain = lineage_chain(project, rec)
    tags = {
        naming.TAG_ROOT_RUN: str(chain[0]["run"]),
        naming.TAG_DEPTH: str(len(chain) - 1),
    }
    text = json.dumps(chain, separators=(",", ":"), sort_keys=True)
    if len(text) > 8000:  # MLflow truncates tag values past 8,000 characters: keep it valid
        text = json.dumps(
            [{"run": c["run"], "iteration": c.get("iteration")} for c in chain],
            separators=(",", ":"),
        )[:8000]
    tags[naming.TAG_LINEAGE] = text
    if rec.parent is not None:
        p = rec.parent
        tags.update(
            {
                naming.TAG_PARENT_RUN: p.run,
                naming.TAG_FORK_ITERATION: str(p.iteration),
                naming.TAG_FORK_STEP: p.step,
                naming.TAG_FORK_COMMIT: p.commit,
                # the last step whose metric points come from the ancestors
                naming.TAG_INHERITED_UNTIL: str(
                    lineage.inherited_until(p.iteration, p.step, rec.stages)
                ),
            }
        )
    locked = project.policy(rec.parent.commit).locked if rec.parent is not None else ()
    tags[naming.TAG_NOTE] = note(rec, chain, locked)
    return tags


def note(rec: RunRecord, chain: list[dict[str, Any]], locked: Iterable[str] = ()) -> str:
    """The Markdown the MLflow UI shows on the run's page."""
    lines = [f"**mlfork run `{rec.name}`** on branch `{naming.branch_name(rec.name)}`", ""]
    if rec.parent is not None:
        p = rec.parent
        lines += [
            f"Forked from **`{p.run}`** after stage `{p.step}` of iteration {p.iteration}"
            f" (commit `{p.commit[:12]}`).",
            "",
            "Lineage: " + " → ".join(f"`{c['run']}`" for c in chain),
            "",
            "Own overrides: " + (" ".join(f"`{o}`" for o in rec.own_overrides) or "none"),
            "",
            "Locked keys (kept for comparability across the lineage): "
            + (" ".join(f"`{k}`" for k in locked) or "none"),
        ]
    else:
        shown = " ".join(f"`{o}`" for o in rec.overrides) or "none"
        lines.append("Root run. Overrides: " + shown)
    lines += ["", f"Iteration budget: {rec.iterations}."]
    text = "\n".join(lines)
    return text[:8000]


def full_write(project: Project, run: str, after: dict[str, Any] | None = None) -> RunWrite:
    """The MLflow picture of a run, from git: tags, params and its metric points.

    `after` is the watermark of what the store already holds (TAG_MIRRORED of its last
    complete write): while the checkpoint it names is still the run's, only the points after
    it are read and sent; otherwise (none, or a rewritten history) every point is. Either
    way the write carries the new watermark."""
    rev = lineage.tip(project, run)
    rec = lineage.record(project, run, rev)
    cps = lineage.checkpoints(project, rev)
    ends = lineage.end_of_iteration(cps, rec.stages)
    status = mlflow_status(project, rec, lineage.position(project, rev).done(rec.stages),
                           started=any(c.run == run for c in cps))
    since = _since(ends, after)
    points: list[list[Any]] = []
    for it, cp in sorted(ends.items()):
        if it > since:
            points += [[k, v, cp.time * 1000, it]
                       for k, v in sorted(project.metrics.at(cp.commit).items())]
    last = max(ends) if ends else None
    last_time = project.git.commit(rev).time * 1000
    return RunWrite(
        run=run,
        experiment=experiment_name(project, rev),
        start_time=iso_to_ms(rec.created),
        tags=run_tags(project, rec, rev),
        params=run_params(project, rev),
        metrics=points,
        status=status,
        end_time=last_time if status in ("FINISHED", "FAILED", "KILLED") else None,
        mirrored={"commit": rev, "status": status, "step": last,
                  "ts": ends[last].time * 1000 if last is not None else None},
    )


def _since(ends: dict[int, Checkpoint], after: dict[str, Any] | None) -> int:
    """The last iteration whose points the store holds, per its watermark; -1: none."""
    if not after or not isinstance(after.get("step"), int):
        return -1
    cp = ends.get(after["step"])
    return after["step"] if cp is not None and cp.time * 1000 == after.get("ts") else -1


def current(project: Project, run: str) -> dict[str, Any]:
    """What a complete write of `run` would record as its watermark's commit and status,
    found without reading its history: to tell an up-to-date run in the store at a glance."""
    rev = lineage.tip(project, run)
    rec = lineage.record(project, run, rev)
    started = False
    for commit in lineage.walk(project, rev):
        t = commit.trailers
        if t is not None and t.iteration is not None and t.step is not None:
            started = t.run == run
            break
    done = lineage.position(project, rev).done(rec.stages)
    return {"commit": rev, "status": mlflow_status(project, rec, done, started)}


def mlflow_status(project: Project, rec: RunRecord, done: int, started: bool) -> str:
    """The run's MLflow status, as `mlfork runs` has it: a fork not run yet is stopped
    (KILLED in MLflow's words), not SCHEDULED forever."""
    if done >= rec.iterations:
        return "FINISHED"
    state = lineage.run_status(project, rec.name, done, rec.iterations)
    if state == "running":
        return "RUNNING"
    return "FAILED" if state == "failed" else "KILLED"


def run_tags(project: Project, rec: RunRecord, rev: str) -> dict[str, str]:
    tags = {
        naming.TAG_RUN: rec.name,
        naming.TAG_BRANCH: naming.branch_name(rec.name),
        naming.TAG_GIT_COMMIT: rev,
        naming.TAG_GIT_BRANCH: naming.branch_name(rec.name),
        naming.TAG_RUN_NAME: rec.name,
        naming.TAG_OVERRIDES: json.dumps(rec.overrides),
        naming.TAG_BUDGET: str(rec.iterations),
    }
    tags.update(lineage_tags(project, rec))
    tags.update(user_tags(rec.tags))
    return tags


def param_text(value: Any) -> str:
    """A config value as an MLflow param: lists and dicts as JSON, None as `null`."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return "null" if value is None else str(value)


def run_params(project: Project, rev: str) -> dict[str, str]:
    return {
        k: param_text(v)
        for k, v in flatten(project.params_at(rev)).items()
        if k.split(".")[0] not in EXCLUDED_PARAMS
    }


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

    def close(self, wait: bool = True) -> bool:
        """Stop the worker: `wait` for its last write, or park what it has not delivered
        (the write in flight too: writes are idempotent). True if anything was parked."""
        if self._worker is None or self._queue is None:
            return False
        if wait:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
            return False
        with self._lock:
            self._stopping = True
            unsent, self._unsent = self._unsent, []
        for write in unsent:
            park(self.project, write)
        self._queue.put(None)
        self._worker = None
        return bool(unsent)

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
                if write.refresh:
                    write = refreshed(self.project, self.tracker, write.run) or write
                    if write.refresh:  # the run is gone: nothing to bring up to date
                        return True
                self.tracker.write(write)
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
    folder = project.root / naming.OUTBOX_DIR
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

    def close(self, failed: bool, wait: bool = True) -> bool:
        """Deliver what is held, unless the command failed before its first checkpoint;
        without `wait`, what is not delivered yet goes to the outbox (True if any did)."""
        if not (failed and self.guard is not None and self.guard.active):
            for held in self.held:
                self.mirror.send(held)
        self.held = []
        return self.mirror.close(wait)
