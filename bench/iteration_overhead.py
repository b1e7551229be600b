"""What mlfork adds per iteration over plain `dvc repro` + `git commit` (issue 2).

    python bench/iteration_overhead.py [--iterations N] [--repeat R] [--keep]

One `mlfork init` project is made in a temporary folder and copied for each loop:

- baseline: for each iteration i, what a user does without mlfork: set `iteration: i` (and
  `iterations: N`) in params.yaml with PyYAML, hand the previous checkpoint over
  (`rm models/resume; cp models/checkpoint models/resume; dvc add models/resume`; nothing at
  i = 0, where `mlfork init` left an empty resume file), `dvc repro`, `git add -A`,
  `git commit`;
- mlfork run: `mlfork run --name bench --iterations N` (one commit per stage, MLflow logging on
  the embedded sqlite store, which the first run in a project creates: that one-off cost is
  counted here);
- mlfork run, later: the same in a copy whose MLflow store already exists (as after an
  earlier run in the project; created untimed, it holds no run).

All loops run the same stages of the same project. The stage commands' own time is
measured in each (a `sitecustomize` on PYTHONPATH records the life time of each process DVC
starts with DVC_STAGE set) so that the overhead can be separated from the pipeline's cost,
which is noisy: overhead = ((mlfork loop - its stage commands) - (baseline loop - its stage
commands)) / N. The raw difference of the loops is printed too. mlfork's costs are partly
per run (imports, the MLflow store), so its overhead per iteration shrinks as N grows; the
steady-state row (iterations after the first) shows the marginal cost of an iteration.

Fairness to caches: an untimed warm-up runs the pipeline once (`dvc repro`) and imports
mlfork's heavy dependencies, so no loop pays a cold page cache; with --repeat R > 1 the
order of the loops rotates and the medians over the repeats are printed. The default is
--repeat 1 to keep the run short (about 2 minutes here).

It also times `mlfork --help` (median of 10 subprocesses, after one untimed call).
Targets: at most 0.5 s of overhead per iteration (issue 2), `mlfork --help` under 0.1 s (issue 10).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlfork import naming

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_env,
    copy_project,
    create_tracking_store,
    fmt_s,
    load_note,
    median,
    rmtree,
    run,
    table,
    timed,
    verdict,
    workdir,
)

OVERHEAD_TARGET = 0.5  # seconds per iteration
HELP_TARGET = 0.1  # seconds (issue 10)
HELP_RUNS = 10

# Records the wall time of each stage command: a process DVC started (DVC_STAGE is set),
# from the process's start (read from /proc) to its exit; children of it are not counted again.
STAGE_TIMER = '''\
import os
if (os.environ.get("DVC_STAGE") and os.environ.get("MLFORK_BENCH_STAGE_LOG")
        and not os.environ.get("MLFORK_BENCH_TIMED")):
    import atexit
    import time

    os.environ["MLFORK_BENCH_TIMED"] = "1"

    def _started():
        try:
            with open("/proc/self/stat") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/uptime") as f:
                uptime = float(f.read().split()[0])
            return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
        except Exception:
            return time.time()

    _t0 = _started()

    def _record():
        with open(os.environ["MLFORK_BENCH_STAGE_LOG"], "a") as f:
            f.write("%s\\t%.4f\\n" % (os.environ["DVC_STAGE"], time.time() - _t0))

    atexit.register(_record)
'''


@dataclass
class Loop:
    total: float = 0.0
    stage_seconds: float = 0.0
    stage_runs: int = 0  # stage commands that ran (the same in every loop, or it is unfair)
    per_iteration: list[float] = field(default_factory=list)  # wall time of each iteration
    phases: dict[str, float] = field(default_factory=dict)  # baseline: seconds per phase
    before_first_stage: float | None = None  # mlfork: start-up before the first stage ran


def stage_log(log: Path) -> tuple[float, int]:
    """(seconds, count) of the stage commands recorded in `log`."""
    if not log.exists():
        return float("nan"), 0
    lines = [line for line in log.read_text().splitlines() if line]
    return sum(float(line.split("\t")[1]) for line in lines), len(lines)


def baseline_loop(project: Path, env: dict[str, str], iterations: int) -> Loop:
    loop = Loop(phases={"params": 0.0, "hand-off": 0.0, "dvc repro": 0.0, "git commit": 0.0})
    params = project / "params.yaml"
    resume, checkpoint = project / "models" / "resume", project / "models" / "checkpoint"
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        config = yaml.safe_load(params.read_text(encoding="utf-8"))
        config["iteration"] = i
        if "iterations" in config:
            config["iterations"] = iterations
        params.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        t1 = time.perf_counter()
        if i > 0:
            resume.unlink()
            shutil.copyfile(checkpoint, resume)
            run(["dvc", "add", "-q", "models/resume"], cwd=project, env=env)
        t2 = time.perf_counter()
        run(["dvc", "repro", "-q"], cwd=project, env=env)
        t3 = time.perf_counter()
        run(["git", "add", "-A"], cwd=project, env=env)
        run(["git", "commit", "-q", "-m", f"iteration {i}"], cwd=project, env=env)
        t4 = time.perf_counter()
        for key, seconds in zip(loop.phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            loop.phases[key] += seconds
        loop.per_iteration.append(t4 - t0)
    loop.total = time.perf_counter() - start
    loop.phases = {k: v / iterations for k, v in loop.phases.items()}
    return loop


STAGE_LINE = re.compile(r" iteration (\d+)/\d+ (\S+): (?:ran ([\d.]+)s|up to date)")
DONE_LINE = re.compile(r" iteration (\d+)/\d+ done")


def mlfork_loop(project: Path, env: dict[str, str], iterations: int) -> Loop:
    """`mlfork run`, with a timestamp on each progress line (stage ends, iteration ends)."""
    loop = Loop()
    args = ["mlfork", "run", "--name", "bench", "--iterations", str(iterations)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=project, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []
    ends: list[float] = []
    for line in proc.stderr:
        now = time.perf_counter() - start
        lines.append(line)
        stage = STAGE_LINE.search(line)
        if stage and loop.before_first_stage is None:
            loop.before_first_stage = now - float(stage.group(3) or 0.0)
        if DONE_LINE.search(line):
            ends.append(now)
    code = proc.wait()
    loop.total = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"bench: `{' '.join(args)}` failed ({code}):\n{''.join(lines[-30:])}")
    if len(ends) == iterations:
        loop.per_iteration = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    return loop


SIDES = ("baseline", "mlfork", "mlfork-later")


def one_repeat(
    template: Path, store: Path, tmp: Path, env: dict[str, str], iterations: int, r: int
) -> dict[str, Loop]:
    """One loop per side, each in a fresh copy of the template; the order rotates with r."""
    results: dict[str, Loop] = {}
    k = r % len(SIDES)
    for side in SIDES[k:] + SIDES[:k]:
        project = copy_project(template, tmp / f"{side}-{r}")
        if side == "mlfork-later":  # as an earlier run in the project leaves it
            db = project / naming.TRACKING_DB
            db.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(store, db)
        log = tmp / f"stages-{side}-{r}.tsv"
        side_env = {**env, "MLFORK_BENCH_STAGE_LOG": str(log)}
        loop = (baseline_loop if side == "baseline" else mlfork_loop)(
            project, side_env, iterations
        )
        loop.stage_seconds, loop.stage_runs = stage_log(log)
        results[side] = loop
        rmtree(project)
    return results


def warm_up(template: Path, tmp: Path, env: dict[str, str]) -> None:
    scratch = copy_project(template, tmp / "warm-up")
    run(["dvc", "repro", "-q"], cwd=scratch, env=env)
    run([sys.executable, "-c", "import mlflow, hydra, dvc.repo, pygit2"], cwd=scratch, env=env)
    rmtree(scratch)


def help_times(tmp: Path, env: dict[str, str]) -> list[float]:
    run(["mlfork", "--help"], cwd=tmp, env=env)  # untimed: the first call writes bytecode
    return [timed(["mlfork", "--help"], cwd=tmp, env=env) for _ in range(HELP_RUNS)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", "-n", type=int, default=5, help="iterations per loop")
    parser.add_argument(
        "--repeat", "-r", type=int, default=1,
        help="repeats, rotating which side goes first (default 1, for speed)",
    )
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.repeat < 1:
        parser.error("--iterations and --repeat must be at least 1")
    n = args.iterations

    with workdir("mlfork-bench-iter-", keep=args.keep) as tmp:
        env = bench_env(tmp)
        hook = tmp / "stage-timer"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(STAGE_TIMER, encoding="utf-8")
        env["PYTHONPATH"] = str(hook)
        template = tmp / "template"
        run(["mlfork", "init", str(template)], cwd=tmp, env=env)
        store = tmp / "store" / "mlflow.db"  # an empty MLflow store, migrated (untimed)
        create_tracking_store(store, env)
        if not args.no_warm_up:
            warm_up(template, tmp, env)
        load_before = load_note()
        repeats = [one_repeat(template, store, tmp, env, n, r) for r in range(args.repeat)]
        helps = help_times(tmp, env)

    def med(side: str, fn) -> float:
        return median([fn(rep[side]) for rep in repeats])

    def overhead(side: str) -> float:  # per iteration, outside stage commands
        return median([
            ((rep[side].total - rep[side].stage_seconds)
             - (rep["baseline"].total - rep["baseline"].stage_seconds)) / n
            for rep in repeats
        ])

    def steady(loop: Loop) -> float:
        return median(loop.per_iteration[1:]) if len(loop.per_iteration) > 1 else float("nan")

    per_it = {s: med(s, lambda x: x.total / n) for s in SIDES}
    stage = {s: med(s, lambda x: x.stage_seconds / n) for s in SIDES}
    over = {s: overhead(s) for s in SIDES}
    raw = {s: med(s, lambda x: x.total / n) - per_it["baseline"] for s in SIDES}
    dash = "-"
    rows = [
        ["per iteration (whole loop / N)", *(fmt_s(per_it[s]) for s in SIDES)],
        ["  in stage commands", *(fmt_s(stage[s]) for s in SIDES)],
        ["  outside stage commands", *(fmt_s(per_it[s] - stage[s]) for s in SIDES)],
        ["overhead per iteration (outside stages)", dash,
         *(f"{over[s]:+.3f}" for s in SIDES[1:])],
        ["overhead per iteration (raw loop diff.)", dash, *(f"{raw[s]:+.3f}" for s in SIDES[1:])],
        ["ratio to baseline (whole loop)", "1.00",
         *(f"{per_it[s] / per_it['baseline']:.2f}" for s in SIDES[1:])],
        ["steady state: median of iterations 1..N-1", *(fmt_s(med(s, steady)) for s in SIDES)],
        ["start-up before the first stage", dash,
         *(fmt_s(med(s, lambda x: x.before_first_stage or float("nan"))) for s in SIDES[1:])],
        ["whole loop", *(fmt_s(med(s, lambda x: x.total)) for s in SIDES)],
    ]
    print(
        f"iteration overhead: {n} iterations of the example pipeline, repeat {args.repeat}"
        " (medians), seconds"
    )
    print(table(["", "dvc repro + git", "mlfork run", "mlfork run, later"], rows))
    phases = {k: med("baseline", lambda x, k=k: x.phases[k]) for k in repeats[0]["baseline"].phases}
    print(
        "baseline per iteration: "
        + ", ".join(f"{k} {fmt_s(v)}" for k, v in phases.items())
        + " (hand-off = cp + `dvc add`, from iteration 1)"
    )
    print(
        "mlfork run = the first run in a fresh `mlfork init` project (it creates the MLflow"
        " store); later = a run in a project whose MLflow store exists"
    )
    counts = {s: sorted({rep[s].stage_runs for rep in repeats}) for s in SIDES}
    same = len({tuple(c) for c in counts.values()}) == 1
    print(
        "stage commands run per loop: "
        + ", ".join(f"{s} {'/'.join(map(str, c))}" for s, c in counts.items())
        + ("" if same else "  (differ: the loops did not do the same work)")
    )
    print(f"{load_before} before the loops, {load_note()} after")
    help_med = median(helps)
    print()
    print(verdict(
        over["mlfork"] <= OVERHEAD_TARGET,
        f"iteration overhead: {over['mlfork']:+.3f} s/iteration outside stage commands, first"
        f" run in a project ({over['mlfork-later']:+.3f} s in later runs; target <="
        f" {OVERHEAD_TARGET} s); mlfork {fmt_s(per_it['mlfork'])} s/it vs dvc repro + git"
        f" commit {fmt_s(per_it['baseline'])} s/it, ratio"
        f" {per_it['mlfork'] / per_it['baseline']:.2f}",
    ))
    print(verdict(
        help_med < HELP_TARGET,
        f"mlfork --help: {fmt_s(help_med)} s median of {HELP_RUNS} (min {fmt_s(min(helps))},"
        f" max {fmt_s(max(helps))}; target < {HELP_TARGET} s)",
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
