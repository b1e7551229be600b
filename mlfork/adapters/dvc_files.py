"""DVC's files read from their bytes, wherever they come from (a commit's blob, the workspace):
dvc.lock outputs and dependencies, `.dvc` files, metrics files with DVC's parsers; params
files changed the way `dvc exp run -S` changes them; and the small manners every module that
calls DVC shares (its logging kept quiet, work from the project's root, one-line errors)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mlfork.nested import flatten, load_yaml


@contextlib.contextmanager
def quiet_dvc(level: int | None = None) -> Iterator[None]:
    """DVC logs progress chatter at INFO to our stderr when used as a library: raise its
    logger's level for the duration (the CLI configures logging; library code must leave
    it as it found it)."""
    import logging

    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level or logging.WARNING)
    try:
        yield
    finally:
        for logger, old in zip(loggers, previous, strict=True):
            logger.setLevel(old)


@functools.lru_cache(maxsize=64)
def _lock_entries(lock_text: bytes | str | None, kind: str) -> dict[str, dict[str, Any]]:
    if not lock_text:
        return {}
    try:
        data = load_yaml(lock_text) or {}
    except yaml.YAMLError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for stage in (data.get("stages") or {}).values() if isinstance(data, dict) else ():
        for item in (stage or {}).get(kind) or []:
            if isinstance(item, dict) and "path" in item:
                found[str(item["path"])] = {k: v for k, v in item.items() if k != "path"}
    return found


def lock_outputs(lock_text: bytes | str | None) -> dict[str, dict[str, Any]]:
    """`path -> {md5, size, ...}` of every stage output in a dvc.lock text (paths relative
    to the lock file's folder, as DVC writes them). Parsed once per text: do not mutate."""
    return _lock_entries(lock_text, "outs")


def dvcfile_outputs(text: bytes | str | None) -> dict[str, dict[str, Any]]:
    """`path -> {md5, size, ...}` of the outputs a `.dvc` file records (paths relative to
    its folder). Empty for a text that is not one."""
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError:
        return {}
    outs = data.get("outs") if isinstance(data, dict) else None
    return {
        os.path.normpath(str(out["path"])): {k: v for k, v in out.items() if k != "path"}
        for out in outs or []
        if isinstance(out, dict) and "path" in out
    }


def lock_deps(lock_text: bytes | str | None) -> dict[str, dict[str, Any]]:
    """The same for every stage dependency."""
    return _lock_entries(lock_text, "deps")


def project_entries(
    locks: Iterable[tuple[str, bytes | None]], kind: str = "outs"
) -> dict[str, dict[str, Any]]:
    """The entries (`outs` or `deps`) of several dvc.lock texts, given as (the lock file's
    project-relative path, its text): a pipeline has a dvc.lock beside each dvc.yaml, each
    naming paths from its own folder; here they are project-relative."""
    found: dict[str, dict[str, Any]] = {}
    for lock, text in locks:
        folder = lock.rsplit("/", 1)[0] + "/" if "/" in lock else ""
        for path, entry in _lock_entries(text, kind).items():
            found[posixpath.normpath(folder + path)] = entry
    return found


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def in_dir(path: Path) -> Iterator[None]:
    """DVC's Python API resolves stage names and stage-cache paths against the process's
    working directory (its CLI always runs inside the repository): work from the root."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def apply_params_overrides(
    text: bytes, path: str, overrides: list[tuple[str, str]]
) -> bytes:
    """A params file's bytes with overrides applied the way `dvc exp run -S` applies them
    (Hydra's grammar; the file keeps its format and comments). `overrides` are
    (as the user wrote it, the override without its `file:` prefix).

    Application is idempotent, so that the same overrides can be applied again to a file
    that already has them (each iteration starts from the committed file, which may hold
    a user's edits): `+key=v` on an existing key sets it, `~key` on a missing key does
    nothing. An override Hydra refuses is an OverrideError naming it."""
    import tempfile

    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import PARSERS

    from mlfork.errors import OverrideError

    suffix = os.path.splitext(path)[1].lower() or ".yaml"
    with tempfile.TemporaryDirectory(prefix="mlfork-params-") as tmp:
        target = Path(tmp) / f"params{suffix}"
        target.write_bytes(text)
        for shown, body in overrides:
            try:
                data = PARSERS[suffix](target.read_text(encoding="utf-8"), path) or {}
            except DvcException as exc:
                raise OverrideError(shown, f"'{path}' cannot be read: {first_line(exc)}") \
                    from exc
            once = _idempotent(body, data)
            if once is None:
                continue
            try:
                with quiet_dvc(50):
                    apply_overrides(str(target), [once])
            except DvcException as exc:
                cause = exc.__cause__ or exc
                reason = first_line(cause).replace(str(target), path)
                raise OverrideError(shown, f"{reason} (in '{path}')") from exc
        return target.read_bytes()


def _idempotent(override: str, data: Any) -> str | None:
    """`override` adjusted so that applying it twice gives what applying it once gives."""
    prefix = "++" if override.startswith("++") else override[:1] if override[:1] in "+~" else ""
    key = override[len(prefix):].split("=", 1)[0]
    node: Any = data
    exists = True
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            exists = False
            break
    if prefix == "+" and exists:
        return "++" + override[1:]
    if prefix == "~" and not exists:
        return None
    return override


def parse_metrics(path: str, data: bytes) -> dict[str, float]:
    """A metrics file's numbers, flattened to `a.b -> float` (DVC's parser for the
    file's suffix: JSON, YAML, TOML). JSON, the common case, is read by `json` itself,
    as DVC's parser does, without importing DVC's (a listing reads one file per run)."""
    import math

    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".json":
            loaded = json.loads(data.decode("utf-8")) or {}
        else:
            from dvc.repo.metrics.show import _extract_metrics
            from dvc.utils.serialize import PARSERS

            loaded = _extract_metrics(PARSERS[suffix](data.decode("utf-8"), path), path)
    except Exception:  # a half-written or foreign file: no values
        return {}
    return {
        key: float(value)
        for key, value in flatten(loaded).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(float(value))
    }
