"""Answers that are pure functions of git content, kept across commands.

Some answers cost a library's import and set-up although they depend only on objects git
has already fixed: the metrics files DVC declares for a set of DVC-file blobs, the config
Hydra composes at a commit with given overrides. Each is kept in git's own folder
(`.git/mlfork/memo/`, beside the project lock: nothing in the working tree changes) under a
hash of everything it depends on (and of mlfork's version), so that a listing or a fork pays
for DVC or Hydra once per distinct input, not once per command. An entry is written whole
or not at all; one that cannot be read is a miss; a repository that cannot be written
(read-only) simply does not remember. Deleting the folder only costs time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlfork.ops.kernel.project import Project

SCHEMA = 1


def _key(kind: str, parts: Any) -> str:
    from mlfork import __version__

    text = json.dumps([SCHEMA, __version__, kind, parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def folder(project: Project) -> Path:
    return project.git.common_dir / "mlfork" / "memo"


def get(project: Project, kind: str, parts: Any) -> Any:
    """The remembered answer for `parts`, or None."""
    path = folder(project) / kind / f"{_key(kind, parts)}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def put(project: Project, kind: str, parts: Any, value: Any) -> None:
    """Remember `value` (JSON-serialisable) for `parts`; silently not, where it cannot."""
    with contextlib.suppress(OSError, TypeError, ValueError):
        path = folder(project) / kind / f"{_key(kind, parts)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"value": value}), encoding="utf-8")
        os.replace(tmp, path)
