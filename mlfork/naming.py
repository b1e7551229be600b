"""Every name mlfork writes, spelled once, each with a format/parse pair that round-trips."""

from __future__ import annotations

import re
from dataclasses import dataclass

BRANCH_PREFIX = "mlfork/"
REF_PREFIX = "refs/heads/" + BRANCH_PREFIX
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Files, relative to the project root.
MLFORK_DIR = ".mlfork"
RUN_RECORD = ".mlfork/run.yaml"
POLICY_FILE = ".mlfork/config.yaml"  # the policy of a project without conf/ (committed)
REPLAY_MANIFEST = ".mlfork/replay.json"
LOCAL_DIR = ".mlfork/local"
TRACKING_DB = ".mlfork/local/mlflow.db"
LOCK_DIR = "mlfork"  # in the git directory (of the worktree): the project locks
OUTBOX_DIR = ".mlfork/local/outbox"
# the background delivery of the outbox: its lock (one at a time) and its log
SYNC_LOCK = ".mlfork/local/sync.lock"
SYNC_LOG = ".mlfork/local/sync.log"
STATE_DIR = ".mlfork/local/state"
LOGS_DIR = ".mlfork/local/logs"
GUARD_DIR = ".mlfork/local/guard"  # what a command backs up until its first checkpoint
DISPLACED_DIR = ".mlfork/local/displaced"  # DVC outputs moved out of a switch's way
STRAYS_FILE = ".mlfork/local/strays.json"  # untracked files the pipeline's stages wrote
PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
CONF_NAME = "config"

# Environment variables mlfork gives a stage.
ENV_RUN = "MLFORK_RUN"  # the run the stage belongs to
ENV_STAGE = "MLFORK_STAGE"  # marks the stage's processes (the watchdog signals them alone)

ENV_FAULT = "MLFORK_FAULT"  # tests only: a point where mlfork kills itself (faults.py)

# Commit trailers.
TRAILER_RUN = "Mlfork-Run"
TRAILER_ITERATION = "Mlfork-Iteration"
TRAILER_STEP = "Mlfork-Step"

# MLflow tags.
TAG_RUN = "mlfork.run"
TAG_BRANCH = "mlfork.branch"
TAG_PARENT_RUN = "mlfork.parent_run"
TAG_FORK_ITERATION = "mlfork.fork_iteration"
TAG_FORK_STEP = "mlfork.fork_step"
TAG_FORK_COMMIT = "mlfork.fork_commit"
TAG_ROOT_RUN = "mlfork.root_run"
TAG_DEPTH = "mlfork.depth"
TAG_INHERITED_UNTIL = "mlfork.inherited_until"
# the last global step of the per-step series a fork inherits (-1: none)
TAG_STEPS_INHERITED_UNTIL = "mlfork.steps_inherited_until"
TAG_MERGED_FROM = "mlfork.merged_from"  # a merged run's sources and weights (JSON)
TAG_LINEAGE = "mlfork.lineage"
TAG_STATUS = "mlfork.status"
TAG_USER_PREFIX = "mlfork.tag."
TAG_MLFLOW_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_BRANCH = "mlflow.source.git.branch"
TAG_NOTE = "mlflow.note.content"
TAG_RUN_NAME = "mlflow.runName"
TAG_USER = "mlflow.user"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_GIT_REPO_URL = "mlflow.source.git.repoURL"
TAG_OVERRIDES = "mlfork.overrides"
TAG_BUDGET = "mlfork.budget"
# what the last complete write from git delivered: {"commit", "status", "step", "ts"}
TAG_MIRRORED = "mlfork.mirrored"
# run-record tags mlfork itself gives the runs it makes (mirrored as MLflow tags)
TAG_REPLAY_OF = "mlfork.replay_of"
TAG_REPLAY_ITERATION = "mlfork.replay_iteration"
TAG_VERIFY_OF = "mlfork.verify_of"
OWN_RECORD_TAGS = (TAG_REPLAY_OF, TAG_REPLAY_ITERATION, TAG_VERIFY_OF)


def branch_name(run: str) -> str:
    """`base` -> `mlfork/base`."""
    return BRANCH_PREFIX + run


def ref_name(run: str) -> str:
    """`base` -> `refs/heads/mlfork/base`."""
    return REF_PREFIX + run


