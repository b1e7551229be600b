"""What a pipeline does with its params: which keys a stage depends on (an override of any
other key changes nothing DVC reruns), whether the pipeline iterates at all, and a real key
of the project to suggest in a hint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlfork import naming
from mlfork.models import Pipeline, Policy


def touches(a: str, b: str) -> bool:
    """Does a change of dotted key `a` reach key `b` (the same key, under it, or above)?"""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def depends_on(pipeline: Pipeline, file: str, key: str) -> bool:
    """Does a stage of the pipeline depend on `key` of params file `file`?"""
    return any(not keys or any(touches(key, k) for k in keys)
               for keys in pipeline.tracked_params(file))


def untracked_overrides(pipeline: Pipeline, overrides: Sequence[str]) -> list[str]:
    """The overrides (as written) of keys no stage depends on: DVC reruns nothing for
    them. Deletions and keys mlfork itself manages are not reported."""
    from mlfork.adapters import hydra

    out = []
    for ov in hydra.parse_overrides(list(overrides)):
        if ov.kind == "delete" or ov.key in ("iteration", "iterations"):
            continue
        file = ov.file or naming.PARAMS_FILE
        if not depends_on(pipeline, file, ov.key):
            out.append(ov.text)
    return out


def tracked_keys(pipeline: Pipeline, file: str = naming.PARAMS_FILE) -> list[str]:
    keys: list[str] = []
    for tracked in pipeline.tracked_params(file):
        keys += [k for k in tracked if k not in keys]
    return keys


def iterates(pipeline: Pipeline, policy: Policy, config: dict[str, Any]) -> bool:
    """Does an iteration differ from the one before? Only with a checkpoint hand-off, or a
    stage that depends on the `iteration` key mlfork sets in params.yaml."""
    if policy.checkpoint_output and policy.checkpoint_resume:
        return True
    return "iteration" in config and depends_on(pipeline, naming.PARAMS_FILE, "iteration")


NOT_ITERATING = (
    "this pipeline does not iterate: no stage depends on 'iteration' and the policy names"
    " no checkpoint hand-off, so every iteration after the first will be up to date"
    " (README: 'Using mlfork on your DVC project' shows how to add a hand-off)"
)


def suggest(pipeline: Pipeline, config: dict[str, Any]) -> str | None:
    """An override of a real key of the project for a "next:" hint: a learning rate if
    a stage tracks one, else the first numeric key a stage tracks; None if there is none."""
    from mlfork.ops.kernel.project import dotted_get

    candidates: list[tuple[str, Any]] = []
    for key in tracked_keys(pipeline):
        value = dotted_get(config, key)
        if isinstance(value, dict):
            candidates += [(f"{key}.{k}", v) for k, v in _flat(value).items()]
        else:
            candidates.append((key, value))
    numeric = [
        (k, v) for k, v in candidates
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        and k.split(".")[-1] not in ("iteration", "iterations", "seed")
    ]
    if not numeric:
        return None
    lr = [kv for kv in numeric if "lr" in kv[0].split(".")[-1] or "learning" in kv[0]]
    key, value = (lr or numeric)[0]
    new = value / 2 if isinstance(value, float) else value + 1
    return f"{key}={new:g}" if isinstance(new, float) else f"{key}={new}"


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, name + "."))
        else:
            out[name] = v
    return out


RUN_CACHE_BLIND = ("size", "nfiles")


def side_effect_files(pipeline: Pipeline) -> list[str]:
    """Top-level metrics and plots that are no stage's output: a stage writes them as a
    side effect (dvclive does), so DVC's run cache, which restores only outputs, cannot
    bring them back; mlfork then runs stages without it."""
    outs = [o.path for o in pipeline.outs()]
    return [p for p in (*pipeline.top_metrics, *pipeline.top_plots)
            if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in outs)]


def run_cache_blind(pipeline: Pipeline, data: dict[str, dict[str, Any]]) -> set[str]:
    """Stages DVC's run cache cannot tell apart by their params: its key leaves out every
    mapping key named `size` or `nfiles` (they are file metadata to it), params included,
    so a stage that reads `size: 5` would be "restored" from a run with `size: 3`. mlfork
    runs these stages without the run cache. `data`: params file -> its parsed values."""
    from mlfork.ops.kernel.project import dotted_get

    def blind(key: str, value: Any) -> bool:
        if key.split(".")[-1] in RUN_CACHE_BLIND:
            return True
        if isinstance(value, dict):
            return any(blind(str(k), v) for k, v in value.items())
        return False

    out = set()
    for stage in pipeline.stages:
        for file, keys in stage.params:
            values = data.get(file, {})
            if not keys:
                if any(blind(str(k), v) for k, v in values.items()):
                    out.add(stage.name)
            elif any(blind(k, dotted_get(values, k)) for k in keys):
                out.add(stage.name)
    return out
