"""`mlfork merge RUN... --name NAME`: a model soup. The runs' checkpoints (their latest
end-of-iteration ones, or `RUN@N`), saved with mlfork.state, are averaged into a new run.

The new run is a fork of the first source at its checkpoint whose first commit is a git merge
commit: its parents are every source's checkpoint, its dvc.lock names the averaged
checkpoint as the pipeline's checkpoint output (so `mlfork resume NAME` trains on from the
soup, and `dvc checkout` on its branch brings the soup), and its run record lists the
sources and their weights (shown by `tree`, the report and the MLflow note).

Averaged: the floating-point arrays and tensors of one object of the states (`model` unless
told otherwise), or only those whose names match `--only` (adapters, say); everything else
(the other tensors of the object, the optimizer, scheduler, generators and counters) is the
first source's. Refused with nothing written: fewer than two sources, a source named twice,
locked keys that differ, a checkpoint that is not an mlfork.state file, and model states
whose names, shapes or dtypes differ (the first mismatch named).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfork import naming, state
from mlfork.errors import MergeMismatch, MissingData, UsageError
from mlfork.models import Checkpoint
from mlfork.nested import dump_yaml, flatten, load_yaml
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import MISSING, Project
from mlfork.ops.mirroring import background
from mlfork.ops.running import fork
from mlfork.ops.running.common import Progress, check_new_name, quiet
from mlfork.ops.running.inherit import pick_checkpoint

STRATEGIES = ("mean", "weighted")
LOCK = "dvc.lock"


@dataclass
class MergeResult:
    name: str
    branch: str
    commit: str
    sources: list[dict[str, Any]]
    strategy: str
    object: str
    only: str | None
    averaged: list[str] = field(default_factory=list)  # the names of the averaged tensors
    kept: list[str] = field(default_factory=list)  # the first source's, not averaged
    md5: str = ""  # the merged checkpoint's DVC object
    switched: bool = False
    tracking: str = ""
    run: Any = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["run"] = self.run.to_dict() if self.run is not None else None
        return data


def parse_source(text: str) -> tuple[str, int | None]:
    """`RUN` (its latest completed iteration) or `RUN@N`."""
    run, at, it = text.rpartition("@")
    if not at:
        return text, None
    if not it.isdigit():
        raise UsageError(f"'{text}': give RUN or RUN@ITERATION (a whole number after '@')")
    return run, int(it)


def weights_of(strategy: str, weights: Sequence[float] | None, n: int) -> list[float]:
    """The weights, summing to 1: equal for `mean`, the given ones for `weighted`."""
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")
    if strategy == "mean":
        if weights:
            raise UsageError("--weights goes with --strategy weighted (mean weighs all alike)")
        return [1.0 / n] * n
    if not weights:
        raise UsageError("--strategy weighted needs --weights w1,w2,... (one per run)")
    if len(weights) != n:
        raise UsageError(f"--weights has {len(weights)} value(s) for {n} run(s): give one per run")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError("--weights must be 0 or more, and not all 0")
    total = float(sum(weights))
    return [w / total for w in weights]


def merge(
    path: str | os.PathLike[str] = ".",
    sources: Sequence[str] = (),
    *,
    name: str,
    strategy: str = "mean",
    weights: Sequence[float] | None = None,
    only: str | None = None,
    obj: str = "model",
    iterations: int | None = None,
    tags: Sequence[str] = (),
    switch: bool = False,
    run: bool = False,
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    wait: bool | None = None,
) -> MergeResult:
    """Average the checkpoints of `sources` into the new run `name` (see the module)."""
    started = time.perf_counter()
    if len(sources) < 2:
        raise UsageError("merge needs two runs or more: mlfork merge RUN RUN... --name NAME")
    w = weights_of(strategy, weights, len(sources))
    project = Project.open(path)
    try:
        with project.lock(name, "merge") as lock:
            check_new_name(project, name)  # before any checkpoint is read
            picked = [_pick(project, text) for text in sources]
            seen: set[str] = set()
            for (_, cp), text in zip(picked, sources, strict=True):
                if cp.commit in seen:
                    raise UsageError(f"'{text}' names a checkpoint given already: name each once")
                seen.add(cp.commit)
            first = picked[0][1]
            policy = project.policy(first.commit)
            if not (policy.checkpoint_output and policy.checkpoint_resume):
                raise UsageError(
                    "merge averages the pipeline's checkpoints: the policy names none (set"
                    " mlfork.checkpoint.output and .resume)"
                )
            _check_locked(project, picked, policy.locked)
            fetched: list[Path] = []  # objects brought from the DVC remote for the merge
            try:
                result, md5, averaged, kept, record = _merge(
                    project, lock, picked, policy, w, strategy, obj, only, name, iterations,
                    tags, switch, run, argv, progress, wait, started, fetched)
            except BaseException:  # refused or failed: the DVC cache as it was
                for path in fetched:
                    path.unlink(missing_ok=True)
                raise
            return MergeResult(
                name=name, branch=result.branch, commit=result.commit,
                sources=record.merged, strategy=strategy, object=obj, only=only,
                averaged=averaged, kept=kept, md5=md5, switched=result.switched,
                tracking=result.tracking, run=result.run,
            )
    finally:
        project.close()


def _merge(
    project: Project, lock: Any, picked: list[tuple[str, Checkpoint]], policy: Any,
    w: list[float], strategy: str, obj: str, only: str | None, name: str,
    iterations: int | None, tags: Sequence[str], switch: bool, run: bool,
    argv: Sequence[str], progress: Progress, wait: bool | None, started: float,
    fetched: list[Path],
) -> tuple[Any, str, list[str], list[str], Any]:
    """The merge itself, once the sources are picked and checked: the soup, the fork's
    plan made a merge, its commit and branch (and switch, run)."""
    first = picked[0][1]
    files = [_checkpoint(project, run_name, cp, policy.checkpoint_output, fetched)
             for run_name, cp in picked]
    labels = [f"{r}@{cp.iteration}" for r, cp in picked]
    data, averaged, kept = average(files, labels, w, obj, only)
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's object id, not security
    plan = fork._plan(
        project, lock, source=picked[0][0], from_iteration=first.iteration,
        from_step=None, name=name, iterations=iterations if iterations is not None
        else 0, tags=tags, inherit_tags=False, timeout=None, stage_timeout=None,
        switch=switch, run=run, overrides=(), argv=argv, progress=progress,
    )
    plan.record.merged = [
        {"run": r, "iteration": cp.iteration, "commit": cp.commit, "weight": weight}
        for (r, cp), weight in zip(picked, w, strict=True)
    ]
    plan.record.merge = {"strategy": strategy, "object": obj, "only": only}
    lockfile = project.lock_of(first.commit, policy.checkpoint_output) or LOCK
    folder = lockfile.rsplit("/", 1)[0] + "/" if "/" in lockfile else ""
    plan.files[lockfile] = _lock_with(
        project.git.read(first.commit, lockfile),
        policy.checkpoint_output[len(folder):], md5, len(data))
    plan.merged = [cp.commit for _, cp in picked[1:]]
    shown = " + ".join(f"{lab}×{weight:g}" for lab, weight in zip(labels, w, strict=True))
    plan.action = f"merge {' '.join(labels)}"
    plan.origin = f"merged ({strategy}) from {shown}"
    added = project.dvc.put_object(data, md5)
    try:
        result = fork._write(project, lock, plan, started, switch=switch, run=run,
                             argv=argv, progress=progress, echo=False, timings=None,
                             wait=background.waits(wait))
    except BaseException:
        if added is not None:
            added.unlink(missing_ok=True)
        raise
    return result, md5, averaged, kept, plan.record


def _pick(project: Project, text: str) -> tuple[str, Checkpoint]:
    """A source's end-of-iteration checkpoint: `RUN@N`, else its latest one."""
    ref, iteration = parse_source(text)
    run = lineage.resolve_run(project, ref)
    tip = lineage.tip(project, run)
    rec = lineage.record(project, run, tip)
    cps = lineage.checkpoints(project, tip)
    if iteration is None:
        ends = lineage.end_of_iteration(cps, rec.stages)
        if not ends:
            return run, pick_checkpoint(cps, rec.stages, run, None, None, None)  # NotFound
        iteration = max(ends)
    return run, pick_checkpoint(cps, rec.stages, run, iteration, None, None)


