"""Mirror git into MLflow: what each run looks like in the tracking store (tags, params,
metric points, status), derived from git alone. Its delivery is `outbox.py`'s."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from mlfork import naming
from mlfork.adapters.tracking.store import default_uri, redact_uri
from mlfork.adapters.tracking.writer import RunWrite
from mlfork.models import Checkpoint, RunRecord
from mlfork.nested import flatten
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

EXCLUDED_PARAMS = ("iteration", "iterations")


def experiment_name(project: Project, rev: str) -> str:
    return project.policy(rev).experiment or project.home.name


def tracking_uri(project: Project, rev: str | None = None, write: bool = False) -> str:
    """The tracking store's URI. `write`: the caller will write to it, so the embedded
    store's self-ignoring .mlfork/local/ is made (a reader changes nothing)."""
    configured = project.policy(rev).tracking_uri if rev else None
    if write:
        project.local("mlflow.db")
    return default_uri(project.home, configured)


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
    if rec.merged:
        tags[naming.TAG_MERGED_FROM] = json.dumps(
            [{k: m.get(k) for k in ("run", "iteration", "weight")} for m in rec.merged],
            separators=(",", ":"))[:8000]
    locked = project.policy(rec.parent.commit).locked if rec.parent is not None else ()
    tags[naming.TAG_NOTE] = note(rec, chain, locked)
    return tags


def note(rec: RunRecord, chain: list[dict[str, Any]], locked: Iterable[str] = ()) -> str:
    """The Markdown the MLflow UI shows on the run's page."""
    lines = [f"**mlfork run `{rec.name}`** on branch `{naming.branch_name(rec.name)}`", ""]
    if rec.merged:
        how = rec.merge or {}
        only = f", only tensors matching `{how['only']}`" if how.get("only") else ""
        lines += [
            f"Merged ({how.get('strategy', 'mean')} of the `{how.get('object', 'model')}`"
            f" state{only}) from: " + ", ".join(
                f"`{m.get('run')}`@{m.get('iteration')} (weight {float(m.get('weight', 0)):.4g})"
                for m in rec.merged),
            "",
        ]
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
    status = mlflow_status(project, rec, rev)
    since = _since(ends, after)
    points: list[list[Any]] = []
    for it, cp in sorted(ends.items()):
        if it > since:
            points += [[k, v, cp.time * 1000, it]
                       for k, v in sorted(project.metrics.at(cp.commit).items())]
    step_points, step_tags = per_step(project, rec, ends, lambda it: it > since)
    points += step_points
    last = max(ends) if ends else None
    last_time = project.git.commit(rev).time * 1000
    return RunWrite(
        run=run,
        experiment=experiment_name(project, rev),
        start_time=iso_to_ms(rec.created),
        tags={**run_tags(project, rec, rev), **step_tags},
        params=run_params(project, rev),
        metrics=points,
        status=status,
        end_time=last_time if status in ("FINISHED", "FAILED", "KILLED") else None,
        mirrored={"commit": rev, "status": status, "step": last,
                  "ts": ends[last].time * 1000 if last is not None else None},
    )


def per_step(
    project: Project, rec: RunRecord, ends: dict[int, Checkpoint],
    wanted: Callable[[int], bool],
) -> tuple[list[list[Any]], dict[str, str]]:
    """The run's own per-step points of the iterations `wanted(it)` accepts, as MLflow
    points `step/<series>` on the global step axis (the steps a fork inherits stay its
    ancestors'), and, for a fork, the tag naming the last step it inherits."""
    from mlfork.errors import MissingData
    from mlfork.ops.kernel.steps import PREFIX

    if not ends:
        return [], {}
    try:
        placed = project.steps.place(ends)
    except MissingData:  # an earlier series is nowhere to be had: none placed wrongly
        return [], {}
    until = -1
    if rec.parent is not None:
        until = lineage.inherited_until(rec.parent.iteration, rec.parent.step, rec.stages)
    points = [
        [PREFIX + name, v, cp.time * 1000, s]
        for it, cp in sorted(ends.items()) if it > until and wanted(it)
        for name, pts in sorted(placed.points.get(it, {}).items()) for s, v in pts
    ]
    tags = {}
    if rec.parent is not None:
        tags[naming.TAG_STEPS_INHERITED_UNTIL] = str(placed.last_before(until + 1))
    return points, tags


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
    return {"commit": rev, "status": mlflow_status(project, rec, rev)}


def mlflow_status(project: Project, rec: RunRecord, rev: str) -> str:
    """The run's MLflow status at its tip `rev`, as `mlfork runs` has it: a fork not run yet
    is stopped (KILLED in MLflow's words), not SCHEDULED forever."""
    done = lineage.position(project, rev).done(rec.stages)
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
        # who ran it (the author of its newest commit) and where it comes from
        naming.TAG_USER: project.git.commit(rev).author,
        naming.TAG_SOURCE_TYPE: "PROJECT",
        naming.TAG_SOURCE_NAME: _source(project, rev),
    }
    url = _origin_url(project)
    if url:
        tags[naming.TAG_GIT_REPO_URL] = url
    tags.update(lineage_tags(project, rec))
    tags.update(user_tags(rec.tags))
    return tags


def _origin_url(project: Project) -> str | None:
    """The URL of the repository's `origin` remote, credentials removed; None without one."""
    url = project.git.remote_url("origin")
    return redact_uri(url) if url else None


def _source(project: Project, rev: str) -> str:
    """The run's source in MLflow's words: the shared repository where there is one (with
    the project's folder in it), else the project's experiment name: the same for every
    clone, and never a path of this machine (the store can be rebuilt from git anywhere)."""
    url = _origin_url(project)
    if url is None:
        return experiment_name(project, rev)
    return f"{url}#{project.git.prefix}" if project.git.prefix else url


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
