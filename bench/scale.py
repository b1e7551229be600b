"""How mlfork's commands grow with long histories, many runs and deep lineages (issue 10).

    python bench/scale.py [--repeat R] [--histories 100,200,400,800,1600]
                          [--runs 5,10,20,40,80] [--depths 5,10,20,40] [--keep]

Projects are built by writing commits in mlfork's own format (bench/_history.py) from one
real run of a tiny DVC project (two stages, a metrics file): the commits mlfork would write,
without running 1,600 iterations. Three families, each command timed as a whole CLI process
(median of R), with the tracking store brought up to date first as a user's would be:

- history length N (one project, a run `nN` of N iterations per N, and a fork `fN` of it
  at its last checkpoint): `branch --no-switch` (from nN), `resume nN` with nothing to do,
  `log nN`, `metrics --stitched fN`, `diff nN fN`, `report fN`;
- number of runs R (a project per R with R runs of 10 iterations): `runs`, `tree`;
- lineage depth D (a project per D: a chain of D forks, each from the last checkpoint of
  the one before and 10 iterations of its own): `sync` (up to date), `sync --rebuild`, and
  the size of `mlflow.db` after the rebuild, with the number of metric points it holds.

Each figure's growth per doubling of its variable is printed (1.0: constant, 2.0: linear,
4.0: quadratic). Targets (issue 10): `runs` and `tree` <= 0.3 s at R = 80; `branch` and
`resume` start-up independent of N (N=1,600 / N=100 <= 1.2); `sync --rebuild` at D = 40
<= 2 s and growing linearly with the points; `mlflow.db` growing linearly with the points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_env,
    create_tracking_store,
    fmt_bytes,
    fmt_s,
    load_note,
    median,
    run,
    settle,
    table,
    timed,
    tiny_project,
    verdict,
    workdir,
)
from _history import extend, synthesize  # noqa: E402

from mlfork import naming  # noqa: E402

RUNS_TARGET = 0.3  # s, `runs` and `tree` at the largest R
STARTUP_RATIO_TARGET = 1.2  # branch / resume at the longest history over the shortest
REBUILD_TARGET = 2.0  # s, `sync --rebuild` at the deepest lineage
LINEAR = 2.4  # growth per doubling at most this: linear (2.0) with noise, not quadratic

SCORE = '''\
import json, yaml
params = yaml.safe_load(open("params.yaml"))
it = int(params["iteration"])
with open("metrics.json", "w") as f:
    json.dump({"score": round(1 - 0.5 / (it + 1), 6), "loss": round(1 / (it + 1), 6)}, f)
'''

PREPARE = '''\
import yaml
params = yaml.safe_load(open("params.yaml"))
open("out/data.txt", "w").write(f"seed {params['seed']}\\n")
'''

DVC_YAML = '''\
stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    params: [seed]
    outs: [out/data.txt]
  score:
    cmd: python score.py
    deps: [score.py, out/data.txt]
    params: [iteration]
    metrics:
      - metrics.json:
          cache: false
'''


def base(tmp: Path, env: dict[str, str], store: Path) -> Path:
    """A tiny DVC project with a real completed run `src` of 2 iterations."""
    project = tmp / "base" / "proj"
    tiny_project(project, {"prepare.py": PREPARE, "score.py": SCORE, "dvc.yaml": DVC_YAML,
                           "params.yaml": "seed: 0\niteration: 0\niterations: 2\n",
                           "out/.keep": ""}, env, store)
    run(["git", "switch", "-q", "main"], cwd=project, env=env)
    return project


def copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)
    return dest


def times(args: list[str], project: Path, env: dict[str, str], repeat: int) -> float:
    out = []
    for _ in range(repeat):
        settle(project)
        out.append(timed(["mlfork", *args], cwd=project, env=env))
    settle(project)
    return median(out)


def growth(xs: list[int], ys: list[float]) -> str:
    """The mean growth of y per doubling of x (log-log slope, as a factor)."""
    import math

    pairs = [(math.log2(x), math.log2(max(y, 1e-9))) for x, y in zip(xs, ys, strict=True)]
    if len(pairs) < 2 or pairs[-1][0] == pairs[0][0]:
        return "-"
    slope = (pairs[-1][1] - pairs[0][1]) / (pairs[-1][0] - pairs[0][0])
    return f"{2 ** slope:.2f}x"


def histories(tmp: Path, template: Path, env: dict[str, str], ns: list[int],
              repeat: int) -> dict[str, list[float]]:
    project = copy(template, tmp / "hist" / "proj")
    for n in ns:
        synthesize(project, "src", f"n{n}", n)
        run(["mlfork", "branch", "--from", f"n{n}", "--no-switch", "--name", f"f{n}",
             "--iterations", "2"], cwd=project, env=env)
        extend(project, "src", f"f{n}", 2)
    run(["mlfork", "sync"], cwd=project, env=env)
    out: dict[str, list[float]] = {k: [] for k in
                                   ("branch", "resume", "log", "metrics", "diff", "report")}
    for n in ns:
        forks = []
        for k in range(repeat):
            settle(project)
            forks.append(timed(["mlfork", "branch", "--from", f"n{n}", "--no-switch",
                                "--name", f"b{n}-{k}"], cwd=project, env=env))
        out["branch"].append(median(forks))
        settle(project)
        run(["git", "switch", "-q", f"mlfork/n{n}"], cwd=project, env=env)
        out["resume"].append(times(["resume", f"n{n}"], project, env, repeat))
        run(["git", "switch", "-q", "main"], cwd=project, env=env)
        out["log"].append(times(["log", f"n{n}"], project, env, repeat))
        out["metrics"].append(times(["metrics", "--stitched", f"f{n}"], project, env, repeat))
        out["diff"].append(times(["diff", f"n{n}", f"f{n}"], project, env, repeat))
        report = tmp / "hist" / "report.md"
        out["report"].append(times(["report", f"f{n}", "-o", str(report)], project, env,
                                   repeat))
    return out


def many_runs(tmp: Path, template: Path, env: dict[str, str], rs: list[int],
              repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"runs": [], "tree": []}
    for r in rs:
        project = copy(template, tmp / f"runs-{r}" / "proj")
        for i in range(r - 1):
            synthesize(project, "src", f"r{i}", 10)
        run(["mlfork", "sync"], cwd=project, env=env)
        out["runs"].append(times(["runs"], project, env, repeat))
        out["tree"].append(times(["tree"], project, env, repeat))
        shutil.rmtree(project.parent)
    return out


def deep(tmp: Path, template: Path, env: dict[str, str], ds: list[int],
         repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sync": [], "rebuild": [], "db": [], "points": []}
    for d in ds:
        project = copy(template, tmp / f"deep-{d}" / "proj")
        synthesize(project, "src", "d0", 10)
        for i in range(1, d + 1):
            run(["mlfork", "branch", "--from", f"d{i - 1}", "--no-switch", "--name", f"d{i}",
                 "--iterations", "1"], cwd=project, env=env)
            extend(project, "src", f"d{i}", 10)
        settle(project)
        run(["mlfork", "sync"], cwd=project, env=env)
        out["sync"].append(times(["sync"], project, env, repeat))
        rebuilds = []
        for _ in range(repeat):
            started = time.perf_counter()
            done = run(["mlfork", "sync", "--rebuild", "--json"], cwd=project, env=env)
            rebuilds.append(time.perf_counter() - started)
            points = json.loads(done.stdout)["points"]
        out["rebuild"].append(median(rebuilds))
        # the store as a rebuild leaves it: the project's runs, their points (deleted runs
        # are purged first so that only what is live is counted)
        fresh = project / naming.TRACKING_DB
        fresh.unlink()
        run(["mlfork", "sync", "--rebuild"], cwd=project, env=env)
        out["db"].append(float(fresh.stat().st_size))
        out["points"].append(float(points))
        shutil.rmtree(project.parent)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", "-r", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--histories", default="100,200,400,800,1600")
    parser.add_argument("--runs", default="5,10,20,40,80")
    parser.add_argument("--depths", default="5,10,20,40")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.histories.split(",")]
    rs = [int(x) for x in args.runs.split(",")]
    ds = [int(x) for x in args.depths.split(",")]
    with workdir("mlfork-bench-scale-", keep=args.keep) as tmp:
        env = bench_env(tmp, wait=False)
        store = tmp / "store" / "mlflow.db"
        create_tracking_store(store, env)
        template = base(tmp, env, store)
        load_before = load_note()
        by_n = histories(tmp, template, env, ns, args.repeat)
        by_r = many_runs(tmp, template, env, rs, args.repeat)
        by_d = deep(tmp, template, env, ds, args.repeat)
        load_after = load_note()

    print(f"scale: median of {args.repeat} per figure; seconds (whole CLI process)")
    for title, xs, figures in (("history N", ns, by_n), ("runs R", rs, by_r),
                               ("depth D", ds, {k: v for k, v in by_d.items()
                                                if k in ("sync", "rebuild")})):
        rows = [[name, *[fmt_s(v) for v in values], growth(xs, values)]
                for name, values in figures.items()]
        print()
        print(table([title, *[str(x) for x in xs], "per doubling"], rows))
    print()
    print(table(["depth D", *[str(d) for d in ds], "per doubling"], [
        ["metric points", *[f"{int(p)}" for p in by_d["points"]],
         growth(ds, by_d["points"])],
        ["mlflow.db", *[fmt_bytes(int(b)) for b in by_d["db"]], growth(ds, by_d["db"])],
        ["db bytes / point", *[f"{b / max(p, 1):.0f}" for b, p in
                               zip(by_d["db"], by_d["points"], strict=True)], "-"],
    ]))
    print(f"{load_before} before, {load_after} after")
    print()
    worst_listing = max(by_r["runs"][-1], by_r["tree"][-1])
    print(verdict(
        worst_listing <= RUNS_TARGET,
        f"runs {fmt_s(by_r['runs'][-1])} s, tree {fmt_s(by_r['tree'][-1])} s at R={rs[-1]}"
        f" (target <= {RUNS_TARGET} s)",
    ))
    for name in ("branch", "resume"):
        ratio = by_n[name][-1] / by_n[name][0]
        print(verdict(
            ratio <= STARTUP_RATIO_TARGET,
            f"{name}: {fmt_s(by_n[name][0])} s at N={ns[0]}, {fmt_s(by_n[name][-1])} s at"
            f" N={ns[-1]}: ratio {ratio:.2f} (target <= {STARTUP_RATIO_TARGET})",
        ))
    per_point = [r / p for r, p in zip(by_d["rebuild"], by_d["points"], strict=True)]
    print(verdict(
        by_d["rebuild"][-1] <= REBUILD_TARGET,
        f"sync --rebuild at D={ds[-1]}: {fmt_s(by_d['rebuild'][-1])} s"
        f" ({int(by_d['points'][-1])} points; target <= {REBUILD_TARGET} s)",
    ))
    rebuild_growth = float(growth(by_d["points"], by_d["rebuild"]).rstrip("x"))
    print(verdict(
        rebuild_growth <= LINEAR,
        f"sync --rebuild grows {rebuild_growth:.2f}x per doubling of the points"
        f" ({per_point[0] * 1000:.2f} to {per_point[-1] * 1000:.2f} ms per point; linear: 2x)",
    ))
    db_growth = float(growth(by_d["points"], by_d["db"]).rstrip("x"))
    print(verdict(
        db_growth <= LINEAR,
        f"mlflow.db grows {db_growth:.2f}x per doubling of the points (linear: 2x)",
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