def _check_locked(project: Project, picked: list[tuple[str, Checkpoint]],
                  locked: Sequence[str]) -> None:
    """MergeMismatch naming the first locked key whose value differs between the sources:
    a key of params.yaml by its full dotted name, one of another params file
    (`data.yaml:source`) as the policy names it."""
    labels = [f"{r}@{cp.iteration}" for r, cp in picked]
    configs = [flatten(project.params_at(cp.commit)) for _, cp in picked]
    other_files = [k for k in locked if naming.split_params_file(k)[0] is not None]
    for i in range(1, len(picked)):
        first, config = configs[0], configs[i]
        for key in sorted(set(first) | set(config)):
            if any(key == k or key.startswith(k + ".") for k in locked) \
                    and first.get(key) != config.get(key):
                _locked_differs(key, first.get(key), labels[0], config.get(key), labels[i])
        for key in other_files:
            a, b = (project.locked_value_at(picked[j][1].commit, key) for j in (0, i))
            if a != b:
                _locked_differs(key, None if a is MISSING else a, labels[0],
                                None if b is MISSING else b, labels[i])


def _locked_differs(key: str, a: Any, label_a: str, b: Any, label_b: str) -> None:
    raise MergeMismatch(
        f"locked key '{key}' differs: {a!r} in {label_a}, {b!r} in {label_b}; runs on other"
        " data or another validation metric cannot be merged"
    )


