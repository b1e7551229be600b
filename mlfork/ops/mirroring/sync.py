"""`mlfork sync`: deliver the outbox, then make the tracking store agree with git."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlfork import faults
from mlfork.adapters.tracking.store import (
    BrokenStore,
    check_sqlite_store,
    check_uri,
    redact_uri,
    sqlite_path,
)
from mlfork.adapters.tracking.writer import Indexed, Tracker
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring import background, outbox
from mlfork.ops.mirroring import mirror as track


@dataclass
class SyncResult:
    uri: str
    delivered: int = 0
    runs: list[str] = field(default_factory=list)  # runs written
    current: list[str] = field(default_factory=list)  # runs the store already had up to date
    points: int = 0  # metric points sent
    deleted: int = 0
    repaired: int = 0  # duplicate MLflow runs of one mlfork run, deleted
    moved_aside: str | None = None  # a broken embedded store, moved aside by --rebuild
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def sync(path: str | os.PathLike[str] = ".", rebuild: bool = False) -> SyncResult:
    """Idempotent: a second call writes nothing new, and reads of git stop at each run's
    tip when the store's watermark says it is up to date. `rebuild` deletes the project's
    runs from the store first and recreates every run, tag and metric from git alone."""
    project = Project.open(path, require_dvc=False)
    names = lineage.run_names(project)
    head = project.git.head_commit()
    uri = track.tracking_uri(project, head)
    result = SyncResult(uri=redact_uri(uri))
    check_uri(uri)
    track.tracking_uri(project, head, write=True)
    with background.foreground(project):
        db = sqlite_path(uri)
        if rebuild and db is not None:
            try:
                check_sqlite_store(Path(db))
            except BrokenStore:  # keep it for inspection, and start a new one from git
                stamp = time.strftime("%Y%m%d%H%M%S")
                aside = Path(db).with_name(f"{Path(db).name}.broken-{stamp}")
                os.replace(db, aside)
                result.moved_aside = str(aside)
        tracker = Tracker(uri)
        result.delivered = outbox.flush(project, tracker)
        faults.point("sync.flushed")
        order = _parents_first(project, names)
        experiments = {name: track.experiment_name(project, lineage.tip(project, name))
                       for name in order}
        for experiment in sorted(set(experiments.values())):
            if rebuild:
                result.deleted += tracker.delete_experiment_runs(experiment)
                faults.point("sync.deleted")
            else:
                result.repaired += tracker.repair_duplicates(experiment)
        for name in order:
            known = tracker.known(experiments[name], name)
            mark = known.mirrored if known is not None else None
            if (known is not None and mark is not None
                    and _up_to_date(mark, track.current(project, name), known)):
                result.current.append(name)
                continue
            write = track.full_write(project, name, after=mark)
            tracker.write(write)
            faults.point("sync.wrote")
            result.runs.append(name)
            result.points += len(write.metrics)
        result.warnings = list(tracker.warnings)
    return result


def _up_to_date(mark: dict[str, object], now: dict[str, object], known: Indexed) -> bool:
    """The store has the run as git has it: the watermark's commit and status are the
    run's, and the MLflow run still has that status (nobody changed it in the UI)."""
    return (mark.get("commit") == now["commit"] and mark.get("status") == now["status"]
            and known.status == now["status"])


def _parents_first(project: Project, names: list[str]) -> list[str]:
    """Order runs so a parent is written before its forks (they point at its MLflow id)."""
    depth = {}
    for name in names:
        rec = lineage.record(project, name)
        depth[name] = len(track.lineage_chain(project, rec))
    return sorted(names, key=lambda n: (depth[n], n))
