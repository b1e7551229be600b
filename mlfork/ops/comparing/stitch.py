"""Stitched metric series (`mlfork metrics`; the plot, the diff and the report read them).

A stitched series follows a run's lineage, root first: each ancestor's points up to the fork
point of the next run, then the run's own. The lineage comes from git (the run records), or,
without a project (`stitch`), from the `mlfork.lineage` tags; the points come from the
tracking store in one bulk read (adapters.tracking.reader.HistoryReader), or from git itself
(`source="git"`: the DVC metrics files at each end-of-iteration checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from mlfork.errors import NotFound, TrackingError, UsageError
from mlfork.ops.comparing.chain import (
    Link,
    Mode,
    NotIndexed,
    Segment,
    chain_from_git,
    chain_from_tags,
    segments,
)
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project
from mlfork.ops.kernel.steps import PREFIX
from mlfork.ops.mirroring import mirror as track
from mlfork.ops.mirroring import outbox

if TYPE_CHECKING:
    import pandas as pd

    from mlfork.adapters.tracking.reader import HistoryReader, PointSegment

Source = Literal["auto", "tracking", "git"]
Axis = Literal["iteration", "step"]
COLUMNS = ["run", "owner", "iteration", "metric", "value", "inherited"]


NO_METRICS = (
    "the project logs no metrics: DVC finds no metrics file in its dvc.yaml; declare one"
    " (a stage's 'metrics:' output, or the top-level 'metrics:' section, which dvclive"
    " writes) and the runs' iterations get their metrics"
)


def logs_metrics(project: Project, runs: Sequence[str]) -> bool:
    """Does DVC find a metrics file at the tip of any of `runs`?"""
    return any(project.metrics.files(lineage.tip(project, r)) for r in runs)


# -- stitched metrics ------------------------------------------------------------------------


def stitch(
    uri: str,
    experiment: str,
    runs: Sequence[str],
    *,
    mode: Mode = "stitched",
    metrics: Sequence[str] = (),
    chains: dict[str, list[Link]] | None = None,
    fast: bool = True,
    reader: HistoryReader | None = None,
    x: Axis = "iteration",
) -> pd.DataFrame:
    """Stitched (or own) metric series of `runs` from the tracking store alone: one read of
    the experiment's lineage tags, one bulk read of the points. `chains` (from git) skips
    the lineage tags; `fast=False` forces the public MLflow API path; `reader` reuses a
    HistoryReader (and its MLflow client). `x="step"`: the per-step series (the MLflow
    keys `step/<series>`, each run holding its own steps on the global axis), the owners'
    step ranges from the forks' `mlfork.steps_inherited_until` tags."""
    from mlfork.adapters.tracking.reader import HistoryReader, PointSegment

    per_step = x == "step"
    reader = reader or HistoryReader(uri, fast=fast)
    index = reader.runs(experiment)
    plan: list[tuple[str, str, Segment]] = []  # (requested run, run id, segment)
    logged: set[str] = set()
    for run in runs:
        chain = chains[run] if chains and run in chains else chain_from_tags(index, run, uri)
        for link in chain:
            if link.run not in index:
                raise NotIndexed(link.run, uri)
            keys = index[link.run].metric_keys
            logged |= ({k[len(PREFIX):] for k in keys if k.startswith(PREFIX)} if per_step
                       else {k for k in keys if not k.startswith(PREFIX)})
        segs = step_segments(chain, index) if per_step else segments(chain)
        for seg in segs[-1:] if mode == "own" else segs:
            plan.append((run, index[seg.owner].run_id, seg))
    wanted = check_metrics(metrics, logged, runs)
    prefix = PREFIX if per_step else ""
    df = _frame(
        reader,
        [PointSegment(rid, s.first, s.last) for _, rid, s in plan],
        [prefix + m for m in sorted(wanted if wanted is not None else logged)],
        [(run, seg.owner) for run, _, seg in plan],
        list(runs),
    )
    if per_step:
        df = df.rename(columns={"iteration": "step"})
        df["metric"] = df["metric"].str.slice(len(PREFIX))
    df.attrs.update(source="tracking", reader=reader.used)
    return df


def check_metrics(
    metrics: Sequence[str], logged: set[str], runs: Sequence[str]
) -> set[str] | None:
    """The metric filter (None: every metric); a metric no run logged is NotFound."""
    if not metrics:
        return None
    missing = [m for m in dict.fromkeys(metrics) if m not in logged]
    if missing:
        which = ", ".join(f"'{m}'" for m in missing)
        known = ", ".join(sorted(logged)) or "none"
        whose = "its" if len(runs) == 1 else "their"
        raise NotFound(
            f"metric {which} was not logged by {', '.join(runs)} or {whose} ancestors;"
            f" metrics: {known}"
        )
    return set(metrics)


