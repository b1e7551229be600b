"""Fork sweeps side by side against the same forks one after another (issue 11).

    python bench/sweep.py [--stage-seconds S] [--forks 3,4] [--jobs 2] [--keep]

A small DVC project whose `train` stage is CPU-bound for about S seconds (a single-threaded
Python loop, as a stage that trains on one core), with a run `src` of one iteration. For
each number of forks F, two copies of it:

- one after another: `mlfork branch --from src --from-iteration 0 --iterations 1 lr=X
  --run`, F times,
  in the workspace (what a user without sweeps types);
- side by side: `mlfork sweep --from src --from-iteration 0 --iterations 1
  lr=X1,...,XF --jobs J`
  (each fork in its own worktree, sharing the DVC cache and the tracking store).

Both make the same forks and run the same iteration 1 of each; both are timed whole,
forks included. The ratio is side-by-side / one-after-another. With F equal jobs on J
slots the best any scheduler can do is ceil(F/J)/F of the sequential time (the floor: 2/3
for 3 forks on 2 slots, 1/2 for 4); the figure says how close mlfork gets. Target (issue 11):
at most 0.65 with 2 jobs on 2 cores, which 3 forks cannot reach below their floor of 0.667:
the 3-fork case is held to floor + 0.05, the 4-fork case to 0.65.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_env,
    copy_project,
    create_tracking_store,
    load_note,
    run,
    table,
    tiny_project,
    verdict,
    workdir,
)

TARGET = 0.65
SLACK = 0.05  # over the floor, where the floor is above the target

TRAIN = '''\
import json, time, yaml
p = yaml.safe_load(open("params.yaml"))


def burn(n):  # one core busy, as a stage that trains on the CPU
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


total = burn(int(p["work"]))
with open("model.txt", "w") as f:
    f.write(f"lr={p['lr']} iteration={p['iteration']} total={total}\\n")
with open("metrics.json", "w") as f:
    json.dump({"score": round(float(p["lr"]) * 10 + int(p["iteration"]), 6)}, f)
'''

DVC_YAML = '''\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [lr, iteration, work]
    outs: [model.txt]
    metrics:
      - metrics.json:
          cache: false
'''


def calibrate(seconds: float) -> int:
    """Loop iterations of TRAIN's loop that take about `seconds` here."""
    n = 2_000_000
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    per = (time.perf_counter() - start) / n
    return int(seconds / per)


def one_after_another(project: Path, env: dict[str, str], values: list[str]) -> float:
    start = time.perf_counter()
    for value in values:
        run(["mlfork", "branch", "--from", "src", "--from-iteration", "0", "--iterations",
             "1", "--name", f"seq-{value}", f"lr={value}", "--run"], cwd=project, env=env)
    return time.perf_counter() - start


def side_by_side(project: Path, env: dict[str, str], values: list[str], jobs: int) -> float:
    start = time.perf_counter()
    run(["mlfork", "sweep", "--from", "src", "--from-iteration", "0", "--iterations", "1",
         "--jobs", str(jobs), f"lr={','.join(values)}"], cwd=project, env=env)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage-seconds", type=float, default=6.0)
    parser.add_argument("--forks", default="3,4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    forks = [int(x) for x in args.forks.split(",")]
    work = calibrate(args.stage_seconds)
    print(f"sweep: a {args.stage_seconds:.0f} s single-threaded stage ({work:,} loop steps),"
          f" --jobs {args.jobs}; {load_note()}")
    rows, verdicts = [], []
    with workdir("mlfork-bench-sweep-", keep=args.keep) as tmp:
        env = bench_env(tmp)
        store = tmp / "store.db"
        create_tracking_store(store, env)
        template = tmp / "template"
        tiny_project(template, {
            "train.py": TRAIN, "dvc.yaml": DVC_YAML,
            "params.yaml": f"seed: 0\nlr: 0.1\nwork: {work}\niteration: 0\niterations: 2\n",
        }, env, store, run_args=("--name", "src", "--iterations", "1"))
        for f in forks:
            values = [f"0.{k + 2}" for k in range(f)]
            seq = one_after_another(copy_project(template, tmp / f"seq{f}"), env, values)
            par = side_by_side(copy_project(template, tmp / f"par{f}"), env, values, args.jobs)
            ratio = par / seq
            floor = math.ceil(f / args.jobs) / f
            target = max(TARGET, floor + SLACK) if floor > TARGET else TARGET
            rows.append([f"{f} forks", f"{seq:.2f}", f"{par:.2f}", f"{ratio:.3f}",
                         f"{floor:.3f}", f"{target:.3f}"])
            verdicts.append(verdict(ratio <= target, (
                f"{f} forks, --jobs {args.jobs}: side by side {par:.2f} s, one after another"
                f" {seq:.2f} s, ratio {ratio:.3f} (floor {floor:.3f}, target <= {target:.3f})")))
    print(table(["case", "sequential s", "sweep s", "ratio", "floor", "target"], rows))
    for line in verdicts:
        print(line)
    return 0 if all(v.startswith("PASS") for v in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
