"""Stitching a deep lineage: mlfork's bulk read against the naive loop (issue 4).

    python bench/stitch.py [--depth 20] [--metrics 5] [--points 1000] [--copies] [--repeat 5]

A lineage `r00 -> r01 -> ... -> r19` is built directly in an embedded sqlite tracking store
(MLflow runs, the tags mlfork writes, `log_batch`): it benchmarks stitching, not pipelines.
Every run logs `--points` steps of each of `--metrics` metrics; run k forks run k-1 in the
middle of the parent's own steps (a fork after the last stage: it inherits up to the fork
step), so the stitched series of the deepest run takes about half of each ancestor's points
and all of its own. With `--copies`, each fork also carries copies of the points it inherits,
as mlfork writes them for the MLflow UI (stitching must skip them).

Side by side, in one process, on the same store (each timed `--repeat` times after one
untimed warm-up, taking turns so that they share the machine's load; medians printed):

- mlfork: `mlfork.ops.comparing.stitch.stitch` on the deepest run: the lineage from its
  `mlfork.lineage` tag (one read-only SQL query over the runs and tags tables), then every
  segment's points in one SQL query over the metrics table, into a pandas DataFrame;
- naive: what one writes with the public API: `MlflowClient.search_runs` once for the
  run ids and tags, then for each run of the lineage `get_metric_history` per metric, the
  points filtered to that run's segment in Python, into the same DataFrame;
- mlfork's public-API path (`fast=False`: `search_runs`, then `get_metric_history` per run
  and metric, the path a tracking server takes), for information.

Both MLflow clients are created (and the store opened) before timing. The rows of the three
frames must be identical. Targets (issue 4): mlfork at most 0.2 s and at least 10 times
faster than the naive loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import fmt_s, median, table, verdict, workdir  # noqa: E402

METRIC_NAMES = ["loss", "accuracy", "f1_macro", "precision", "recall", "auc", "mse", "mae"]
EXPERIMENT = "stitch-bench"
STAGES = ["data_split", "train", "evaluate"]


def build(uri: str, depth: int, n_metrics: int, points: int, copies: bool) -> list[str]:
    """The lineage in MLflow, as mlfork tags it; returns the run names, root first."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from mlfork import naming

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT)
    keys = (METRIC_NAMES * ((n_metrics // len(METRIC_NAMES)) + 1))[:n_metrics]
    keys = [k if keys.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(keys)]
    names = [f"r{k:02d}" for k in range(depth)]
    chain: list[dict[str, object]] = []
    ids: dict[str, str] = {}
    start = 0  # the first own step of run k
    values: dict[tuple[str, int], float] = {}  # the stitched truth, for --copies
    for k, name in enumerate(names):
        tags = {naming.TAG_RUN: name, naming.TAG_ROOT_RUN: names[0], naming.TAG_DEPTH: str(k)}
        if k == 0:
            chain = [{"run": name}]
        else:
            fork_step = start - 1
            parent = names[k - 1]
            chain = [*chain, {"run": name, "iteration": fork_step,
                                                "step": STAGES[-1], "commit": f"{k:012x}"}]
            tags.update({
                naming.TAG_PARENT_RUN: parent,
                naming.TAG_FORK_ITERATION: str(fork_step),
                naming.TAG_FORK_STEP: STAGES[-1],
                naming.TAG_FORK_COMMIT: f"{k:040x}",
                naming.TAG_INHERITED_UNTIL: str(fork_step),
                naming.TAG_MLFLOW_PARENT: ids[parent],
            })
        tags[naming.TAG_LINEAGE] = json.dumps(chain, separators=(",", ":"), sort_keys=True)
        run = client.create_run(exp, start_time=1_700_000_000_000 + k, tags=tags, run_name=name)
        ids[name] = run.info.run_id
        batch = []
        steps = range(start, start + points)
        for step in steps:
            for j, key in enumerate(keys):
                value = ((k + 1) * 0.001 + step * 0.01 + j) % 7.0
                values[(key, step)] = value
                batch.append(Metric(key, value, 1_700_000_000_000 + step, step))
        if copies:  # the inherited points, as mlfork copies them into a fork's run
            for step in range(0, start):
                for key in keys:
                    batch.append(Metric(key, values[(key, step)], 1_700_000_000_000 + step, step))
        for i in range(0, len(batch), 1000):
            client.log_batch(run.info.run_id, metrics=batch[i : i + 1000])
        start += points // 2  # the next run forks in the middle of this one's own steps
    return names


def naive(client: object, run: str) -> object:
    """The public API, run by run: search_runs once, then get_metric_history per ancestor
    and metric, filtered in Python."""
    import pandas as pd

    from mlfork import naming

    exp = client.get_experiment_by_name(EXPERIMENT)  # type: ignore[attr-defined]
    found = client.search_runs([exp.experiment_id], max_results=1000)  # type: ignore[attr-defined]
    by_name = {r.data.tags[naming.TAG_RUN]: r for r in found if naming.TAG_RUN in r.data.tags}
    chain = json.loads(by_name[run].data.tags[naming.TAG_LINEAGE])
    until = [None] + [int(by_name[c["run"]].data.tags[naming.TAG_INHERITED_UNTIL])
                      for c in chain[1:]]
    rows = []
    for k, link in enumerate(chain):
        owner = by_name[link["run"]]
        lo = until[k] + 1 if until[k] is not None else -1
        hi = until[k + 1] if k + 1 < len(chain) else 2**62
        for key in owner.data.metrics:
            newest: dict[int, tuple[int, float]] = {}
            for m in client.get_metric_history(owner.info.run_id, key):  # type: ignore[attr-defined]
                if lo <= m.step <= hi and (m.step not in newest
                                           or (m.timestamp, m.value) >= newest[m.step]):
                    newest[m.step] = (m.timestamp, m.value)
            rows += [(run, link["run"], step, key, v, link["run"] != run)
                     for step, (_, v) in newest.items()]
    df = pd.DataFrame(rows, columns=["run", "owner", "iteration", "metric", "value", "inherited"])
    return df.sort_values(["metric", "iteration"], ignore_index=True)


def timed(fns: list[object], repeat: int) -> list[tuple[float, object]]:
    """Median wall time and result of each function, after one untimed warm-up each; the
    functions take turns within each repeat so that they share the machine's load."""
    results = [fn() for fn in fns]  # type: ignore[operator]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()  # type: ignore[operator]
            times[i].append(time.perf_counter() - t0)
    return [(median(t), r) for t, r in zip(times, results, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=5)
    parser.add_argument("--points", type=int, default=1000, help="steps per metric per run")
    parser.add_argument("--copies", action="store_true",
                        help="forks also carry copies of their inherited points")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from mlflow.tracking import MlflowClient

    from mlfork.adapters.tracking.reader import HistoryReader
    from mlfork.ops.comparing import stitch

    with workdir("mlfork-bench-stitch-", keep=args.keep) as tmp:
        uri = "sqlite:///" + str(tmp / "mlflow.db")
        t0 = time.perf_counter()
        names = build(uri, args.depth, args.metrics, args.points, args.copies)
        built = time.perf_counter() - t0
        deepest = names[-1]
        print(f"lineage: {args.depth} runs deep, {args.metrics} metrics, {args.points} steps"
              f" per metric per run{' (+ inherited copies)' if args.copies else ''};"
              f" built in {built:.1f} s", file=sys.stderr)

        client = MlflowClient(tracking_uri=uri)
        client.search_experiments()  # opens the store (schema check) before timing
        api_reader = HistoryReader(uri, fast=False)
        api_reader.tracker.client.search_experiments()

        (t_fast, df_fast), (t_naive, df_naive), (t_api, df_api) = timed(
            [
                lambda: stitch.stitch(uri, EXPERIMENT, [deepest]),
                lambda: naive(client, deepest),
                lambda: stitch.stitch(uri, EXPERIMENT, [deepest], reader=api_reader),
            ],
            args.repeat,
        )

        def same(a: object, b: object) -> bool:
            return a.reset_index(drop=True).equals(b.reset_index(drop=True))  # type: ignore

        identical = same(df_fast, df_naive) and same(df_fast, df_api)
        reader = df_fast.attrs.get("reader")
        rows = [
            [f"mlfork stitch ({reader}: read-only queries)", fmt_s(t_fast), "1.0x"],
            ["naive loop (get_metric_history per run, metric)", fmt_s(t_naive),
             f"{t_naive / t_fast:.1f}x"],
            ["mlfork, public-API path (a server's)", fmt_s(t_api), f"{t_api / t_fast:.1f}x"],
        ]
        print(table(["stitched DataFrame of " + deepest, "median s", "vs mlfork"], rows))
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (timings scale with it)")
        print(f"rows: {len(df_fast)} ({df_fast['owner'].nunique()} owners,"
              f" {int((~df_fast['inherited']).sum())} own), identical across the three:"
              f" {identical}")
        ratio = t_naive / t_fast
        checks = [
            verdict(t_fast <= 0.2, f"mlfork stitch {fmt_s(t_fast)} s <= 0.2 s"),
            verdict(ratio >= 10, f"{ratio:.1f}x faster than the naive loop (>= 10x)"),
            verdict(identical, "identical rows"),
        ]
        print("\n".join(checks))
        return 0 if all(c.startswith("PASS") for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
