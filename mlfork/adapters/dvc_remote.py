"""DVC objects to and from a DVC remote, by the commits that reference them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlfork.adapters.dvc_files import quiet_dvc
from mlfork.errors import MissingData


def push_revs(dvc: Any, revs: Sequence[str], remote: str | None = None) -> int:
    """Push every object any of `revs` references (their dvc.lock and .dvc files: every
    checkpoint, not only the workspace) to the DVC remote; DVC sends only what the remote
    lacks. The number of objects sent. MissingData if the remote cannot be used."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException

    if not revs:
        return 0
    try:
        with quiet_dvc():
            return int(dvc.repo.push(revs=list(revs), workspace=False, remote=remote) or 0)
    except NoRemoteError as exc:
        raise MissingData(f"no DVC remote to push to ({exc}): add one with"
                          " 'dvc remote add -d NAME URL'") from exc
    except DvcException as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingData(f"the DVC push failed: {text}") from exc
