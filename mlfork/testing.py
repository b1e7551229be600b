"""Helpers for exercising mlfork against real git, DVC and MLflow, shared by the project's
test suite and its benchmarks (as `dvc.testing` is DVC's): an environment isolated from the
machine's (HOME, git, DVC and MLflow settings), and copies of projects that keep DVC's
cache links. Nothing here is used by mlfork itself."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

BIN = str(Path(sys.executable).parent)  # this interpreter's scripts: mlfork, dvc, mlflow
DROPPED_PREFIXES = ("GIT_", "DVC_", "MLFLOW_")
DROPPED = ("VIRTUAL_ENV", "PYTHONPATH", "MLFORK_WAIT")


def isolated_env(
    home: Path,
    *,
    name: str = "mlfork tests",
    email: str = "tests@mlfork.invalid",
    base: Mapping[str, str] | None = None,
    wait: bool = True,
) -> dict[str, str]:
    """`base` (default: this process's environment) cut off from the machine: a fresh HOME
    whose git config has the identity `name <email>` and `main` as the default branch, no
    system git config, DVC's config and site-cache folders inside HOME, no analytics, no
    GIT_*, DVC_* or MLFLOW_* variable of the caller, and this interpreter's scripts first
    on PATH. With `wait` (MLFORK_WAIT=1) every command delivers its tracking writes before
    it returns, so that what a test reads from the store right after a command is there and
    no background `mlfork sync` outlives a test; the background delivery is tested with
    `wait=False`."""
    home.mkdir(parents=True, exist_ok=True)
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(
        f"[user]\n\tname = {name}\n\temail = {email}\n[init]\n\tdefaultBranch = main\n",
        encoding="utf-8",
    )
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items()
           if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED}
    env.update({
        "PATH": BIN + os.pathsep + source.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
    })
    if wait:
        env["MLFORK_WAIT"] = "1"
    return env


def isolate_pygit2(home: Path) -> None:
    """pygit2 reads the global git config once per process, from its own search path:
    point it at `home` (for in-process calls after `isolated_env`)."""
    import pygit2

    levels = pygit2.enums.ConfigLevel
    pygit2.settings.search_path[levels.GLOBAL] = str(home)
    pygit2.settings.search_path[levels.SYSTEM] = str(home / "nosystem")
    pygit2.settings.search_path[levels.XDG] = str(home / "noxdg")


def copy_project(src: Path, dest: Path) -> Path:
    """Copy a project, keeping the hard links between its files (DVC outputs linked to the
    cache stay linked in the copy, as in the original), without its mlfork lock."""
    linked: dict[tuple[int, int], str] = {}

    def copy(s: str, d: str) -> str:
        st = os.lstat(s)
        if st.st_nlink > 1:
            first = linked.setdefault((st.st_dev, st.st_ino), d)
            if first != d:
                os.link(first, d)
                return d
        return str(shutil.copy2(s, d))

    shutil.copytree(src, dest, symlinks=True, copy_function=copy)
    shutil.rmtree(dest / ".git" / "mlfork", ignore_errors=True)
    return dest


def rmtree(path: Path) -> None:
    """Remove a folder that holds a DVC cache (whose files and folders are read-only)."""

    def retry(func: object, p: str, _exc: object) -> None:
        try:
            os.chmod(p, 0o700)
            os.chmod(os.path.dirname(p), 0o700)
            func(p)  # type: ignore[operator]
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)