def _frame(
    reader: HistoryReader,
    segs: list[PointSegment],
    keys: list[str] | None,
    seg_info: list[tuple[str, str]],
    order: list[str],
) -> pd.DataFrame:
    """The points of `segs` [(requested run, owner) of each in `seg_info`] as a frame: one
    row per (run, metric, iteration), sorted by run (as in `order`), metric, iteration.
    Vectorised (a deep lineage has 100,000 points); where a step was logged twice, the
    points are read again with their timestamps and the newest wins."""
    from mlfork.adapters.tracking.reader import no_gc

    with no_gc():  # many row tuples, no cycles: see no_gc
        return _frame_of(reader, segs, keys, seg_info, order)


def _frame_of(
    reader: HistoryReader,
    segs: list[PointSegment],
    keys: list[str] | None,
    seg_info: list[tuple[str, str]],
    order: list[str],
) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    names, points = reader.points(segs, keys)
    if not points:
        return empty_frame()
    rank_of = {r: i for i, r in enumerate(order)}
    seg_rank = np.fromiter((rank_of[r] for r, _ in seg_info), dtype=np.int64, count=len(seg_info))

    def columns(rows: list[tuple[Any, ...]]) -> list[Any]:
        n = len(rows)
        cols = list(zip(*rows, strict=True))
        seg = np.fromiter(cols[0], dtype=np.int64, count=n)
        out = [seg_rank[seg], np.fromiter(cols[1], dtype=np.int64, count=n),
               np.fromiter(cols[2], dtype=np.int64, count=n), seg,
               np.array(cols[3], dtype=np.float64)]  # None (NaN in the store) -> nan
        if len(cols) > 4:
            out.append(np.fromiter(cols[4], dtype=np.int64, count=n))
        return out

    rank, codes, steps, seg, values = columns(points)
    idx = np.lexsort((steps, codes, rank))
    rank, codes, steps, seg, values = rank[idx], codes[idx], steps[idx], seg[idx], values[idx]
    repeated = (rank[1:] == rank[:-1]) & (codes[1:] == codes[:-1]) & (steps[1:] == steps[:-1])
    if repeated.any():  # rare: read again with timestamps, keep the newest of each step
        names, points = reader.points(segs, keys, stamps=True)
        rank, codes, steps, seg, values, stamps = columns(points)
        idx = np.lexsort((values, stamps, steps, codes, rank))
        rank, codes, steps, seg, values = rank[idx], codes[idx], steps[idx], seg[idx], values[idx]
        last = np.ones(len(idx), dtype=bool)
        last[:-1] = (rank[1:] != rank[:-1]) | (codes[1:] != codes[:-1]) | (steps[1:] != steps[:-1])
        codes, steps, seg, values = codes[last], steps[last], seg[last], values[last]
    run_of = np.array([r for r, _ in seg_info], dtype=object)[seg]
    owner_of = np.array([o for _, o in seg_info], dtype=object)[seg]
    return pd.DataFrame(
        {
            "run": run_of,
            "owner": owner_of,
            "iteration": steps,
            "metric": np.asarray(names, dtype=object)[codes],
            "value": values,
            "inherited": owner_of != run_of,
        }
    )


def empty_frame(x: Axis = "iteration") -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        {
            "run": pd.Series(dtype=object),
            "owner": pd.Series(dtype=object),
            x: pd.Series(dtype="int64"),
            "metric": pd.Series(dtype=object),
            "value": pd.Series(dtype="float64"),
            "inherited": pd.Series(dtype=bool),
        }
    )


def from_git(
    project: Project, runs: Sequence[str], mode: Mode = "stitched", metrics: Sequence[str] = ()
) -> pd.DataFrame:
    """The same frame read from git: the metrics files at each end-of-iteration checkpoint
    (the truth the tracking store indexes)."""
    rows: list[tuple[str, str, int, str, float, bool]] = []
    logged: set[str] = set()
    for run in runs:
        rev = lineage.tip(project, run)
        rec = lineage.record(project, run, rev)
        cps = lineage.checkpoints(project, rev, with_metrics=True)
        for it, cp in sorted(lineage.end_of_iteration(cps, rec.stages).items()):
            logged |= set(cp.metrics)
            if mode == "own" and cp.run != run:
                continue
            for key, value in cp.metrics.items():
                rows.append((run, cp.run, it, key, value, cp.run != run))
    return _git_frame(rows, logged, runs, metrics, "iteration")