def _checkpoint(project: Project, run: str, cp: Checkpoint, output: str,
                fetched: list[Path]) -> bytes:
    entry = project.outputs_at(cp.commit).get(output)
    md5 = str((entry or {}).get("md5") or "")
    if not md5 or md5.endswith(".dir"):
        raise MergeMismatch(
            f"the checkpoint of {run}@{cp.iteration} ({output}) is not one file in dvc.lock:"
            " merge averages checkpoints saved with mlfork.state"
        )
    path = project.dvc.cache_path(md5)
    if not path.exists() and project.dvc.default_remote() is not None:
        from mlfork.adapters.dvc_remote import fetch_objects

        fetch_objects(project.dvc, [(md5, str((entry or {}).get("hash") or "md5"))])
        if path.exists():
            fetched.append(path)
    try:
        return path.read_bytes()
    except OSError:
        raise MissingData(
            f"the checkpoint of {run}@{cp.iteration} ({output}, md5 {md5[:10]}) is not in this"
            f" DVC cache and no DVC remote is configured: add the project's remote ('dvc remote"
            f" add -d NAME URL'), or 'git switch {naming.branch_name(run)} && dvc pull {output}'"
        ) from None


def average(files: Sequence[bytes], labels: Sequence[str], weights: Sequence[float],
            obj: str = "model", only: str | None = None) -> tuple[bytes, list[str], list[str]]:
    """The averaged state file's bytes, the names averaged, the names kept (the first
    source's). MergeMismatch names the first difference between the states."""
    import io

    import numpy as np

    states = []
    for data, label in zip(files, labels, strict=True):
        try:
            states.append(state.read_raw(io.BytesIO(data)))
        except state.StateError:
            raise MergeMismatch(
                f"the checkpoint of {label} is not an mlfork.state file: merge averages"
                " checkpoints saved with mlfork.state.save"
            ) from None
    trees = [t for t, _ in states]
    if obj not in trees[0]["objects"]:
        known = ", ".join(sorted(trees[0]["objects"])) or "none"
        raise MergeMismatch(f"the state of {labels[0]} holds no object '{obj}' (objects:"
                            f" {known}): name the model's with --object")
    leaves = []
    for tree, label in zip(trees, labels, strict=True):
        if obj not in tree["objects"]:
            raise MergeMismatch(f"the state of {label} holds no object '{obj}'")
        leaves.append(state.leaves(tree["objects"][obj]))
    names = [n for n, _ in leaves[0]]
    for found, label in zip(leaves[1:], labels[1:], strict=True):
        other = [n for n, _ in found]
        if other != names:
            missing = [n for n in names if n not in other]
            extra = [n for n in other if n not in names]
            what = (f"'{missing[0]}' is in {labels[0]}, not in {label}" if missing else
                    f"'{extra[0]}' is in {label}, not in {labels[0]}" if extra else
                    f"the tensors come in another order in {label}")
            raise MergeMismatch(f"the '{obj}' states differ: {what}")
    arrays0 = states[0][1]
    out = list(arrays0)
    averaged, kept = [], []
    for k, (leaf_name, ref) in enumerate(leaves[0]):
        idx = _index(ref)
        a0 = arrays0[idx]
        parts = []
        for (_, arrays), leaf, label in zip(states, leaves, labels, strict=True):
            r = leaf[k][1]
            a = arrays[_index(r)]
            if a.shape != a0.shape or a.dtype != a0.dtype or r.get("dtype") != ref.get("dtype"):
                raise MergeMismatch(
                    f"the '{obj}' states differ at '{leaf_name}': {_shape(a0, ref)} in"
                    f" {labels[0]}, {_shape(a, r)} in {label}"
                )
            parts.append(a)
        floating = a0.dtype.kind == "f" and ref.get("dtype") != "bfloat16"
        if not floating or (only is not None and not fnmatch.fnmatchcase(leaf_name, only)):
            kept.append(leaf_name)
            continue
        total = np.zeros(a0.shape, dtype=np.float64)
        for a, w in zip(parts, weights, strict=True):
            total += w * a.astype(np.float64)
        out[idx] = total.astype(a0.dtype)
        averaged.append(leaf_name)
    if only is not None and not averaged:
        raise UsageError(f"--only '{only}' matches no floating-point tensor of '{obj}'"
                         f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    return state.to_bytes(trees[0], out), averaged, kept


def _index(ref: dict[str, Any]) -> int:
    return int(ref["__array__"] if "__array__" in ref else ref["__tensor__"])


def _shape(array: Any, ref: dict[str, Any]) -> str:
    return f"shape {tuple(array.shape)} {ref.get('dtype') or array.dtype}"


def _lock_with(text: bytes | None, output: str, md5: str, size: int) -> bytes:
    """dvc.lock with the checkpoint output's entry naming the merged object."""
    data = load_yaml(text) or {}
    for stage in (data.get("stages") or {}).values():
        for item in (stage or {}).get("outs") or []:
            if isinstance(item, dict) and item.get("path") == output:
                item["md5"] = md5
                item["size"] = size
                item.pop("hash", None)
                item["hash"] = "md5"
    return dump_yaml(data).encode("utf-8")
