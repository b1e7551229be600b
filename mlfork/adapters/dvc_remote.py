"""DVC objects to and from a DVC remote, by the commits that reference them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlfork.adapters.dvc_files import quiet_dvc
from mlfork.errors import MissingData


def push_objects(dvc: Any, objects: Iterable[tuple[str, str]],
                 remote: str | None = None) -> tuple[int, int]:
    """Push the DVC objects `(md5, hash name)` (a folder's `.dir` object brings its files)
    to the DVC remote (default: the project's), with the workspace's DVC config. DVC sends
    only what the remote lacks. (sent, absent): the objects transferred, and those the local
    cache does not hold (so not pushed). MissingData if the remote cannot be used.

    Not `dvc push --rev`/`--all-commits`: they read each commit's own `.dvc/config`, so a
    commit made before the remote was added, or whose remote section only becomes valid
    with this clone's `config.local` (an S3 endpoint and keys), is skipped with "failed to
    collect" and its objects never reach the remote."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException

    repo = dvc.repo
    present, missing = _in_cache(repo, objects)
    absent = len(missing)
    if not present:
        return 0, absent
    try:
        with quiet_dvc():
            result = repo.cloud.push(present, remote=remote)
    except NoRemoteError as exc:
        raise MissingData(f"no DVC remote to push to ({exc}): add one with"
                          " 'dvc remote add -d NAME URL'") from exc
    except DvcException as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingData(f"the DVC push failed: {text}") from exc
    if result.failed:
        raise MissingData(f"the DVC push failed for {len(result.failed)} object(s): check the"
                          " DVC remote, then push again")
    return len(result.transferred), absent


def fetch_objects(dvc: Any, objects: Iterable[tuple[str, str]],
                  remote: str | None = None) -> int:
    """Bring the DVC objects `(md5, hash name)` this cache lacks from the DVC remote (default:
    the project's), by hash: objects of any commit, whatever the workspace's DVC files say.
    The number transferred. MissingData (naming what to do) if there is no remote, it
    fails, or it lacks one of them."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException

    repo = dvc.repo
    wanted = _in_cache(repo, objects)[1]
    if not wanted:
        return 0
    try:
        with quiet_dvc():
            result = repo.cloud.pull(wanted, remote=remote)
    except NoRemoteError as exc:
        raise MissingData(f"{len(wanted)} DVC object(s) are not in this cache and there is no"
                          " DVC remote to fetch them from: add the project's remote ('dvc"
                          " remote add -d NAME URL'), or run this where the data is") from exc
    except DvcException as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingData(f"fetching from the DVC remote failed: {text}") from exc
    if result.failed:
        raise MissingData(f"the DVC remote lacks {len(result.failed)} object(s) this needs:"
                          " push them from a machine that has them ('mlfork push')")
    return len(result.transferred)


def _in_cache(repo: Any, objects: Iterable[tuple[str, str]]) -> tuple[list[Any], list[Any]]:
    """The objects `(md5, hash name)` as DVC HashInfos: (those this cache holds, the others);
    a `md5-dos2unix` hash (DVC 2's) lives in the legacy cache."""
    from dvc_data.hashfile.hash_info import HashInfo

    present: list[Any] = []
    missing: list[Any] = []
    for md5, name in dict.fromkeys(objects):
        odb = repo.cache.legacy if name == "md5-dos2unix" else repo.cache.local
        (present if odb.exists(md5) else missing).append(HashInfo(name, md5))
    return present, missing
