"""`mlfork diff A B`: what differs between two runs (overrides, config, metrics at the fork
point and at the end, comparability), and the direction of each metric."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlfork.errors import UsageError
from mlfork.models import Checkpoint
from mlfork.nested import flatten
from mlfork.ops.comparing.chain import chain_from_git
from mlfork.ops.comparing.stitch import Source, metrics
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import MISSING, Project

if TYPE_CHECKING:
    import pandas as pd

LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse")


def direction(metric: str) -> Literal["lower", "higher"]:
    """Names containing loss/error/mse/mae/rmse are lower-is-better; others higher."""
    lowered = metric.lower()
    return "lower" if any(word in lowered for word in LOWER_IS_BETTER) else "higher"


def verdict(metric: str, delta: float | None) -> str | None:
    """'better', 'worse' or 'same' for a change of `delta` in `metric`."""
    if delta is None or delta != delta:  # None or NaN
        return None
    if delta == 0:
        return "same"
    return "better" if (delta < 0) == (direction(metric) == "lower") else "worse"


@dataclass(frozen=True)
class ForkPoint:
    """The newest checkpoint two runs share; `metrics_iteration` is the last iteration whose
    metrics they share (None when they share no complete iteration)."""

    run: str
    iteration: int
    step: str
    commit: str
    metrics_iteration: int | None


@dataclass(frozen=True)
class ConfigChange:
    key: str
    a: Any
    b: Any
    in_a: bool = True
    in_b: bool = True


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    direction: str
    fork: float | None  # at the fork point (shared by both runs)
    a: float | None  # at A's last iteration
    b: float | None  # at B's last iteration
    a_delta: float | None  # A's last - fork point
    b_delta: float | None  # B's last - fork point
    b_minus_a: float | None
    verdict: str | None  # B against A: better, worse, same


@dataclass(frozen=True)
class LockedCheck:
    key: str
    a: Any
    b: Any
    same: bool


@dataclass
class DiffResult:
    """`mlfork diff A B`: what differs between two runs."""

    a: str
    b: str
    headline: str | None
    fork_point: ForkPoint | None
    a_iteration: int | None  # the last iteration of each run
    b_iteration: int | None
    a_is_ancestor: bool  # A is in B's lineage
    b_is_ancestor: bool
    overrides: dict[str, list[str]]
    config: list[ConfigChange]
    metrics: list[MetricDelta]
    locked: list[LockedCheck]
    comparable: bool
    source: str = "tracking"
    metrics_logged: bool = True  # False: the project logs no metrics (NO_METRICS)
    source_note: str = ""  # why git was read instead of the store (it lags), if it was

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities (which JSON cannot hold) become None."""
        return _finite(asdict(self))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def common_checkpoint(project: Project, tip_a: str, tip_b: str) -> Checkpoint | None:
    """The newest checkpoint on both first-parent lines (where the two runs part)."""
    in_a = {c.commit for c in lineage.checkpoints(project, tip_a)}
    for commit in project.git.first_parent_walk(tip_b):  # newest first (stages of one
        t = commit.trailers  # iteration may share a commit time: order by the graph)
        if t is None:
            break
        if t.iteration is not None and t.step is not None and commit.id in in_a:
            return Checkpoint(t.run, t.iteration, t.step, commit.id, commit.time)
    return None


