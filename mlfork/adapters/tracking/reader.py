"""Reads of the tracking store for listings and stitching: straight SQL on the embedded sqlite
store (fast, read-only), the MLflow API elsewhere."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfork import naming
from mlfork.adapters.tracking.store import sqlite_path
from mlfork.adapters.tracking.writer import Tracker

INDEX_TAGS = (
    naming.TAG_RUN,
    naming.TAG_LINEAGE,
    naming.TAG_INHERITED_UNTIL,
    naming.TAG_PARENT_RUN,
    naming.TAG_FORK_ITERATION,
    naming.TAG_FORK_STEP,
)


@dataclass(frozen=True)
class IndexedRun:
    """One mlfork run as the tracking store indexes it: its MLflow id, its lineage tags
    (INDEX_TAGS only) and the keys of the metrics it logged."""

    run_id: str
    tags: dict[str, str]
    metric_keys: frozenset[str]


@dataclass(frozen=True)
class PointSegment:
    """The points of one MLflow run with first <= step <= last (None: unbounded)."""

    run_id: str
    first: int | None = None
    last: int | None = None


class HistoryReader:
    """Reads the mlfork runs of an experiment and their metric points in bulk.

    `fast=False` forces the public API path even for a sqlite store (the path a server
    takes). Both paths return the same rows.
    """

    def __init__(self, uri: str, fast: bool = True) -> None:
        self.uri = uri
        self.db = sqlite_path(uri) if fast else None
        self._tracker: Tracker | None = None
        self._keys: dict[str, frozenset[str]] = {}
        self.used: str = "sql" if self.db else "api"

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri)
        return self._tracker

    # -- runs ---------------------------------------------------------------------------------

    def runs(self, experiment: str) -> dict[str, IndexedRun]:
        """mlfork run name -> IndexedRun, for the active runs of the experiment ({} when the
        store or the experiment does not exist yet)."""
        if self.db is not None:
            if not Path(self.db).exists():
                return {}
            try:
                return self._runs_sql(experiment)
            except Exception:  # sqlite3.Error: another schema, a locked file: use the API
                self.db, self.used = None, "api"
        return self._runs_api(experiment)

    def _connect(self) -> Any:
        import sqlite3
        from urllib.parse import quote

        path = quote(str(Path(self.db or "").resolve()))
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def _runs_sql(self, experiment: str) -> dict[str, IndexedRun]:
        marks = ",".join("?" * len(INDEX_TAGS))
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT r.run_uuid, t.key, t.value FROM runs r"
                " JOIN experiments e ON e.experiment_id = r.experiment_id"
                " JOIN tags t ON t.run_uuid = r.run_uuid"
                f" WHERE e.name = ? AND r.lifecycle_stage = 'active' AND t.key IN ({marks})"
                " ORDER BY r.start_time DESC, r.run_uuid",
                (experiment, *INDEX_TAGS),
            ).fetchall()
            tags: dict[str, dict[str, str]] = {}
            for run_id, key, value in rows:
                tags.setdefault(run_id, {})[key] = value
            keys: dict[str, set[str]] = {}
            ids = [rid for rid, t in tags.items() if t.get(naming.TAG_RUN)]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for run_id, key in con.execute(
                    "SELECT run_uuid, key FROM latest_metrics"
                    f" WHERE run_uuid IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    keys.setdefault(run_id, set()).add(key)
        finally:
            con.close()
        out: dict[str, IndexedRun] = {}
        for run_id in ids:  # newest first: a duplicate name keeps the newest run
            name = tags[run_id][naming.TAG_RUN]
            if name not in out:
                out[name] = IndexedRun(run_id, tags[run_id], frozenset(keys.get(run_id, ())))
                self._keys[run_id] = out[name].metric_keys
        return out

    def _runs_api(self, experiment: str) -> dict[str, IndexedRun]:
        client = self.tracker.client
        exp = self.tracker.call("be read", client.get_experiment_by_name, experiment)
        if exp is None:
            return {}
        out: dict[str, IndexedRun] = {}
        token = None
        while True:
            page = self.tracker.call(
                "be searched",
                client.search_runs,
                [exp.experiment_id],
                filter_string=f"tags.`{naming.TAG_RUN}` != ''",
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            for r in page:
                name = r.data.tags.get(naming.TAG_RUN)
                if name and name not in out:
                    tags = {k: v for k, v in r.data.tags.items() if k in INDEX_TAGS}
                    out[name] = IndexedRun(r.info.run_id, tags, frozenset(r.data.metrics))
                    self._keys[r.info.run_id] = out[name].metric_keys
            token = page.token
            if not token:
                break
        return out

    # -- points -------------------------------------------------------------------------------

    def points(
        self, segments: list[PointSegment], keys: list[str] | None = None, *,
        stamps: bool = False,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Every point of every segment: (metric keys, rows), each row (segment index,
        index of its key in the keys, step, value) plus its timestamp with `stamps`, in no
        particular order. `keys` None means every metric; the keys come back sorted. A NaN
        value is None. A step logged twice comes twice: ask again with `stamps` to keep the
        newest (a rare case: mlfork writes idempotently)."""
        if not segments:
            return sorted(keys or []), []
        if self.db is not None:
            try:
                with no_gc():  # 100,000 row tuples would set off full collections
                    return self._points_sql(segments, keys, stamps)
            except Exception:  # sqlite3.Error: fall back to the API path
                self.db, self.used = None, "api"
        return self._points_api(segments, keys, stamps)

    def _points_sql(
        self, segments: list[PointSegment], keys: list[str] | None, stamps: bool
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        con = self._connect()
        try:
            if keys is None:
                ids = sorted({s.run_id for s in segments})
                found: set[str] = set()
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    found.update(key for (key,) in con.execute(
                        "SELECT DISTINCT key FROM latest_metrics"
                        f" WHERE run_uuid IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ))
                keys = list(found)
            keys = sorted(set(keys))
            if not keys:
                return keys, []
            # keys as small integer codes (no string per row), joined on the index
            # (run_uuid, key, step) so that SQLite seeks each segment's step range
            key_values = ",".join("(?,?)" for _ in keys)
            key_params = [x for code, key in enumerate(keys) for x in (code, key)]
            out: list[tuple[Any, ...]] = []
            for start in range(0, len(segments), 200):  # 4 variables a segment
                part = segments[start : start + 200]
                seg_values = ",".join("(?,?,?,?)" for _ in part)
                params: list[Any] = []
                for i, s in enumerate(part, start):
                    params += [i, s.run_id, -(2**62) if s.first is None else s.first,
                               2**62 if s.last is None else s.last]
                out += con.execute(
                    f"WITH seg(i, run_uuid, lo, hi) AS (VALUES {seg_values}),"
                    f" k(code, key) AS (VALUES {key_values})"
                    " SELECT seg.i, k.code, m.step,"
                    " CASE WHEN m.is_nan THEN NULL ELSE m.value END"
                    + (", m.timestamp" if stamps else "")
                    + " FROM seg, k JOIN metrics m ON m.run_uuid = seg.run_uuid"
                    " AND m.key = k.key AND m.step BETWEEN seg.lo AND seg.hi",
                    params + key_params,
                ).fetchall()
        finally:
            con.close()
        return keys, out

    def _points_api(
        self, segments: list[PointSegment], keys: list[str] | None, stamps: bool
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        client = self.tracker.client
        wanted = set(keys) if keys is not None else None
        runs = sorted({s.run_id for s in segments})
        run_keys: dict[str, list[str]] = {}
        for run_id in runs:  # the keys come with runs(); get_run only for a run not listed
            logged = self._keys.get(run_id)
            if logged is None:
                logged = frozenset(
                    self.tracker.call("be read", client.get_run, run_id).data.metrics
                )
            run_keys[run_id] = sorted(k for k in logged if wanted is None or k in wanted)
        jobs = [(run_id, key) for run_id in runs for key in run_keys[run_id]]

        def history(job: tuple[str, str]) -> list[Any]:
            return list(self.tracker.call("be read", client.get_metric_history, *job))

        if self.uri.startswith(("http://", "https://", "databricks")) and len(jobs) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:  # a server: overlap round trips
                results = list(pool.map(history, jobs))
        else:
            results = [history(job) for job in jobs]
        names = sorted(set(keys) if keys is not None else {k for _, k in jobs})
        code = {key: i for i, key in enumerate(names)}
        by_run: dict[str, list[tuple[str, list[Any]]]] = {}
        for (run_id, key), found in zip(jobs, results, strict=True):
            by_run.setdefault(run_id, []).append((key, found))
        out: list[tuple[Any, ...]] = []
        for i, seg in enumerate(segments):
            lo = -(2**62) if seg.first is None else seg.first
            hi = 2**62 if seg.last is None else seg.last
            for key, found in by_run.get(seg.run_id, []):
                c = code[key]
                for m in found:
                    if lo <= m.step <= hi:
                        value = None if m.value != m.value else m.value
                        out.append((i, c, m.step, value, m.timestamp) if stamps
                                   else (i, c, m.step, value))
        return names, out


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while many acyclic objects are made (rows read
    in bulk): each collection of the oldest generation would walk every object of the
    process (pandas, MLflow: hundreds of thousands) for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

