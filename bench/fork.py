"""How fast `mlfork branch` forks, and what it costs on disk, by output size and history
length (issues 3 and 10).

    python bench/fork.py [--repeat R] [--copies C] [--sizes 1MiB,1GiB,4GiB]
                         [--histories 100,1600] [--keep]

For each size, a small DVC project is built in a temporary folder (git init, dvc init, a
two-stage dvc.yaml: `produce` writes SIZE bytes to a cached output, `score` writes a tiny
metrics file every iteration; committed), adopted with `mlfork init`, and run with
`mlfork run --name src --iterations 2`. From that real run, runs `n100` and `n1600` are
written as commits in mlfork's own format (bench/_history.py): the same trees and outputs,
100 and 1,600 iterations of history. Then, sizes and histories interleaved, R times each:

- `mlfork branch --from nN --no-switch --name cli-N-K` through the CLI, as a user types it
  (tracking writes in the background, the default): the wall time of the process, and the
  seconds until the fork is visible in the tracking store (its complete write, polled
  through the MLflow client) counted from the start of the command. The background
  delivery is let finish before the next round. The new disk use of the fork is measured
  (bytes allocated under the project folder, each inode once, after the delivery);
- `mlfork branch ... --wait` once per round: the same with the MLflow write in the
  foreground (what a fork cost before), for scale;
- `git branch bench-K <checkpoint>` through the git CLI (the floor: a bare ref).

Then the workspace copy that workspace-copy forking tools make: `cp -a` of the project
folder, excluding nothing (C times at each size; the copy is deleted after each, untimed).
The page cache is warm (caches cannot be dropped here) and `cp` returns before its data
reaches the disk: both favour `cp`, so the speedup against it is a lower bound. What making
the copy durable adds (fsync of exactly the copied files) is timed apart and shown too.

Targets (issue 10): `mlfork branch --no-switch` median <= 0.3 s at every size and history
length; the N=1,600 / N=100 ratio <= 1.2; >= 10x faster than `cp -a` at the largest size;
the fork visible in the tracking store within 10 s; < 1 MiB of new disk use per fork. Needs
about 3 times the largest size of free disk; everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_env,
    create_tracking_store,
    disk_usage,
    fmt_bytes,
    fmt_s,
    import_seconds,
    load_note,
    median,
    parse_size,
    rmtree,
    run,
    settle,
    table,
    timed,
    tiny_project,
    verdict,
    visible,
    workdir,
)
from _history import synthesize  # noqa: E402

LATENCY_TARGET = 0.3  # s, mlfork branch --no-switch, the whole CLI process
HISTORY_RATIO_TARGET = 1.2  # latency at the longest history / at the shortest
SPEEDUP_TARGET = 10.0  # cp -a time / mlfork branch time, at the largest size
VISIBLE_TARGET = 10.0  # s from the command's start until the fork is in the tracking store
DISK_TARGET = 1 << 20  # bytes of new disk use per fork

PRODUCE = '''\
"""Stage produce: SIZE bytes of deterministic data (a cached DVC output)."""
import random
import yaml

params = yaml.safe_load(open("params.yaml"))
size, chunk = int(params["size"]), 1 << 20
block = bytearray(random.Random(params["seed"]).randbytes(chunk))
with open("out/blob.bin", "wb") as f:
    written = 0
    while written < size:
        block[:8] = written.to_bytes(8, "little")  # no two chunks alike
        n = min(chunk, size - written)
        f.write(block[:n])
        written += n
'''

SCORE = '''\
"""Stage score: a metrics file per iteration (not cached)."""
import json
import yaml

params = yaml.safe_load(open("params.yaml"))
it = int(params["iteration"])
with open("metrics.json", "w") as f:
    json.dump({"score": round(1 - 0.5 / (it + 1), 6), "iteration": it}, f)
'''

DVC_YAML = '''\
stages:
  produce:
    cmd: python produce.py
    deps: [produce.py]
    params: [size, seed]
    outs: [out/blob.bin]
  score:
    cmd: python score.py
    deps: [score.py]
    params: [iteration]
    metrics:
      - metrics.json:
          cache: false
'''

@dataclass
class Figures:
    size: int
    project: Path
    histories: list[int]
    checkpoint: str = ""
    setup_seconds: float = 0.0
    cli: dict[int, list[float]] = field(default_factory=dict)  # history -> seconds
    visible: dict[int, list[float]] = field(default_factory=dict)
    waited: list[float] = field(default_factory=list)  # --wait, at the longest history
    disk: list[int] = field(default_factory=list)
    git_branch: list[float] = field(default_factory=list)
    copy: list[float] = field(default_factory=list)
    flush: list[float] = field(default_factory=list)  # fsync of the copied files after cp -a
    project_bytes: int = 0


def build(tmp: Path, size: int, histories: list[int], env: dict[str, str],
          store: Path) -> Figures:
    """The project with a completed run `src` whose outputs total about `size` bytes, and
    runs `n<N>` of N iterations each written from it. `store` is an empty, migrated MLflow
    store: copied in, it saves the setup a migration."""
    project = tmp / f"project-{fmt_bytes(size).replace(' ', '')}"
    start = time.perf_counter()
    tiny_project(project, {"produce.py": PRODUCE, "score.py": SCORE, "dvc.yaml": DVC_YAML,
                           "params.yaml": f"seed: 0\nsize: {size}\niteration: 0\niterations: 2\n",
                           "out/.keep": ""}, env, store)
    for n in histories:
        synthesize(project, "src", f"n{n}", n)
    run(["mlfork", "sync"], cwd=project, env=env)  # the store has every run, as a user's
    figures = Figures(size=size, project=project, histories=histories)
    figures.setup_seconds = time.perf_counter() - start
    figures.checkpoint = run(
        ["git", "rev-parse", "mlfork/src"], cwd=project, env=env
    ).stdout.strip()
    figures.project_bytes = disk_usage(project)
    return figures


def fork_round(f: Figures, k: int, env: dict[str, str]) -> None:
    for n in f.histories if k % 2 == 0 else f.histories[::-1]:
        settle(f.project)
        before = disk_usage(f.project)
        name = f"cli-{n}-{k}"
        started = time.monotonic()
        f.cli.setdefault(n, []).append(timed(
            ["mlfork", "branch", "--from", f"n{n}", "--no-switch", "--name", name],
            cwd=f.project, env=env,
        ))
        f.visible.setdefault(n, []).append(visible(f.project, name, started))
        settle(f.project)
        f.disk.append(disk_usage(f.project) - before)
    f.waited.append(timed(
        ["mlfork", "branch", "--from", f"n{f.histories[-1]}", "--no-switch", "--wait",
         "--name", f"wait-{k}"], cwd=f.project, env=env,
    ))
    f.git_branch.append(
        timed(["git", "branch", f"bench-{k}", f.checkpoint], cwd=f.project, env=env)
    )


def copy_round(f: Figures, tmp: Path, k: int, env: dict[str, str]) -> None:
    dest = tmp / f"copy-{k}"
    f.copy.append(timed(["cp", "-a", str(f.project), str(dest)], cwd=tmp, env=env))
    # what making the copy durable adds: fsync of exactly the copied files (coreutils sync)
    f.flush.append(timed(
        ["sh", "-c", 'find "$0" -type f -print0 | xargs -0 sync --', str(dest)],
        cwd=tmp, env=env,
    ))
    rmtree(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", "-r", type=int, default=5,
                        help="forks per size and history (median)")
    parser.add_argument("--copies", type=int, default=3, help="`cp -a` runs per size (median)")
    parser.add_argument("--sizes", default="1MiB,1GiB,4GiB", help="output sizes, smallest first")
    parser.add_argument("--histories", default="100,1600",
                        help="iterations of history of the forked run, shortest first")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if min(args.repeat, args.copies) < 1:
        parser.error("--repeat and --copies must be at least 1")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    histories = [int(n) for n in args.histories.split(",")]

    with workdir("mlfork-bench-fork-", keep=args.keep) as tmp:
        env = bench_env(tmp, wait=False)
        store = tmp / "store" / "mlflow.db"
        create_tracking_store(store, env)
        projects = [build(tmp, size, histories, env, store) for size in sizes]
        load_before = load_note()
        for k in range(args.repeat):  # sizes interleaved, alternating
            for f in projects if k % 2 == 0 else projects[::-1]:
                fork_round(f, k, env)
        for k in range(args.copies):
            for f in projects if k % 2 == 0 else projects[::-1]:
                copy_round(f, tmp, k, env)
        load_after = load_note()
        floor_mlflow = import_seconds("mlflow.tracking", env, tmp)

    short, long = histories[0], histories[-1]
    print(
        f"fork: median of {args.repeat} forks per size and history (cp -a: of {args.copies});"
        " seconds"
    )
    rows = []
    for f in projects:
        rows.append([
            fmt_bytes(f.size),
            fmt_bytes(f.project_bytes),
            *[fmt_s(median(f.cli[n])) for n in histories],
            fmt_s(max(median(f.visible[n]) for n in histories)),
            fmt_s(median(f.waited)),
            fmt_s(median(f.git_branch)),
            fmt_s(median(f.copy)),
            fmt_s(median([c + s for c, s in zip(f.copy, f.flush, strict=True)])),
            f"{median(f.copy) / max(median(f.cli[n]) for n in histories):.0f}x",
            fmt_bytes(median(f.disk)),
        ])
    print(table(
        ["outputs", "project", *[f"branch N={n}" for n in histories], "in MLflow after",
         f"--wait N={long}", "git branch", "cp -a", "cp -a+fsync", "speedup",
         "new disk/fork"],
        rows,
    ))
    print(
        "branch = `mlfork branch --no-switch`, the whole CLI process, MLflow written in the"
        " background; in MLflow after = from the command's start until the fork's run is"
        " complete in the store (worst history); --wait = the MLflow write in the foreground;"
        " speedup = cp -a / branch (worst history)"
    )
    print(
        f"for scale: `import mlflow.tracking` alone takes {fmt_s(floor_mlflow)} s in a fresh"
        " interpreter (median of 3)"
    )
    print(f"{load_before} before the forks, {load_after} after the copies")
    print(
        "setup (git init, dvc init, mlfork init, mlfork run --name src --iterations 2, the"
        " long histories written): "
        + ", ".join(f"{fmt_bytes(f.size)} {fmt_s(f.setup_seconds)} s" for f in projects)
    )

    large = projects[-1]
    worst = max(median(f.cli[n]) for f in projects for n in histories)
    ratio = max(median(f.cli[long]) / median(f.cli[short]) for f in projects)
    large_cli = max(median(large.cli[n]) for n in histories)
    speedup = median(large.copy) / large_cli
    durable = median([c + s for c, s in zip(large.copy, large.flush, strict=True)])
    worst_visible = max(max(f.visible[n]) for f in projects for n in histories)
    worst_disk = max(max(f.disk) for f in projects)
    big = fmt_bytes(large.size)
    print()
    print(verdict(
        worst <= LATENCY_TARGET,
        "mlfork branch --no-switch: "
        + "; ".join(f"{fmt_bytes(f.size)}: " + ", ".join(
            f"{fmt_s(median(f.cli[n]))} s at N={n}" for n in histories) for f in projects)
        + f" (median; target <= {LATENCY_TARGET} s)",
    ))
    print(verdict(
        ratio <= HISTORY_RATIO_TARGET,
        f"N={long} / N={short} latency ratio: at most {ratio:.2f}"
        f" (target <= {HISTORY_RATIO_TARGET})",
    ))
    print(verdict(
        speedup >= SPEEDUP_TARGET,
        f"speedup vs cp -a at {big}: {speedup:.0f}x ({fmt_s(median(large.copy))} s vs"
        f" {fmt_s(large_cli)} s, warm page cache, no sync; vs cp -a + fsync"
        f" {durable / large_cli:.0f}x; target >= {SPEEDUP_TARGET:g}x)",
    ))
    print(verdict(
        worst_visible <= VISIBLE_TARGET,
        f"the fork in the tracking store after at most {fmt_s(worst_visible)} s"
        f" (target <= {VISIBLE_TARGET:g} s)",
    ))
    print(verdict(
        worst_disk < DISK_TARGET,
        f"new disk use per fork: at most {fmt_bytes(worst_disk)} (medians "
        + ", ".join(f"{fmt_bytes(median(f.disk))} at {fmt_bytes(f.size)}" for f in projects)
        + f"; cp -a: {fmt_bytes(large.project_bytes)}; target < {fmt_bytes(DISK_TARGET)})",
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