def diff(
    path: str | os.PathLike[str] = ".",
    a: str | None = None,
    b: str | None = None,
    *,
    source: Source = "auto",
    frame: pd.DataFrame | None = None,
) -> DiffResult:
    """`mlfork diff A B`: override sets, the composed configs' differing keys (params.yaml at
    each run's tip), the metrics at the fork point and at each run's last iteration with
    deltas, and whether the two are comparable (same values of the locked keys). `frame`:
    the stitched metrics of A and B if the caller has them already."""
    if a is None or b is None:
        raise UsageError("diff needs two runs: mlfork diff A B")
    project = Project.open(path, require_dvc=False)
    a, b = lineage.resolve_run(project, a), lineage.resolve_run(project, b)
    tip_a, tip_b = lineage.tip(project, a), lineage.tip(project, b)
    rec_a, rec_b = lineage.record(project, a, tip_a), lineage.record(project, b, tip_b)
    chain_a, chain_b = chain_from_git(project, a), chain_from_git(project, b)

    cfg_a, cfg_b = project.params_at(tip_a), project.params_at(tip_b)
    flat_a, flat_b = flatten(cfg_a), flatten(cfg_b)
    changes = [
        ConfigChange(k, flat_a.get(k), flat_b.get(k), k in flat_a, k in flat_b)
        for k in sorted(set(flat_a) | set(flat_b))
        if k != "iteration"
        and ((k in flat_a) != (k in flat_b) or flat_a.get(k) != flat_b.get(k))
    ]
    locked_keys = list(
        dict.fromkeys([*project.policy(tip_a).locked, *project.policy(tip_b).locked])
    )
    locked = []
    for k in locked_keys:  # the policy's keys this project has (in either run)
        va, vb = project.locked_value_at(tip_a, k), project.locked_value_at(tip_b, k)
        if va is MISSING and vb is MISSING:
            continue
        locked.append(LockedCheck(k, None if va is MISSING else va,
                                  None if vb is MISSING else vb, va == vb))

    cp = common_checkpoint(project, tip_a, tip_b)
    fork_point = None
    if cp is not None:
        until = lineage.inherited_until(cp.iteration, cp.step, rec_b.stages or rec_a.stages)
        fork_point = ForkPoint(
            cp.run, cp.iteration, cp.step, cp.commit, until if until >= 0 else None
        )

    df = frame if frame is not None else metrics(path, [a, b] if a != b else [a], source=source)
    headline = lineage.headline_at(project, tip_b)[0] or lineage.headline_at(project, tip_a)[0]
    rows, _, _ = _metric_deltas(df, a, b, fork_point, headline)
    a_last = lineage.position(project, tip_a).done(rec_a.stages) - 1
    b_last = lineage.position(project, tip_b).done(rec_b.stages) - 1
    return DiffResult(
        a=a,
        b=b,
        headline=headline,
        fork_point=fork_point,
        a_iteration=a_last if a_last >= 0 else None,
        b_iteration=b_last if b_last >= 0 else None,
        a_is_ancestor=a != b and a in [link.run for link in chain_b],
        b_is_ancestor=a != b and b in [link.run for link in chain_a],
        overrides={
            "a": list(rec_a.overrides),
            "b": list(rec_b.overrides),
            "a_own": list(rec_a.own_overrides),
            "b_own": list(rec_b.own_overrides),
            "only_a": [o for o in rec_a.overrides if o not in rec_b.overrides],
            "only_b": [o for o in rec_b.overrides if o not in rec_a.overrides],
        },
        config=changes,
        metrics=rows,
        locked=locked,
        comparable=all(c.same for c in locked),
        source=str(df.attrs.get("source", "")),
        metrics_logged=bool(df.attrs.get("logged", True)),
        source_note=str(df.attrs.get("note") or "") if df.attrs.get("logged", True) else "",
    )


def _metric_deltas(
    df: pd.DataFrame, a: str, b: str, fork: ForkPoint | None, headline: str | None
) -> tuple[list[MetricDelta], int | None, int | None]:
    def series(run: str) -> dict[tuple[str, int], float]:
        sub = df[df["run"] == run]
        return {
            (m, int(i)): float(v)
            for m, i, v in zip(sub["metric"], sub["iteration"], sub["value"], strict=True)
        }

    sa, sb = series(a), series(b)
    a_last = max((i for _, i in sa), default=None)
    b_last = max((i for _, i in sb), default=None)
    names = sorted({m for m, _ in sa} | {m for m, _ in sb})
    if headline in names:  # the headline metric first
        names.remove(headline)
        names.insert(0, headline)

    def sub(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y

    rows = []
    for m in names:
        at_fork = None
        if fork is not None and fork.metrics_iteration is not None:
            at_fork = sa.get((m, fork.metrics_iteration), sb.get((m, fork.metrics_iteration)))
        va = sa.get((m, a_last)) if a_last is not None else None
        vb = sb.get((m, b_last)) if b_last is not None else None
        delta = sub(vb, va)
        rows.append(
            MetricDelta(
                metric=m,
                direction=direction(m),
                fork=at_fork,
                a=va,
                b=vb,
                a_delta=sub(va, at_fork),
                b_delta=sub(vb, at_fork),
                b_minus_a=delta,
                verdict=verdict(m, delta),
            )
        )
    return rows, a_last, b_last
