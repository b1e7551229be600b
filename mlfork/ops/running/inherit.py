"""What a fork inherits from its parent: the checkpoint it starts at, its overrides (the
parent's, its own on top, relative keys counted from the fork point, keys that are not
inherited dropped), and the locked keys it may not change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlfork import naming
from mlfork.errors import LockedKeyError, NotFound, OverrideError, UsageError
from mlfork.models import Checkpoint
from mlfork.ops.kernel.project import (
    MISSING,
    Composed,
    dotted_get,
)


def pick_checkpoint(
    cps: list[Checkpoint],
    stages: list[str],
    source: str,
    from_iteration: int | None,
    from_step: str | None,
    latest: Checkpoint | None,
) -> Checkpoint:
    """The checkpoint the flags name (see `mlfork branch --help`)."""
    by_key = {(c.iteration, c.step): c for c in cps}
    if from_iteration is not None and from_iteration < 0:
        raise UsageError(f"--from-iteration must be 0 or more, got {from_iteration}")
    if from_step is not None and from_step not in stages:
        raise NotFound(
            f"unknown stage '{from_step}': the stages of '{source}' are {', '.join(stages)}"
        )
    done = sorted({c.iteration for c in cps if c.step == stages[-1]})
    if from_iteration is None and from_step is None:
        if latest is None:
            raise NotFound(f"run '{source}' has no checkpoint yet: run 'mlfork resume {source}'")
        return latest
    if from_step is None and from_iteration is not None:
        found = by_key.get((from_iteration, stages[-1]))
        if found is None:
            span = f"0 to {done[-1]}" if done else "none yet"
            raise NotFound(
                f"iteration {from_iteration} of '{source}' is not completed (completed: {span});"
                " pick one of those, or --from-step for a stage inside it"
            )
        return found
    if from_iteration is None and from_step is not None:
        ran = [c for c in cps if c.step == from_step]
        if not ran:
            raise NotFound(f"stage '{from_step}' never ran in '{source}'")
        return max(ran, key=lambda c: c.iteration)
    found = by_key.get((from_iteration or 0, from_step or ""))
    if found is None:
        raise NotFound(
            f"stage '{from_step}' did not run in iteration {from_iteration} of '{source}'"
        )
    return found


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _touches(override_key: str, key: str) -> bool:
    """Does an override of `override_key` reach `key` (the key itself, under it, or above)?"""
    return (
        override_key == key
        or override_key.startswith(key + ".")
        or override_key.startswith(key + "/")
        or key.startswith(override_key + ".")
    )


def resolve_overrides(
    inherited: Sequence[str],
    own: Sequence[str],
    relative: Sequence[str],
    not_inherited: Sequence[str],
    completed: int,
    groups: Sequence[str] = (),
) -> tuple[list[str], list[str], int | None]:
    """(cumulative overrides, the fork's own overrides as recorded, iterations from an
    `iterations=K` override). Relative keys count from the fork point; not-inherited keys
    are dropped from the parent's list, and so are the parent's overrides inside a config
    group the fork switches (`model=mlp` drops an inherited `model.lr=...`: it was set for
    the old group's model)."""
    from mlfork.adapters import hydra

    parsed = hydra.parse_overrides(list(own))
    switched = {ov.key for ov in parsed
                if ov.file is None and ov.key in groups and ov.kind != "delete"}
    dropped = (*not_inherited, *switched)
    kept = [o for o in inherited if not any(_touches(_key_of(o), k) for k in dropped)]
    own_out: list[str] = []
    iterations = None
    for ov in parsed:
        if ov.file is None and ov.key in relative and ov.kind != "delete":
            value = (ov.value_text or "").strip()
            if not value.isdigit():
                raise OverrideError(
                    ov.text,
                    f"'{ov.key}' counts iterations from the fork point: give a non-negative"
                    " integer",
                )
            if ov.key == "iterations":
                iterations = int(value)
                continue
            own_out.append(ov.with_value(str(completed + int(value))))
        else:
            own_out.append(ov.text)
    return kept + own_out, own_out, iterations


def locked_value(composed: Composed, key: str) -> Any:
    """The value of a locked key in a composed config: `dataset.name`, or a key of another
    params file in DVC's grammar (`data.yaml:source`)."""
    file, dotted = naming.split_params_file(key)
    data = composed.data.get(file or naming.PARAMS_FILE, {})
    return dotted_get(data, dotted, MISSING)


def check_locked(
    parent: Composed, fork: Composed, locked: Sequence[str], own: Sequence[str]
) -> None:
    """LockedKeyError naming the override that changes a locked key (dataset, metric)."""
    for key in locked:
        if locked_value(parent, key) != locked_value(fork, key):
            culprit = next((o for o in own if _touches(_key_of(o), key)), " ".join(own))
            raise LockedKeyError(key, culprit)
