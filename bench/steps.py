"""Per-step series of a deep lineage: mirroring them to MLflow and the stitched per-step
query, mlfork against the naive MLflow loop (issue 12).

    python bench/steps.py [--depth 20] [--metrics 5] [--points 1000] [--repeat 3]

A real project is built with the real CLI: a stage logs `--points` steps of `--metrics`
series into a TSV plots file each iteration (counted from 0, as dvclive's `Live()` does);
`r00` runs one iteration, and each `r<k>` forks `r<k-1>` after its iteration and runs one
of its own: a lineage `--depth` runs deep holding depth x metrics x points per-step points
(100,000 by default), each run's own steps following its parent's on the global axis.

Side by side, each timed `--repeat` times on fresh sqlite stores (medians printed):

- mirror, mlfork: for every run, `mirror.full_write` (its per-step points read from git and
  placed on the global axis, with its tags, params and per-iteration metrics) delivered by
  mlfork's writer (one transaction for the points);
- mirror, naive: the same per-step points, already in memory, written with the public API
  (`create_run`, then `log_batch` of 1,000 metrics at a time: MLflow's limit);
- query, mlfork: `stitch.stitch(..., x="step")` of the deepest run (its lineage from git; one read
  of the runs and tags, one of every owner's step range);
- query, naive: `search_runs`, then `get_metric_history` per run of the lineage and series,
  each owner's steps kept in Python.

The stitched rows of both queries must be identical (and hold every point). Targets (issue
12): the mirror at most 2 s; the query at most 0.5 s and at least 10 times the naive loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import bench_env, fmt_s, median, run, table, verdict, workdir  # noqa: E402

EXPERIMENT = "steps-bench"

TRAIN = """\
import json
import os

import yaml

p = yaml.safe_load(open("params.yaml"))
state = {"w": 0.0}
if os.path.getsize("model_resume.json"):
    state = json.load(open("model_resume.json"))
names = [f"m{j}" for j in range(p["metrics"])]
with open("curve.tsv", "w") as f:
    f.write("\\t".join(["step", *names]) + "\\n")
    for step in range(p["points"]):
        state["w"] += p["lr"] * (1.0 - state["w"]) / p["points"]
        values = [f"{state['w'] * (j + 1):.6f}" for j in range(len(names))]
        f.write("\\t".join([str(step), *values]) + "\\n")
with open("model.json", "w") as f:
    json.dump(state, f)
with open("score.json", "w") as f:
    json.dump({"score": state["w"]}, f)
"""

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py, model_resume.json]
    params: [lr, iteration, points, metrics]
    outs: [model.json]
    metrics:
      - score.json: {cache: false}
    plots:
      - curve.tsv: {cache: false, x: step}
"""


def build(root: Path, env: dict[str, str], depth: int, n_metrics: int, points: int) -> list[str]:
    root.mkdir(parents=True)
    files = {
        "train.py": TRAIN,
        "dvc.yaml": DVC_YAML,
        "params.yaml": f"lr: 0.5\niteration: 0\npoints: {points}\nmetrics: {n_metrics}\n",
        ".mlfork/config.yaml": "mlfork:\n  experiment: " + EXPERIMENT + "\n  checkpoint:"
                               " {output: model.json, resume: model_resume.json}\n",
        ".gitignore": "__pycache__/\n",
    }
    run(["git", "init", "-q", "-b", "main"], cwd=root, env=env)
    run(["dvc", "init", "-q"], cwd=root, env=env)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "model_resume.json").write_text("")
    run(["dvc", "add", "-q", "model_resume.json"], cwd=root, env=env)
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-q", "-m", "per-step bench project"], cwd=root, env=env)
    names = [f"r{k:02d}" for k in range(depth)]
    run(["mlfork", "run", "--name", names[0], "--iterations", "1"], cwd=root, env=env)
    for k in range(1, depth):
        run(["mlfork", "branch", "--from", names[k - 1], "--name", names[k], "--iterations",
             "1", f"lr={0.5 + 0.01 * k:g}", "--run"], cwd=root, env=env)
    return names


def naive_mirror(uri: str, points: dict[str, list[tuple[str, float, int, int]]]) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT)
    for name, pts in points.items():
        run_id = client.create_run(exp, run_name=name, tags={"mlfork.run": name}).info.run_id
        metrics = [Metric(k, v, ts, s) for k, v, ts, s in pts]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])


