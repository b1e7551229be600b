"""Shared helpers of the benchmarks: an isolated environment, timed subprocesses, tables.

Every benchmark works in a temporary folder that it deletes at the end, runs the real CLIs
(`mlfork`, `dvc`, `git`) as subprocesses with this interpreter's bin folder first on PATH, and
is isolated from the machine: HOME, git identity and config, DVC's config and site-cache
folders, no MLflow tracking URI from the caller. Figures are printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mlfork.testing import (  # noqa: E402,F401
    BIN,
    copy_project,
    isolated_env,
    rmtree,
    settle,
)


def bench_env(tmp: Path, wait: bool = True) -> dict[str, str]:
    """The environment of every subprocess: isolated from the caller's HOME and config.
    `wait=False`: tracking writes go to the background, as a user's commands do."""
    env = isolated_env(tmp / "home", name="mlfork bench", email="bench@mlfork.invalid",
                       wait=wait)
    env["LC_ALL"] = "C.UTF-8"
    return env


@contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder, deleted afterwards (unless `keep`)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    try:
        yield tmp
    finally:
        if keep:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            rmtree(tmp)


def run(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), cwd=cwd, env=env, text=True, capture_output=True
    )
    if check and proc.returncode != 0:
        raise SystemExit(
            f"bench: `{' '.join(args)}` failed with exit code {proc.returncode} in {cwd}\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc


def timed(args: Sequence[str], *, cwd: Path, env: dict[str, str]) -> float:
    """Wall time of one subprocess, in seconds (it must succeed)."""
    start = time.perf_counter()
    run(args, cwd=cwd, env=env)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def disk_usage(*roots: Path) -> int:
    """Bytes allocated (st_blocks * 512) under `roots`, each inode counted once (hard links
    between the workspace and the DVC cache are not counted twice)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
    return total


def create_tracking_store(db: Path, env: dict[str, str]) -> None:
    """An empty embedded MLflow store at `db` with its schema migrations run, as the first
    mlfork command in a project leaves it (benchmark setup, untimed)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys\n"
        "from mlflow.tracking import MlflowClient\n"
        "MlflowClient(tracking_uri='sqlite:///' + sys.argv[1]).search_experiments()\n"
    )
    run([sys.executable, "-c", code, str(db)], cwd=db.parent, env=env)


def import_seconds(module: str, env: dict[str, str], cwd: Path, runs: int = 3) -> float:
    """Median seconds to import `module` in a fresh interpreter (the import alone)."""
    code = (
        "import time\nt = time.perf_counter()\n"
        f"import {module}\n"
        "print(time.perf_counter() - t)\n"
    )
    return median([
        float(run([sys.executable, "-c", code], cwd=cwd, env=env).stdout.split()[-1])
        for _ in range(runs)
    ])


def load_note() -> str:
    """The machine's load: other processes slow every figure down."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.2f}"


def parse_size(text: str) -> int:
    """`1GiB` -> 1073741824 (KiB, MiB, GiB, B or a plain number of bytes)."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        cols = [v.rjust(w) for v, w in zip(rest, widths[1:], strict=True)]
        return "  ".join([first.ljust(widths[0]), *cols])

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def visible(root: Path, run_name: str, since: float, timeout: float = 60.0) -> float:
    """Seconds from `since` (time.monotonic) until the MLflow run of `run_name` carries its
    complete write (polled through the MLflow client); inf if it never does."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")
    deadline = since + timeout
    while time.monotonic() < deadline:
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`mlfork.run` = '{run_name}'",
        )
        if found and "mlfork.mirrored" in found[0].data.tags:
            return time.monotonic() - since
        time.sleep(0.05)
    return float("inf")


def tiny_project(project: Path, files: dict[str, str], env: dict[str, str], store: Path,
                 run_args: Sequence[str] = ("--name", "src", "--iterations", "2")) -> None:
    """A small DVC project in `project` (git init, dvc init, `files`, one commit), adopted
    by `mlfork init`, given a copy of the migrated MLflow store `store` (it saves the setup a
    migration), and run once: `mlfork run RUN_ARGS --wait`."""
    project.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], cwd=project, env=env)
    run(["dvc", "init", "-q"], cwd=project, env=env)
    for rel, text in {**files, ".gitignore": "__pycache__/\n"}.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    run(["git", "add", "-A"], cwd=project, env=env)
    run(["git", "commit", "-q", "-m", "a tiny DVC project"], cwd=project, env=env)
    run(["mlfork", "init"], cwd=project, env=env)
    from mlfork import naming

    shutil.copy2(store, project / naming.TRACKING_DB)
    run(["mlfork", "run", *run_args, "--wait"], cwd=project, env=env)
