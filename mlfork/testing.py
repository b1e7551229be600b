"""Helpers for exercising mlfork against real git, DVC and MLflow, shared by the project's
test suite and its benchmarks (as `dvc.testing` is DVC's): an environment isolated from the
machine's (HOME, git, DVC and MLflow settings), and copies of projects that keep DVC's
cache links. Nothing here is used by mlfork itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def background_syncs(root: Path) -> list[Any]:
    """The background `mlfork sync` processes working in project `root`."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd = proc.info.get("cmdline") or []
        if "--background" in cmd and "sync" in cmd and proc.info.get("cwd") == str(root):
            out.append(proc)
    return out


def settle(root: Path, timeout: float = 120.0) -> None:
    """Wait until no background `mlfork sync` works in project `root`."""
    deadline = time.monotonic() + timeout
    while background_syncs(root) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextmanager
def serving(argv: Sequence[str], url: str, log: Path, *, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 180.0,
            health: str = "/health") -> Iterator[subprocess.Popen[bytes]]:
    """Run a server (`mlflow server`, `mlfork ui`, moto's S3) in its own process group until
    it answers `url` + `health`, yield it, then stop the group (SIGTERM, SIGKILL after
    30 s)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(env) if env else None)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(url + health, timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{argv[0]} did not serve {url}: "
                                         + log.read_text()[-2000:])
                time.sleep(0.5)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
