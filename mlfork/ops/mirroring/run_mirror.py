"""A run's tracking writes while it runs: its tags and status when it starts, each
iteration's metrics (and its params, once), its status when it stops, and at the end a
write that brings it up to date from git: delivered then with `wait`, else by the
background `mlfork sync`. Writes go through a worker thread, so stages never wait for
MLflow; until the command's first checkpoint they are held (a command that fails before
it leaves the store as it was)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mlfork import naming
from mlfork.models import RunRecord
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project
from mlfork.ops.mirroring import background, outbox
from mlfork.ops.mirroring import mirror as track


class RunMirror:
    def __init__(self, project: Project, rec: RunRecord, rev: str, guard: Any, wait: bool,
                 on_warning: Callable[[str], None]) -> None:
        self.project, self.rec, self.guard, self.wait = project, rec, guard, wait
        self.experiment = track.experiment_name(project, rev)
        self.held = outbox.Held(outbox.Mirror(
            project, track.tracking_uri(project, rev, write=True), on_warning=on_warning,
            background=True,
        ), guard)
        self.params_sent = False

    @property
    def uri(self) -> str:
        return self.held.uri

    @property
    def warnings(self) -> list[str]:
        return self.held.warnings

    def _write(self, **fields: Any) -> None:
        self.held.send(track.RunWrite(run=self.rec.name, experiment=self.experiment,
                                      start_time=track.iso_to_ms(self.rec.created), **fields))

    def started(self, rev: str, running: bool) -> None:
        """Its tags and status. What git has beyond the store's watermark (writes a killed
        process lost) is brought up to date at the end, from git."""
        self._write(tags=track.run_tags(self.project, self.rec, rev),
                    status="RUNNING" if running else None)

    def iteration(self, rev: str, it: int, metrics: dict[str, float]) -> None:
        finished = it + 1 >= self.rec.iterations
        stamp = self.project.git.commit(rev).time * 1000
        ends = lineage.end_of_iteration(lineage.checkpoints(self.project, rev),
                                        self.rec.stages)
        steps, step_tags = track.per_step(self.project, self.rec, ends, lambda i: i == it)
        self._write(
            tags={naming.TAG_GIT_COMMIT: rev, naming.TAG_BUDGET: str(self.rec.iterations),
                  **step_tags},
            params={} if self.params_sent else track.run_params(self.project, rev),
            metrics=[[k, v, stamp, it] for k, v in sorted(metrics.items())] + steps,
            status="FINISHED" if finished else None,
            end_time=stamp if finished else None,
        )
        self.params_sent = True

    def status(self, status: str) -> None:
        self._write(status=status, end_time=int(time.time() * 1000))

    def close(self, failed: bool, lock: Any) -> None:
        """The last writes, then the run brought up to date from git."""
        self.held.close(failed, wait=self.wait)
        if failed and self.guard is not None and self.guard.active:
            return
        lock.run = ""  # the run is over: its status is its state, not "running"
        lock.update()
        if self.wait:
            self.held.mirror.background = False
            self.held.mirror.send(outbox.refresh(self.rec.name))
            return
        outbox.park(self.project, outbox.refresh(self.rec.name))
        background.start(self.project)
