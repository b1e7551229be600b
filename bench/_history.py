"""Long run histories for the benchmarks, written as commits in mlfork's own format.

Running 1,600 iterations for real would take hours; what the commands read is only their
commits. `synthesize` takes a real run (made by `mlfork run`) as its template and writes a
new run beside it: a record commit, then N iterations whose stage commits are the
template's last iteration with the iteration number, the params, the metrics values and the
record's budget changed: the commits mlfork itself would write, in the same trees, with
the DVC outputs of the template (present in the cache, so that a fork can check them out).
Its metric values are distinct per iteration so that nothing is deduplicated by accident.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pygit2
import yaml

from mlfork import naming

RECORD = naming.RUN_RECORD


def _trailers(commit: pygit2.Commit) -> Any:
    return naming.parse_trailers(commit.message)


def _blob(repo: pygit2.Repository, tree: pygit2.Tree, path: str) -> bytes | None:
    try:
        obj = tree[path]
    except KeyError:
        return None
    return bytes(repo[obj.id].data)


def _metric_paths(repo: pygit2.Repository, tree: pygit2.Tree) -> list[str]:
    """The JSON metrics files the template's dvc.yaml declares (stage and top-level)."""
    data = yaml.safe_load(_blob(repo, tree, "dvc.yaml") or b"") or {}
    paths = list(data.get("metrics") or [])
    for stage in (data.get("stages") or {}).values():
        for entry in stage.get("metrics") or []:
            paths += list(entry) if isinstance(entry, dict) else [entry]
    return [p for p in paths if str(p).endswith(".json")]


def _perturb(data: Any, factor: float) -> Any:
    if isinstance(data, dict):
        return {k: _perturb(v, factor) for k, v in data.items()}
    if isinstance(data, float | int) and not isinstance(data, bool):
        return round(float(data) * factor, 9)
    return data


def _template(repo: pygit2.Repository, template: str) -> tuple[pygit2.Commit, list[Any], Any]:
    """The template run's tip, its last iteration's stage commits (oldest first) and the
    record commit of its root run."""
    tip = repo.branches.local[naming.branch_name(template)].peel(pygit2.Commit)
    stages: list[pygit2.Commit] = []
    last = _trailers(tip).iteration
    commit = tip
    while True:
        t = _trailers(commit)
        if t is not None and t.iteration == last and t.step is not None:
            stages.insert(0, commit)
        elif t is not None and t.iteration is None:
            return tip, stages, commit
        commit = commit.parents[0]


def _record(repo: pygit2.Repository, tree: pygit2.Tree, **changes: Any) -> bytes:
    header, _, body = (_blob(repo, tree, RECORD) or b"").decode().partition("\n")
    record = yaml.safe_load(body) or {}
    record.update(changes)
    return (header + "\n" + yaml.safe_dump(record, sort_keys=True,
                                           default_flow_style=False)).encode()


def _iterations(repo: pygit2.Repository, stages: list[Any], name: str, record: bytes,
                first: int, count: int, head: str, when: int, total: int) -> tuple[str, int]:
    """`count` iterations from `first` on top of `head`, from the template's stage commits."""
    metrics = _metric_paths(repo, stages[-1].tree)
    params = (_blob(repo, stages[-1].tree, naming.PARAMS_FILE) or b"").decode()
    for it in range(first, first + count):
        params_it = re.sub(r"(?m)^iteration: .*$", f"iteration: {it}", params).encode()
        for stage_commit in stages:
            when += 1
            changes = {RECORD: record, naming.PARAMS_FILE: params_it}
            for path in metrics:
                text = _blob(repo, stage_commit.tree, path)
                if text is not None:
                    factor = 1.0 + (it + 1) / (total + 1)
                    changes[path] = json.dumps(_perturb(json.loads(text), factor)).encode()
            t = _trailers(stage_commit)
            message = naming.format_checkpoint_message(name, it, t.step, "synthetic")
            head = _commit(repo, stage_commit.tree, changes, message, head, when)
    return head, when


def _commit(repo: pygit2.Repository, tree: pygit2.Tree, changes: dict[str, bytes],
            message: str, parent_id: str, when: int) -> str:
    index = pygit2.Index()
    index.read_tree(tree)
    for path, data in changes.items():
        index.add(pygit2.IndexEntry(path, repo.create_blob(data), pygit2.enums.FileMode.BLOB))
    sig = pygit2.Signature("mlfork bench", "bench@mlfork.invalid", when, 0)
    return str(repo.create_commit(None, sig, sig, message, index.write_tree(repo),
                                  [parent_id]))


def extend(root: Path, template: str, run: str, count: int) -> str:
    """Add `count` iterations to run `run` (a root run or a fork), made from `template`'s
    last iteration; its budget grows to match. Returns the new tip."""
    repo = pygit2.Repository(str(root))
    _, stages, _ = _template(repo, template)
    tip = repo.branches.local[naming.branch_name(run)].peel(pygit2.Commit)
    t = _trailers(tip)
    commit, first = tip, 0
    while commit is not None:  # the run's position: its newest checkpoint
        t = _trailers(commit)
        if t is not None and t.iteration is not None and t.step is not None:
            first = t.iteration + 1
            break
        commit = commit.parents[0] if commit.parents else None
    total = first + count
    record = _record(repo, tip.tree, iterations=total)
    head, _ = _iterations(repo, stages, run, record, first, count, str(tip.id),
                          max(tip.commit_time, stages[-1].commit_time), total)
    repo.references.create(f"refs/heads/{naming.branch_name(run)}", head, force=True)
    return head


def synthesize(root: Path, template: str, name: str, iterations: int,
               parent: str | None = None) -> str:
    """Write run `name` with `iterations` iterations from run `template`'s last one; its
    first commit's parent is `parent` (default: the template's record commit's parent,
    i.e. where the template started). Returns the new tip."""
    repo = pygit2.Repository(str(root))
    tip, stages, record_commit = _template(repo, template)
    record = _record(repo, tip.tree, name=name, iterations=iterations)
    base = parent or str(record_commit.parents[0].id)
    head = _commit(repo, record_commit.tree, {RECORD: record},
                   naming.format_record_message(name, "start run", f"iterations: {iterations}"),
                   base, tip.commit_time)
    head, _ = _iterations(repo, stages, name, record, 0, iterations, head, tip.commit_time,
                          iterations)
    repo.references.create(f"refs/heads/{naming.branch_name(name)}", head, force=True)
    return head