def steps_from_git(
    project: Project, runs: Sequence[str], mode: Mode = "stitched", metrics: Sequence[str] = ()
) -> pd.DataFrame:
    """The per-step frame read from git: the plots files at each end-of-iteration
    checkpoint, placed on the global axis."""
    rows: list[tuple[str, str, int, str, float, bool]] = []
    logged: set[str] = set()
    for run in runs:
        ends, placed = _placed(project, run)
        for it, cp in sorted(ends.items()):
            for name, pts in placed.points.get(it, {}).items():
                logged.add(name)
                if mode == "own" and cp.run != run:
                    continue
                rows += [(run, cp.run, s, name, v, cp.run != run) for s, v in pts]
    return _git_frame(rows, logged, runs, metrics, "step")


def _git_frame(rows: list[tuple[str, str, int, str, float, bool]], logged: set[str],
               runs: Sequence[str], metrics: Sequence[str], x: Axis) -> pd.DataFrame:
    """Rows (run, owner, x, metric, value, inherited) as the frame: filtered by `metrics`
    (one no run logged is NotFound), sorted by run (as given), metric, x."""
    import pandas as pd

    wanted = check_metrics(metrics, logged, runs)
    if wanted is not None:
        rows = [r for r in rows if r[3] in wanted]
    if not rows:
        df = empty_frame(x)
    else:
        rank = {r: i for i, r in enumerate(runs)}
        rows.sort(key=lambda r: (rank[r[0]], r[3], r[2]))
        df = pd.DataFrame(rows, columns=["run", "owner", x, "metric", "value", "inherited"])
        df[x] = df[x].astype("int64")
        df["value"] = df["value"].astype("float64")
        df["inherited"] = df["inherited"].astype(bool)
    df.attrs.update(source="git", reader="git")
    return df


def resolve_runs(project: Project, runs: str | Sequence[str | None] | None) -> list[str]:
    """Names, branches or unique prefixes (None: the run checked out), without duplicates."""
    if runs is None or isinstance(runs, str):
        runs = [runs]
    if not runs:
        runs = [None]
    return list(dict.fromkeys(lineage.resolve_run(project, r) for r in runs))


def metrics(
    path: str | os.PathLike[str] = ".",
    runs: str | Sequence[str | None] | None = None,
    *,
    mode: Mode = "stitched",
    metrics: Sequence[str] = (),
    source: Source = "auto",
    fast: bool = True,
) -> pd.DataFrame:
    """`mlfork metrics`: a DataFrame with columns run, owner, iteration, metric, value,
    inherited; one row per (run, iteration, metric), sorted by run (as given), metric,
    iteration.

    `mode="stitched"`: each ancestor's points up to its fork point, then the run's own;
    `mode="own"`: the run's own points only. `source="tracking"` reads the tracking store
    (the lineage from git, the points in bulk; `fast=False` forces the public MLflow API
    path); `"git"` reads the metrics files in git; `"auto"` reads the tracking store unless
    it is unreachable, lacks a run, or is behind git (writes waiting in the outbox, another
    last iteration), and then git. `df.attrs["source"]` says which was read."""
    return _read(path, runs, mode, metrics, source, fast, "iteration")


def steps(
    path: str | os.PathLike[str] = ".",
    runs: str | Sequence[str | None] | None = None,
    *,
    mode: Mode = "stitched",
    metrics: Sequence[str] = (),
    source: Source = "auto",
    fast: bool = True,
) -> pd.DataFrame:
    """`mlfork metrics --x step`: the per-step series of `runs` on the global step axis (see
    ops.kernel.steps), a DataFrame with columns run, owner, step, metric, value, inherited;
    one row per (run, step, series), sorted by run (as given), series, step. Stitched: the
    ancestors' steps up to each fork point, then the run's own; `own`: the run's own steps.
    The sources as for `metrics`; `auto` reads git where the store lacks a point git has."""
    return _read(path, runs, mode, metrics, source, fast, "step")


def _read(path: str | os.PathLike[str], runs: str | Sequence[str | None] | None, mode: Mode,
          metrics: Sequence[str], source: Source, fast: bool, x: Axis) -> pd.DataFrame:
    """`metrics` (x="iteration") and `steps` (x="step"): one way to the frame, from the
    store or from git."""
    if mode not in ("stitched", "own"):
        raise UsageError(f"mode must be 'stitched' or 'own', got {mode!r}")
    if source not in ("auto", "tracking", "git"):
        raise UsageError(f"source must be 'auto', 'tracking' or 'git', got {source!r}")
    project = Project.open(path, require_dvc=False)
    names = resolve_runs(project, runs)
    per_step = x == "step"
    read_git = steps_from_git if per_step else from_git
    logs = (any(project.steps.sources(lineage.tip(project, r)) for r in names) if per_step
            else logs_metrics(project, names))
    if not logs:
        if metrics:
            check_metrics(metrics, set(), names)
        df = empty_frame(x)
        df.attrs.update(source="git", reader="git", note=NO_STEPS if per_step else NO_METRICS,
                        logged=False)
        return df
    if source == "git":
        return read_git(project, names, mode, metrics)
    chains = {name: chain_from_git(project, name) for name in names}
    try:
        waiting = outbox.pending(project) if source == "auto" else []
        if waiting:
            raise _Behind(f"{len(waiting)} tracking write(s) wait in the outbox (delivered in"
                          " the background, or by 'mlfork sync')")
        df = _from_store(project, names, chains, mode, metrics, fast, x)
        if source == "auto" and per_step:
            _check_steps(project, names, mode, metrics, df)
        elif source == "auto":
            _check_current(project, names, df)
        return df
    except (TrackingError, NotIndexed, _Behind) as exc:
        if source == "tracking":
            raise
        df = read_git(project, names, mode, metrics)
        df.attrs["note"] = f"read from git: {exc}"
        return df


