"""Per-step series: the points a stage logs inside an iteration (a loss per batch, a value
per epoch), on one global step axis that goes on across iterations and across forks.

Which files hold them is DVC's answer at a commit: the top-level `plots:` sections (dvclive
writes `dvclive/plots/metrics` there, a folder of one `.tsv` per metric) and the stage
outputs declared under `plots:`. Each file's rows are points: the step is the plot's `x`
column (else a `step` column, else the row number), the values its other numeric columns
(dvclive's `timestamp` aside).

The global axis, iteration by iteration along a run's history (its ancestors' iterations
first, so a fork's inherited steps are exactly its parent's): with `last` the last global
step so far (-1 before the first),

- steps that all come after `last` are global already (a stage that resumes its step
  counter from its checkpoint, or starts at MLFORK_STEP_OFFSET, logs them so): kept;
- a file that still holds the earlier iterations' points (`Live(resume=True)`) gives the
  steps after `last` only, when its points up to `last` are the ones already placed;
- otherwise the iteration's steps start again (a stage that counts from 0 each time, as
  dvclive's `Live()` does): they are moved to start at `last + 1`.

So a fork's first own step follows the last step of its fork point, and no step is lost or
doubled at a boundary, whatever the stage's own counter does. Stages that run under mlfork
find `last + 1` in MLFORK_STEP_OFFSET.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlfork.ops.kernel import memo

if TYPE_CHECKING:
    from mlfork.models import Checkpoint
    from mlfork.ops.kernel.project import Project

PREFIX = "step/"  # MLflow keys of per-step series: `step/<series>`, the step the global one
OFFSET_ENV = "MLFORK_STEP_OFFSET"
_SKIP = {"timestamp"}  # dvclive's wall-clock column is not a series
_SUFFIXES = (".tsv", ".csv", ".json", ".yaml", ".yml")

Points = dict[str, list[tuple[int, float]]]


@dataclass
class Placed:
    """A history's per-step points on the global axis, per iteration."""

    points: dict[int, Points] = field(default_factory=dict)  # iteration -> series -> points
    last: dict[int, int] = field(default_factory=dict)  # iteration -> last global step so far

    def last_before(self, iteration: int) -> int:
        """The last global step of the iterations before `iteration` (-1: none)."""
        done = [s for it, s in self.last.items() if it < iteration]
        return max(done) if done else -1


class StepReader:
    def __init__(self, project: Project) -> None:
        self.project = project
        self._sources: dict[tuple[Any, ...], list[tuple[str, str | None]]] = {}
        self._raw: dict[str, Points] = {}

    def sources(self, rev: str) -> list[tuple[str, str | None]]:
        """(path, x column) of each plots file or folder DVC declares at `rev`."""
        key = self.project.metrics.key(rev)
        if key not in self._sources:
            if not key[0]:
                found: Any = []
            else:  # DVC's answer depends on the key alone: kept across commands
                found = memo.get(self.project, "plot-sources", key)
                if not isinstance(found, list):
                    from mlfork.errors import ProjectError

                    try:
                        found = self.project.dvc.plot_sources(rev)
                    except ProjectError:  # a commit DVC cannot read: no series there (its
                        return []  # metrics say why); a run never fails over its plots
                    memo.put(self.project, "plot-sources", key, found)
            self._sources[key] = [(str(p), x if isinstance(x, str) else None) for p, x in found]
        return self._sources[key]

    def raw(self, rev: str) -> Points:
        """The series at `rev` as logged: name -> [(step, value)], steps ascending."""
        if rev in self._raw:
            return self._raw[rev]
        out: Points = {}
        for source, x in self.sources(rev):
            for path, data in self._files(rev, source):
                rel = None
                if path != source:
                    rel = posixpath.splitext(posixpath.relpath(path, source))[0]
                series = parse(path, data, x)
                for column, points in series.items():
                    name = (column if rel is None else rel if len(series) == 1
                            else f"{rel}/{column}")
                    if name in out:
                        name = f"{posixpath.splitext(path)[0]}/{column}"
                    out[name] = points
        self._raw[rev] = out
        return out

    def place(self, ends: dict[int, Checkpoint]) -> Placed:
        """The series of each end-of-iteration checkpoint of a history on the global axis."""
        placed = Placed()
        known: dict[str, dict[int, float]] = {}
        last = -1
        for it in sorted(ends):
            raw = self.raw(ends[it].commit)
            steps = sorted({s for pts in raw.values() for s, _ in pts})
            if not steps:
                placed.last[it] = last
                placed.points[it] = {}
                continue
            if steps[0] > last:
                shift, after = 0, None
            elif last >= 0 and _accumulated(raw, known, last):
                shift, after = 0, last
            else:
                shift, after = last + 1 - steps[0], None
            mine: Points = {}
            for name, pts in raw.items():
                moved = [(s + shift, v) for s, v in pts if after is None or s > after]
                if moved:
                    mine[name] = moved
                    known.setdefault(name, {}).update(moved)
            placed.points[it] = mine
            last = max([last, *(p[-1][0] for p in mine.values())])
            placed.last[it] = last
        return placed

    def offset(self, rev: str, iteration: int) -> int:
        """The first global step of `iteration` of the history of `rev`: what a stage finds
        in MLFORK_STEP_OFFSET."""
        from mlfork.ops.kernel import lineage

        rec = self.project.read_record(rev)
        stages = rec.stages if rec is not None else []
        ends = lineage.end_of_iteration(lineage.checkpoints(self.project, rev), stages)
        return self.place({i: c for i, c in ends.items() if i < iteration}).last_before(
            iteration) + 1

    def _files(self, rev: str, source: str) -> list[tuple[str, bytes]]:
        """The data files of `source` at `rev`: from git, or from the DVC cache for a
        DVC-tracked file or folder (an object this cache lacks is fetched from the DVC
        remote: a step series cannot be placed without every earlier one)."""
        git = self.project.git
        listed = [p for p in git.tracked_under(rev, source) if p.endswith(_SUFFIXES)]
        if listed:
            return [(p, git.read(rev, p) or b"") for p in listed]
        outs = self.project.outputs_at(rev)
        dvc = self.project.dvc
        for out, entry in outs.items():
            md5 = str(entry.get("md5") or "")
            if not md5:
                continue
            if out == source and not md5.endswith(".dir"):
                return [(source, _cached(dvc, md5, source, rev))]
            if md5.endswith(".dir") and (source == out or source.startswith(out + "/")):
                manifest = _cached(dvc, md5, out, rev)
                found = []
                for item in json.loads(manifest):
                    path = f"{out}/{item['relpath']}"
                    inside = path == source or path.startswith(source.rstrip("/") + "/")
                    if inside and path.endswith(_SUFFIXES):
                        found.append((path, _cached(dvc, str(item["md5"]), path, rev)))
                return sorted(found)
        return []


