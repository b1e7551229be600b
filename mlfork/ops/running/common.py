"""What the operations that start, fork and continue runs share: progress events, names,
option checks and the run record's first commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from mlfork import naming
from mlfork.errors import InvalidRunName, RunNameTaken, UsageError
from mlfork.models import Policy, RunRecord
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project, record_text

EventKind = Literal["iteration", "stage_start", "stage_end", "iteration_end", "warning", "note"]


@dataclass
class Event:
    kind: EventKind
    run: str
    iteration: int | None = None
    budget: int | None = None
    stage: str | None = None
    ran: bool | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


Progress = Callable[[Event], None]


def quiet(_: Event) -> None:
    """A Progress that shows nothing."""


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def next_free_name(project: Project, stem: str = "run") -> str:
    taken = set(lineage.visible_runs(project)) | {
        naming.run_from_ref(b) for b in project.git.branches(naming.BRANCH_PREFIX)
    }
    k = 1
    while f"{stem}-{k}" in taken:
        k += 1
    return f"{stem}-{k}"


def check_new_name(project: Project, name: str) -> None:
    if not naming.is_valid_run_name(name):
        raise InvalidRunName(name)
    if project.git.resolve_branch(naming.branch_name(name)) is not None:
        raise RunNameTaken(name)
    if name in lineage.remote_runs(project):  # a teammate's: pushing would clash
        raise RunNameTaken(name)


def check_positive(flag: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{flag} must be positive, got {value:g}")


def runtime_options(
    config: dict[str, Any], timeout: float | None, stage_timeout: float | None
) -> dict[str, Any]:
    """The options a run record keeps: given ones, else the config's."""
    return {
        "timeout": timeout if timeout is not None else config.get("timeout"),
        "stage_timeout": stage_timeout if stage_timeout is not None else config.get(
            "stage_timeout"
        ),
    }


def dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def int_or(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def record_commit(
    project: Project,
    record: RunRecord,
    parent: str,
    action: str,
    signature: Any,
    *,
    origin: str = "",
    files: dict[str, bytes] | None = None,
    merged: Sequence[str] = (),
) -> str:
    """The commit that starts a run, whichever command starts it (`run`, `branch`, `replay
    --launch`): the run record (and a fork's config files) on top of `parent`, written
    straight into the object database. No ref points at it until the caller creates the
    run's branch there, so a failure leaves nothing behind. The message says what happened
    (`origin`, e.g. "forked from base at iteration 2 evaluate"), the budget, and the run's
    own overrides."""
    lines = [origin] if origin else []
    lines.append(f"iterations: {record.iterations}")
    if record.own_overrides:
        lines.append("overrides: " + " ".join(record.own_overrides))
    return project.git.commit_object(
        parent,
        {naming.RUN_RECORD: record_text(record).encode(), **(files or {})},
        naming.format_record_message(record.name, action, "\n".join(lines)),
        signature=signature,
        merged=merged,
    )


MANAGED_KEYS = {
    "iteration": "the number of the iteration, which mlfork sets for each one",
}


def check_tags(tags: Sequence[str]) -> None:
    """Refuse (before anything is written) a tag MLflow would refuse, or one that would
    overwrite a tag of MLflow's or mlfork's own."""
    from mlfork.adapters.tracking.store import TAG_VALUE_LIMIT, key_problem

    for tag in tags:
        key, _, value = tag.partition("=")
        problem = key_problem(key)
        if problem is not None:
            problem = "its key " + problem.removeprefix("it ")
        elif key.startswith(("mlflow.", "mlfork.")) and key not in naming.OWN_RECORD_TAGS:
            problem = "keys starting with 'mlflow.' or 'mlfork.' are MLflow's and mlfork's own"
        elif len(value) > TAG_VALUE_LIMIT:
            problem = f"its value is longer than MLflow keeps ({TAG_VALUE_LIMIT} characters)"
        if problem is not None:
            shown = tag if len(tag) <= 60 else tag[:57] + "..."
            raise UsageError(f"tag {shown!r} is invalid: {problem} (use --tag KEY or KEY=VALUE)")


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse overrides of what mlfork manages: the `iteration` key, and the policy."""
    from mlfork.adapters import hydra
    from mlfork.errors import OverrideError

    for ov in hydra.parse_overrides(list(overrides)):
        if ov.file is not None:
            continue
        if ov.key in MANAGED_KEYS:
            raise OverrideError(ov.text, f"'{ov.key}' is {MANAGED_KEYS[ov.key]}: leave it out")
        if ov.key == "mlfork" or ov.key.startswith("mlfork."):
            raise OverrideError(
                ov.text, "the 'mlfork' policy is part of the project, not of a run: change it in"
                " a commit"
            )


def handoff_files(policy: Policy) -> tuple[str, ...]:
    """The files of the checkpoint hand-off mlfork manages (the resume input, its .dvc)."""
    if policy.checkpoint_output and policy.checkpoint_resume:
        return (policy.checkpoint_resume, policy.checkpoint_resume + ".dvc")
    return ()


def gitignore_of(path: str) -> str:
    """The .gitignore DVC keeps for a cached output at `path`."""
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    return f"{folder}/.gitignore" if folder else ".gitignore"


def noter(progress: Progress, name: str) -> Callable[[str], None]:
    """A callback that reports notes of run `name` as progress events."""
    return lambda message: progress(Event("note", name, message=message))