def run_from_ref(ref: str) -> str | None:
    """`refs/heads/mlfork/base` or `mlfork/base` -> `base`; anything else -> None."""
    for prefix in (REF_PREFIX, BRANCH_PREFIX):
        if ref.startswith(prefix):
            name = ref[len(prefix) :]
            return name if is_valid_run_name(name) else None
    return None


def is_valid_run_name(name: str) -> bool:
    return RUN_NAME_RE.fullmatch(name) is not None and ".." not in name and not name.endswith(
        (".", ".lock")
    )


@dataclass(frozen=True)
class Trailers:
    """The trailers of an mlfork commit. `iteration`/`step` are None on a run-record commit."""

    run: str
    iteration: int | None = None
    step: str | None = None

    @property
    def is_checkpoint(self) -> bool:
        return self.iteration is not None and self.step is not None


def format_checkpoint_message(run: str, iteration: int, step: str, body: str = "") -> str:
    subject = f"{run}: iteration {iteration} {step}"
    text = subject + ("\n\n" + body.strip() if body.strip() else "")
    return text + "\n\n" + format_trailers(Trailers(run, iteration, step))


def format_record_message(run: str, subject: str, body: str = "") -> str:
    text = f"{run}: {subject}" + ("\n\n" + body.strip() if body.strip() else "")
    return text + "\n\n" + format_trailers(Trailers(run))


def format_trailers(t: Trailers) -> str:
    lines = [f"{TRAILER_RUN}: {t.run}"]
    if t.iteration is not None:
        lines.append(f"{TRAILER_ITERATION}: {t.iteration}")
    if t.step is not None:
        lines.append(f"{TRAILER_STEP}: {t.step}")
    return "\n".join(lines) + "\n"


_TRAILER_LINE = re.compile(r"^(Mlfork-[A-Za-z]+):\s*(.*?)\s*$")


def parse_trailers(message: str) -> Trailers | None:
    """Trailers from the last paragraph of a commit message, or None for a non-mlfork commit."""
    paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        return None
    found: dict[str, str] = {}
    for line in paragraphs[-1].splitlines():
        m = _TRAILER_LINE.match(line)
        if m:
            found[m.group(1)] = m.group(2)
    run = found.get(TRAILER_RUN)
    if not run:
        return None
    iteration = found.get(TRAILER_ITERATION)
    try:
        it = int(iteration) if iteration is not None else None
    except ValueError:
        return None
    return Trailers(run=run, iteration=it, step=found.get(TRAILER_STEP))


def split_params_file(override: str) -> tuple[str | None, str]:
    """DVC's `-S` grammar (`dvc exp run -S`): `train.yaml:lr=0.1` addresses the params file
    `train.yaml`; without a `file:` before the `=` (or with `params.yaml:`), the override is
    for the main config. -> (file or None, the override without the file)."""
    head = override.partition("=")[0]
    if ":" not in head:
        return None, override
    path, _, rest = override.partition(":")
    path = path.strip()
    if path.startswith("./"):
        path = path[2:]
    return (None if path == PARAMS_FILE else path), rest


def format_params_file(path: str | None, override: str) -> str:
    return f"{path}:{override}" if path else override


def lock_name(prefix: str) -> str:
    """The lock file (in the worktree's git directory) of the project in folder `prefix` of
    the repository ("" for the top): `mlfork/project.lock`, `mlfork/ml__sub.lock`."""
    return f"{LOCK_DIR}/{prefix.strip('/').replace('/', '__') or 'project'}.lock"


def outbox_entry(run: str, ns: int, bad: bool = False) -> str:
    """The file name of a tracking write in the outbox: ordered by the time it was parked
    (`<20-digit ns>-<run>.json`); `.bad` once set aside as undeliverable."""
    return f"{ns:020d}-{run}.{'bad' if bad else 'json'}"


def outbox_entry_run(filename: str) -> str:
    """The run an outbox file name is for."""
    return filename.rsplit(".", 1)[0][21:]


def replay_run_name(run: str, k: int) -> str:
    return f"{run}-replay-{k}"


def verify_stem(run: str) -> str:
    """Scratch runs of `mlfork verify RUN` are `<stem>-<k>`."""
    return f"{run}-verify"