def _cached(dvc: Any, md5: str, path: str, rev: str) -> bytes:
    """The object `md5` from the DVC cache, fetched from the DVC remote when the cache
    lacks it (a clone's cache starts empty). MissingData when no remote has it."""
    from mlfork.errors import MissingData

    target = dvc.cache_path(md5)
    if not target.exists() and dvc.default_remote() is not None:
        from mlfork.adapters.dvc_remote import fetch_objects

        fetch_objects(dvc, [(md5, "md5")])
    try:
        data: bytes = target.read_bytes()
        return data
    except OSError:
        raise MissingData(
            f"the per-step series '{path}' of commit {rev[:10]} is in neither the DVC cache"
            " nor a DVC remote: add the project's DVC remote ('dvc remote add -d NAME URL'),"
            " or push the run's data from a machine that has it ('mlfork push')"
        ) from None


def _accumulated(raw: Points, known: dict[str, dict[int, float]], last: int) -> bool:
    """Does every point up to `last` repeat the one already placed at its step?"""
    seen = False
    for name, pts in raw.items():
        had = known.get(name, {})
        for s, v in pts:
            if s > last:
                break
            if had.get(s) != v:
                return False
            seen = True
    return seen


def _rows(path: str, data: bytes) -> list[dict[str, Any]]:
    suffix = posixpath.splitext(path)[1].lower()
    try:
        text = data.decode("utf-8")
        if suffix in (".tsv", ".csv"):
            return list(csv.DictReader(io.StringIO(text),
                                       delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".json":
            loaded = json.loads(text)
        else:
            import yaml

            loaded = yaml.safe_load(text)
    except Exception:  # a half-written or foreign file: no points
        return []
    if isinstance(loaded, dict):  # DVC's {"name": [rows]} form
        loaded = next((v for v in loaded.values() if isinstance(v, list)), [])
    return [r for r in loaded if isinstance(r, dict)] if isinstance(loaded, list) else []


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _columns(rows: list[dict[str, Any]], x: str | None) -> tuple[str | None, list[str]]:
    names = list(dict.fromkeys(k for r in rows for k in r))
    xcol = x if x in names else ("step" if "step" in names else None)
    ys = [n for n in names if n != xcol and n not in _SKIP
          and any(_number(r.get(n)) is not None for r in rows)]
    return xcol, ys


def parse(path: str, data: bytes, x: str | None) -> Points:
    """A plots file's series: column -> [(step, value)] (the step: the `x` column when it
    holds whole numbers, else the row number)."""
    rows = _rows(path, data)
    xcol, ys = _columns(rows, x)
    steps: list[int] = list(range(len(rows)))
    if xcol is not None:
        xs = [_number(r.get(xcol)) for r in rows]
        if all(v is not None and float(v).is_integer() for v in xs):
            steps = [int(v) for v in xs]  # type: ignore[arg-type]
    out: Points = {}
    for name in ys:
        pts: dict[int, float] = {}
        for step, r in zip(steps, rows, strict=True):
            v = _number(r.get(name))
            if v is not None:
                pts[step] = v  # a step logged twice: the later row
        if pts:
            out[name] = sorted(pts.items())
    return out