def naive_query(uri: str, run: str, bounds: dict[str, tuple[int, int]]) -> object:
    """search_runs, then get_metric_history per run and series, filtered in Python."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([exp.experiment_id], max_results=1000)
    by_name = {r.data.tags["mlfork.run"]: r for r in found}
    rows = []
    for owner, (lo, hi) in bounds.items():
        r = by_name[owner]
        for key in r.data.metrics:
            if not key.startswith("step/"):
                continue
            for m in client.get_metric_history(r.info.run_id, key):
                if lo <= m.step <= hi:
                    rows.append((run, owner, m.step, key[5:], m.value, owner != run))
    df = pd.DataFrame(rows, columns=["run", "owner", "step", "metric", "value", "inherited"])
    return df.sort_values(["metric", "step"], ignore_index=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--points", type=int, default=1000, help="steps per series per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from mlfork.adapters.tracking.store import create_sqlite_store
    from mlfork.adapters.tracking.writer import Tracker
    from mlfork.ops.comparing import stitch
    from mlfork.ops.comparing.chain import chain_from_git
    from mlfork.ops.kernel.project import Project
    from mlfork.ops.mirroring import mirror

    with workdir("mlfork-bench-steps-", keep=args.keep) as tmp:
        env = bench_env(tmp)
        root = tmp / "project"
        t0 = time.perf_counter()
        names = build(root, env, args.depth, args.metrics, args.points)
        total = args.depth * args.metrics * args.points
        print(f"lineage: {args.depth} runs deep, {args.metrics} series x {args.points} steps"
              f" per run ({total:,} per-step points); built with the CLI in"
              f" {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        os.environ.update({k: v for k, v in env.items() if k in ("HOME", "GIT_CONFIG_GLOBAL")})

        def fresh(label: str, k: int) -> str:
            db = tmp / f"{label}-{k}.db"
            create_sqlite_store(db)  # the schema made before timing, for both sides
            return "sqlite:///" + str(db)

        # the naive side writes the points mlfork places, read from git once (untimed)
        project = Project.open(root)
        writes = {name: mirror.full_write(project, name) for name in names}
        points = {name: [tuple(p) for p in w.metrics if str(p[0]).startswith("step/")]
                  for name, w in writes.items()}
        assert sum(len(p) for p in points.values()) == total, "every point placed once"
        project.close()

        t_mirror: list[float] = []
        t_naive: list[float] = []
        uri = ""
        for k in range(args.repeat):
            uri = fresh("mlfork", k)
            t = time.perf_counter()
            proj = Project.open(root)  # a new command: nothing memoized in the process
            tracker = Tracker(uri)
            for name in names:
                tracker.write(mirror.full_write(proj, name))
            proj.close()
            t_mirror.append(time.perf_counter() - t)
            naive_uri = fresh("naive", k)
            t = time.perf_counter()
            naive_mirror(naive_uri, points)
            t_naive.append(time.perf_counter() - t)

        deepest = names[-1]
        project = Project.open(root)
        chains = {deepest: chain_from_git(project, deepest)}
        bounds = {n: (k * args.points, k * args.points + args.points - 1)
                  for k, n in enumerate(names)}
        q_fast: list[float] = []
        q_naive: list[float] = []
        df_fast = df_naive = None
        stitch.stitch(uri, EXPERIMENT, [deepest], chains=chains, x="step")  # warm-up, both
        naive_query(uri, deepest, bounds)
        for _ in range(args.repeat):
            t = time.perf_counter()
            df_fast = stitch.stitch(uri, EXPERIMENT, [deepest], chains=chains, x="step")
            q_fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            df_naive = naive_query(uri, deepest, bounds)
            q_naive.append(time.perf_counter() - t)
        project.close()

        m_fast, m_naive = median(t_mirror), median(t_naive)
        s_fast, s_naive = median(q_fast), median(q_naive)
        a = df_fast.reset_index(drop=True)  # type: ignore[union-attr]
        b = df_naive.reset_index(drop=True)  # type: ignore[union-attr]
        identical = a.equals(b) and len(a) == total
        print(table(["per-step points", "mlfork s", "naive s", "naive / mlfork"], [
            [f"mirror {total:,} points ({args.depth} runs)", fmt_s(m_fast), fmt_s(m_naive),
             f"{m_naive / m_fast:.1f}x"],
            [f"stitched query of {deepest} ({len(a):,} rows)", fmt_s(s_fast), fmt_s(s_naive),
             f"{s_naive / s_fast:.1f}x"],
        ]))
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (timings scale with it)")
        checks = [
            verdict(m_fast <= 2.0, f"mirror {fmt_s(m_fast)} s <= 2 s"),
            verdict(s_fast <= 0.5, f"stitched query {fmt_s(s_fast)} s <= 0.5 s"),
            verdict(s_naive / s_fast >= 10,
                    f"query {s_naive / s_fast:.1f}x faster than the naive loop (>= 10x)"),
            verdict(identical, f"identical rows, every point ({len(a):,} of {total:,})"),
        ]
        print("\n".join(checks))
        return 0 if all(c.startswith("PASS") for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