class _Behind(Exception):
    pass


def _from_store(
    project: Project,
    names: list[str],
    chains: dict[str, list[Link]],
    mode: Mode,
    metrics: Sequence[str],
    fast: bool,
    x: Axis = "iteration",
) -> pd.DataFrame:
    """The frame from the tracking store(s): the runs grouped by store and experiment."""
    import pandas as pd

    groups: dict[tuple[str, str], list[str]] = {}
    for name in names:
        rev = lineage.tip(project, name)
        key = (track.tracking_uri(project, rev), track.experiment_name(project, rev))
        groups.setdefault(key, []).append(name)
    frames = [
        stitch(uri, exp, group, mode=mode, metrics=metrics, chains=chains, fast=fast, x=x)
        for (uri, exp), group in groups.items()
    ]
    if len(frames) == 1:
        return frames[0]
    attrs = frames[0].attrs
    rank = {r: i for i, r in enumerate(names)}
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(
        ["run", "metric", x], key=lambda s: s.map(rank) if s.name == "run" else s,
        kind="stable", ignore_index=True,
    )
    df.attrs.update(attrs)
    return df


def _check_current(project: Project, names: list[str], df: pd.DataFrame) -> None:
    """The store is behind (or ahead of) git when a run's last iteration differs."""
    last = df.groupby("run")["iteration"].max().to_dict() if len(df) else {}
    for name in names:
        rev = lineage.tip(project, name)
        rec = lineage.record(project, name, rev)
        done = lineage.position(project, rev).done(rec.stages) if rec.stages else 0
        if not project.metrics.files(rev):
            continue  # this run logs no metrics: there is nothing to be behind on
        if done > 0 and last.get(name) != done - 1:
            raise _Behind(
                f"the tracking store has run '{name}' up to iteration {last.get(name)},"
                f" git up to {done - 1} (run 'mlfork sync')"
            )


# -- per-step series -------------------------------------------------------------------------

NO_STEPS = (
    "the runs log no per-step series: DVC finds no plots file in their dvc.yaml (declare"
    " one under 'plots:', as dvclive does); 'mlfork metrics' without --x step shows the"
    " per-iteration metrics"
)


def _placed(project: Project, run: str) -> tuple[dict[int, Any], Any]:
    rev = lineage.tip(project, run)
    rec = lineage.record(project, run, rev)
    ends = lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)
    return ends, project.steps.place(ends)


def step_segments(chain: Sequence[Link], index: dict[str, Any]) -> list[Segment]:
    """Which run owns which global steps of a stitched per-step series: each fork's own
    steps start after the last step it inherits (its `mlfork.steps_inherited_until` tag)."""
    from mlfork import naming

    bounds: list[int | None] = [None]
    for link in chain[1:]:
        tag = index[link.run].tags.get(naming.TAG_STEPS_INHERITED_UNTIL)
        bounds.append(int(tag) if tag not in (None, "") else None)
    out = []
    for k, link in enumerate(chain):
        bound = bounds[k]  # None: a root, or no tag (not mirrored yet): its points all
        first = bound + 1 if bound is not None else None
        last = bounds[k + 1] if k + 1 < len(chain) else None
        if first is not None and last is not None and first > last:
            continue
        out.append(Segment(link.run, first, last))
    return out


def _check_steps(project: Project, names: list[str], mode: Mode, metrics: Sequence[str],
                 df: pd.DataFrame) -> None:
    """The store is behind git when it lacks points git has (a run mirrored before its
    per-step series were, an iteration not delivered yet): the count of each run's points
    differs."""
    have = df.groupby("run").size().to_dict() if len(df) else {}
    want = steps_from_git(project, names, mode, metrics)
    counts = want.groupby("run").size().to_dict() if len(want) else {}
    for name in names:
        if have.get(name, 0) != counts.get(name, 0):
            raise _Behind(f"the tracking store has {have.get(name, 0)} per-step point(s) of"
                          f" run '{name}', git {counts.get(name, 0)} (run 'mlfork sync',"
                          " or 'mlfork sync --rebuild' for runs mirrored by an older mlfork)")
