"""Iteration-by-iteration comparison of two lineages: what `mlfork replay --launch` and
`mlfork verify` report. Metrics are compared exactly, DVC outputs by the md5 in dvc.lock."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlfork.models import Checkpoint
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project


@dataclass
class MetricDivergence:
    metric: str
    iteration: int
    original: float | None
    replay: float | None
    difference: float  # |original - replay|; inf when one side lacks the metric

    def line(self) -> str:
        return (
            f"{self.metric}: {_num(self.difference)} at iteration {self.iteration}"
            f" ({_num(self.original)} -> {_num(self.replay)})"
        )


@dataclass
class OutputDivergence:
    iteration: int
    path: str
    original: str | None
    replay: str | None

    def line(self) -> str:
        return (
            f"{self.path} at iteration {self.iteration}:"
            f" md5 {(self.original or 'absent')[:12]} -> {(self.replay or 'absent')[:12]}"
        )


@dataclass
class IterationComparison:
    iteration: int
    original_commit: str | None
    replay_commit: str | None
    metrics_identical: bool
    outputs_identical: bool

    @property
    def identical(self) -> bool:
        return self.metrics_identical and self.outputs_identical


@dataclass
class Comparison:
    """Every compared iteration's metrics (exact equality) and DVC output hashes."""

    original: str
    replay: str
    iterations: list[int]
    rows: list[IterationComparison] = field(default_factory=list)
    largest: list[MetricDivergence] = field(default_factory=list)  # per differing metric
    first_metric: MetricDivergence | None = None
    first_output: OutputDivergence | None = None
    missing: list[int] = field(default_factory=list)  # iterations the replay did not complete
    # iterations in which the replay recomputed no stage (DVC found them all up to date, or
    # frozen): nothing there was reproduced, so nothing can be called identical
    not_recomputed: list[int] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return (bool(self.rows) and not self.missing and not self.not_recomputed
                and all(r.identical for r in self.rows))

    @property
    def first_iteration(self) -> int | None:
        return next((r.iteration for r in self.rows if not r.identical), None)

    def summary(self) -> str:
        span = iteration_span(self.iterations)
        if self.not_recomputed and not self.missing and all(r.identical for r in self.rows):
            return (
                f"not reproduced: '{self.replay}' recomputed no stage in"
                f" {iteration_span(self.not_recomputed)} (DVC found them up to date or frozen),"
                " so the results were not reproduced, only carried over"
            )
        if self.identical:
            return (
                f"identical: {span} of '{self.replay}'"
                f" {'match' if len(self.iterations) > 1 else 'matches'} '{self.original}'"
                " bit for bit"
                " (every metric, per-step point and DVC output hash)"
            )
        parts = [f"diverged from '{self.original}'"]
        if self.first_iteration is not None:
            parts.append(f"first at iteration {self.first_iteration}")
        if self.first_metric is not None:
            parts.append(f"metric {self.first_metric.line()}")
        if self.first_output is not None:
            parts.append(f"output {self.first_output.line()}")
        if self.missing:
            parts.append(f"iterations not completed by the replay: {iteration_span(self.missing)}")
        if self.not_recomputed:
            parts.append(f"nothing recomputed in {iteration_span(self.not_recomputed)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
        data["first_iteration"] = self.first_iteration
        data["summary"] = self.summary()
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["identical"] = row.identical
        return data


def compare(
    project: Project,
    original_rev: str,
    replay_rev: str,
    iterations: Iterable[int],
    *,
    original: str = "",
    replay: str = "",
    recomputed: Iterable[tuple[int, str]] | None = None,
) -> Comparison:
    """Compare the end-of-iteration checkpoints of two lineages (each read from the
    first-parent history of its commit) iteration by iteration: the metrics exactly, and the
    md5 of every DVC output in dvc.lock."""
    its = list(iterations)
    result = Comparison(original=original or original_rev[:10], replay=replay or replay_rev[:10],
                        iterations=its)
    if recomputed is not None:
        ran = {it for it, _ in recomputed}
        result.not_recomputed = [it for it in its if it not in ran]
    ends_o = _ends(project, original_rev)
    ends_r = _ends(project, replay_rev)
    reader = project.metrics
    steps_o = project.steps.place(ends_o).points
    steps_r = project.steps.place(ends_r).points
    largest: dict[str, MetricDivergence] = {}
    for it in its:
        oc, rc = ends_o.get(it), ends_r.get(it)
        if oc is None or rc is None:
            result.missing.append(it)
            result.rows.append(IterationComparison(
                it, oc.commit if oc else None, rc.commit if rc else None, False, False
            ))
            continue
        om, rm = reader.at(oc.commit), reader.at(rc.commit)
        series = {k: k for k in (*om, *rm)}
        # each per-step point too, named `series@step` (on the global step axis)
        for points, out in ((steps_o.get(it, {}), om), (steps_r.get(it, {}), rm)):
            for name, pts in points.items():
                out.update({f"{name}@{s}": v for s, v in pts})
                series.update({f"{name}@{s}": name for s, _ in pts})
        metrics_ok = True
        for key in sorted(set(om) | set(rm)):
            a, b = om.get(key), rm.get(key)
            if a == b:
                continue
            metrics_ok = False
            diff = abs(a - b) if a is not None and b is not None else math.inf
            div = MetricDivergence(key, it, a, b, diff)
            if result.first_metric is None:
                result.first_metric = div
            worst = series.get(key, key)  # the largest difference of each series
            if worst not in largest or diff > largest[worst].difference:
                largest[worst] = div
        oo, ro = _outputs(project, oc.commit), _outputs(project, rc.commit)
        outputs_ok = True
        for out in [*oo, *(k for k in ro if k not in oo)]:  # pipeline order, as in dvc.lock
            if oo.get(out) != ro.get(out):
                outputs_ok = False
                if result.first_output is None:
                    result.first_output = OutputDivergence(it, out, oo.get(out), ro.get(out))
        result.rows.append(
            IterationComparison(it, oc.commit, rc.commit, metrics_ok, outputs_ok)
        )
    result.largest = [largest[k] for k in sorted(largest)]
    return result


def _ends(project: Project, rev: str) -> dict[int, Checkpoint]:
    rec = project.read_record(rev)
    if rec is None or not rec.stages:
        return {}
    return lineage.end_of_iteration(lineage.checkpoints(project, rev), rec.stages)


def _outputs(project: Project, commit: str) -> dict[str, str | None]:
    """Every stage output's md5 at `commit`, from every dvc.lock of the project (a
    pipeline may have a dvc.yaml, and so a dvc.lock, in any folder)."""
    return {path: str_or_none(entry.get("md5"))
            for path, entry in project.outputs_at(commit).items()}


# -- helpers -----------------------------------------------------------------------------------


def str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _num(value: float | None) -> str:
    if value is None:
        return "absent"
    if math.isinf(value):
        return "inf"
    return f"{value:.6g}"


def iteration_span(its: Sequence[int]) -> str:
    if not its:
        return "none"
    if len(its) == 1:
        return f"iteration {its[0]}"
    return f"iterations {its[0]} to {its[-1]}"
