"""Mirror git into MLflow: what each run looks like in the tracking store, derived from git
alone, and the outbox that keeps writes the store could not take."""

from __future__ import annotations

import json
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


def metric_points(
    cps: Iterable[Checkpoint], stages: list[str], owner: str | None = None
) -> list[list[Any]]:
    """[key, value, timestamp_ms, step] at the end of each iteration (optionally one owner's)."""
    points: list[list[Any]] = []
    for it, cp in sorted(lineage.end_of_iteration(list(cps), stages).items()):
        if owner is not None and cp.run != owner:
            continue
        for key, value in sorted(cp.metrics.items()):
            points.append([key, value, cp.time * 1000, it])
    return points


def full_write(project: Project, run: str) -> RunWrite:
    """The whole MLflow picture of a run, from git: tags, params, every metric point."""
    rev = lineage.tip(project, run)
    rec = lineage.record(project, run, rev)
    cps = lineage.checkpoints(project, rev, with_metrics=True)
    done = lineage.position(project, rev).done(rec.stages)
    status = mlflow_status(project, rec, done, started=any(c.run == run for c in cps))
    last_time = project.git.commit(rev).time * 1000
    return RunWrite(
        run=run,
        experiment=experiment_name(project, rev),
        start_time=iso_to_ms(rec.created),
        tags=run_tags(project, rec, rev),
        params=run_params(project, rev),
        metrics=metric_points(cps, rec.stages),
        status=status,
        end_time=last_time if status in ("FINISHED", "FAILED", "KILLED") else None,
    )


def mlflow_status(project: Project, rec: RunRecord, done: int, started: bool) -> str:
    if done >= rec.iterations:
        return "FINISHED"
    state = lineage.run_status(project, rec.name, done, rec.iterations)
    if state == "running":
        return "RUNNING"
    if not started:
        return "SCHEDULED"
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
    stage: the stages run as subprocesses meanwhile. `close()` waits for the last write."""

    project: Project
    uri: str
    on_warning: Callable[[str], None] | None = None
    background: bool = False
    warnings: list[str] = field(default_factory=list)
    _tracker: Tracker | None = None
    _down: bool = False
    _queue: queue.Queue[RunWrite | None] | None = None
    _worker: threading.Thread | None = None

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
        self._queue.put(write)
        return True

    def close(self) -> None:
        if self._worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def _drain(self, writes: queue.Queue[RunWrite | None]) -> None:
        while (write := writes.get()) is not None:
            self._deliver(write)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def _deliver(self, write: RunWrite) -> bool:
        if not self._down:
            try:
                flush(self.project, self.tracker)
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


def park(project: Project, write: RunWrite, bad: bool = False) -> Any:
    """Put a write in the outbox (`bad`: set aside, never delivered, kept to inspect)."""
    path = project.local("outbox", naming.outbox_entry(write.run, time.time_ns(), bad))
    path.write_text(json.dumps(write.to_dict(), sort_keys=True), encoding="utf-8")
    return path


def outbox_run(path: Any) -> str:
    """The run an outbox file is for."""
    return naming.outbox_entry_run(str(path.name))


def pending(project: Project) -> list[Any]:
    folder = project.root / naming.OUTBOX_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def flush(project: Project, tracker: Tracker) -> int:
    """Deliver the outbox in order; each delivered write leaves it. A write the store can
    never take (unreadable, or refused for what it holds) is set aside as `.bad` with a
    warning in `tracker.warnings`, and never blocks the others. Raises TrackingError when
    the store cannot be reached."""
    delivered = 0
    for path in pending(project):
        try:
            write = RunWrite.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            path.rename(path.with_suffix(".bad"))  # kept for inspection, never retried
            tracker.warnings.append(
                f"outbox entry {path.name} is unreadable ({exc}): set aside as"
                f" {path.with_suffix('.bad').name}"
            )
            continue
        try:
            tracker.write(write)
        except (Undeliverable, ValueError, TypeError, KeyError) as exc:
            path.rename(path.with_suffix(".bad"))
            tracker.warnings.append(
                f"{exc}: outbox entry {path.name} set aside as {path.with_suffix('.bad').name}"
                " (git has it all)"
            )
            continue
        path.unlink()
        delivered += 1
    return delivered


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

    def close(self, failed: bool) -> None:
        """Deliver what is held, unless the command failed before its first checkpoint."""
        if not (failed and self.guard is not None and self.guard.active):
            for held in self.held:
                self.mirror.send(held)
        self.held = []
        self.mirror.close()
