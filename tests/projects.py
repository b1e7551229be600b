"""Small DVC projects of the shapes found on public code hosts, made with the git and dvc
command lines as their authors would (no mlfork involved): the fixtures of the real-project
tests. Each builder writes a project into an empty folder and commits it on `main`.

- `plain`: params.yaml, two stages, a `cache: false` metrics file; does not iterate.
- `subdir`: a monorepo whose DVC project lives in `ml/` (`dvc init --subdir`).
- `dvclive`: a training stage logging with dvclive's `Live()` defaults (it rewrites
  dvc.yaml with top-level metrics and plots), and a checkpoint hand-off in
  `.mlfork/config.yaml`.
- `cached_metrics`: metrics declared as a cached output plus the top-level `metrics:`.
- `multi`: params in several files (`vars`, `config/train.yaml`), `foreach` and `matrix`
  stages, `${...}` templating, metrics in YAML and TOML, and a second dvc.yaml in a folder.
- `locked`: `plain` with its dvc.lock, a `.dvc`-tracked input the pipeline reads and a
  `.dvc` file no stage uses, pushed to a local DVC remote (or not): cloned, its cache is
  empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path


def run(root: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed in {root}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def git_init(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    run(root, "git", "init", "-q", "-b", "main")


def commit(root: Path, message: str) -> None:
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-q", "-m", message)


# -- plain -------------------------------------------------------------------------------------

PLAIN = {
    "params.yaml": """
        rows: 3
        lr: 0.1
    """,
    "src/prep.py": """
        import yaml
        p = yaml.safe_load(open("params.yaml"))
        with open("data/rows.txt", "w") as f:
            f.write("".join(f"row {i}\\n" for i in range(p["rows"])))
    """,
    "src/fit.py": """
        import json
        import yaml
        p = yaml.safe_load(open("params.yaml"))
        rows = open("data/rows.txt").read().splitlines()
        with open("model.txt", "w") as f:
            f.write(f"lr={p['lr']}\\n")
        with open("metrics.json", "w") as f:
            json.dump({"score": round(p["lr"] * 10 + len(rows), 6), "rows": len(rows)}, f)
    """,
    "dvc.yaml": """
        stages:
          prep:
            cmd: python src/prep.py
            deps: [src/prep.py]
            params: [rows]
            outs: [data/rows.txt]
          fit:
            cmd: python src/fit.py
            deps: [src/fit.py, data/rows.txt]
            params: [lr]
            outs: [model.txt]
            metrics:
              - metrics.json:
                  cache: false
    """,
}


def plain(root: Path) -> None:
    git_init(root)
    run(root, "dvc", "init", "-q")
    write(root, PLAIN)
    (root / "data").mkdir()
    commit(root, "a small DVC pipeline")


# -- subdir ------------------------------------------------------------------------------------


def subdir(root: Path) -> None:
    """The project is `ml/` of a monorepo; the repository's top has other things."""
    git_init(root)
    write(root, {"README.md": "# a monorepo\n", "tools/lint.py": "print('lint')\n"})
    ml = root / "ml"
    ml.mkdir()
    run(ml, "dvc", "init", "-q", "--subdir")
    write(ml, PLAIN)
    (ml / "data").mkdir()
    commit(root, "a monorepo with a DVC project in ml/")


# -- dvclive -----------------------------------------------------------------------------------

DVCLIVE = {
    "params.yaml": """
        lr: 0.2
        iteration: 0
        steps: 3
    """,
    "train.py": """
        import json
        import os

        import yaml
        from dvclive import Live

        p = yaml.safe_load(open("params.yaml"))
        state = {"w": 0.0, "steps": 0}
        if os.path.getsize("model_resume.json"):
            state = json.load(open("model_resume.json"))
        with Live() as live:
            for _ in range(p["steps"]):
                state["w"] += p["lr"] * (1.0 - state["w"])
                state["steps"] += 1
                live.log_metric("loss", round(1.0 - state["w"], 6))
                live.next_step()
            live.log_metric("w", round(state["w"], 6), plot=False)
        with open("model.json", "w") as f:
            json.dump(state, f)
    """,
    "dvc.yaml": """
        stages:
          train:
            cmd: python train.py
            deps: [train.py, model_resume.json]
            params: [lr, iteration, steps]
            outs: [model.json]
    """,
    ".mlfork/config.yaml": """
        mlfork:
          checkpoint: {output: model.json, resume: model_resume.json}
    """,
}


def dvclive(root: Path) -> None:
    git_init(root)
    run(root, "dvc", "init", "-q")
    write(root, DVCLIVE)
    (root / "model_resume.json").write_text("")
    run(root, "dvc", "add", "-q", "model_resume.json")
    commit(root, "training with dvclive")


# -- per-step series ----------------------------------------------------------------------------

STEP_TRAIN = """
    import csv
    import json
    import os

    import yaml

    MODE = {mode!r}
    p = yaml.safe_load(open({params!r}))
    state = {{"w": 0.0, "steps": 0}}
    if os.path.getsize("model_resume.json"):
        state = json.load(open("model_resume.json"))

    def train():
        state["w"] += p["lr"] * (1.0 - state["w"])
        state["steps"] += 1
        return round(1.0 - state["w"], 6), round(state["w"], 6)

    if MODE == "json":  # a cached JSON plots output: rows of epoch, loss, acc
        os.makedirs("logs", exist_ok=True)
        rows = []
        for epoch in range(p["steps"]):
            loss, acc = train()
            rows.append({{"epoch": epoch, "loss": loss, "acc": acc}})
        with open("logs/curve.json", "w") as f:
            json.dump({{"curve": rows}}, f)
        with open("logs/rows.txt", "w") as f:  # data made from the locked key `steps`
            f.write(str(p["steps"]))
    elif MODE == "csv":  # no dvclive: a CSV plots output, its epochs counted from 0 each time
        os.makedirs("logs", exist_ok=True)
        with open("logs/curve.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["epoch", "loss", "acc"])
            for epoch in range(p["steps"]):
                out.writerow([epoch, *train()])
    else:
        from dvclive import Live

        with Live(resume=MODE == "resume") as live:
            if MODE == "offset":  # where mlfork says this iteration's steps start
                live.step = int(os.environ.get("MLFORK_STEP_OFFSET", "0"))
            for _ in range(p["steps"]):
                loss, acc = train()
                live.log_metric("loss", loss)
                live.log_metric("acc", acc)
                live.next_step()
    with open("model.json", "w") as f:
        json.dump(state, f)
"""


def steps(root: Path, mode: str) -> None:
    """A stage logging 3 steps per iteration: with dvclive counting from 0 each time
    (`restart`), continuing its own files (`resume`, `Live(resume=True)`), starting at
    MLFORK_STEP_OFFSET (`offset`); or, without dvclive, a CSV plots output (`csv`, x:
    epoch), or a cached JSON one declared by a stage of a second dvc.yaml in a folder
    (`json`, x: epoch)."""
    git_init(root)
    run(root, "dvc", "init", "-q")
    files = dict(DVCLIVE)
    files["train.py"] = STEP_TRAIN.format(mode=mode, params="params.yaml")
    resume = "model_resume.json"
    if mode == "csv":
        files["dvc.yaml"] = """
            stages:
              train:
                cmd: python train.py
                deps: [train.py, model_resume.json]
                params: [lr, iteration, steps]
                outs: [model.json]
                plots:
                  - logs/curve.csv:
                      x: epoch
        """
    if mode == "json":  # the stage in a dvc.yaml of its own folder, beside its dvc.lock
        del files["train.py"], files["dvc.yaml"]
        files["train/train.py"] = STEP_TRAIN.format(mode=mode, params="../params.yaml")
        files["train/dvc.yaml"] = """
            stages:
              train:
                cmd: python train.py
                deps: [train.py, model_resume.json]
                params:
                  - ../params.yaml: [lr, iteration, steps]
                outs: [model.json, logs/rows.txt]
                plots:
                  - logs/curve.json:
                      x: epoch
        """
        files[".mlfork/config.yaml"] = """
            mlfork:
              locked: [steps]
              checkpoint: {output: train/model.json, resume: train/model_resume.json}
        """
        resume = "train/model_resume.json"
    write(root, files)
    (root / resume).write_text("")
    run(root, "dvc", "add", "-q", resume)
    commit(root, f"per-step series ({mode})")


# -- cached metrics ----------------------------------------------------------------------------

CACHED_METRICS = {
    "params.yaml": "scale: 2\n",
    "evaluate.py": """
        import json
        import os

        import yaml

        p = yaml.safe_load(open("params.yaml"))
        os.makedirs("eval", exist_ok=True)
        with open("eval/scores.json", "w") as f:
            json.dump({"auc": round(0.5 + 0.1 * p["scale"], 6)}, f)
    """,
    "dvc.yaml": """
        stages:
          evaluate:
            cmd: python evaluate.py
            deps: [evaluate.py]
            params: [scale]
            outs: [eval/scores.json]
        metrics:
          - eval/scores.json
    """,
}


def cached_metrics(root: Path) -> None:
    git_init(root)
    run(root, "dvc", "init", "-q")
    write(root, CACHED_METRICS)
    commit(root, "metrics as a cached output")


# -- several params files, foreach, matrix, templating ---------------------------------------

MULTI = {
    "params.yaml": """
        prep:
          rows: 4
        seed: 7
    """,
    "config/train.yaml": """
        # training settings (read by dvc.yaml's vars and by train.py)
        lr: 0.1
        epochs: 2
        depth: 3
    """,
    "src/prep.py": """
        import os
        import sys

        import yaml

        part = sys.argv[1]
        p = yaml.safe_load(open("params.yaml"))
        os.makedirs("data", exist_ok=True)
        with open(f"data/{part}.txt", "w") as f:
            f.write("".join(f"{part}{i}\\n" for i in range(p["prep"]["rows"])))
    """,
    "src/train.py": """
        import json
        import os
        import sys

        import yaml

        model, epochs = sys.argv[1], int(sys.argv[2])
        t = yaml.safe_load(open("config/train.yaml"))
        for folder in ("models", "metrics"):
            os.makedirs(folder, exist_ok=True)
        rows = sum(len(open(f"data/{p}.txt").read().splitlines()) for p in ("a", "b"))
        loss = round(1.0 / (1 + t["lr"] * epochs * rows * (2 if model == "quad" else 1)), 6)
        with open(f"models/{model}.json", "w") as f:
            json.dump({"model": model, "loss": loss}, f)
        with open(f"metrics/{model}.yaml", "w") as f:
            f.write(f"loss: {loss}\\n")
    """,
    "src/summary.py": """
        import yaml

        losses = {m: yaml.safe_load(open(f"metrics/{m}.yaml"))["loss"] for m in ("lin", "quad")}
        with open("summary.toml", "w") as f:
            f.write(f"best_loss = {min(losses.values())}\\n")
    """,
    "dvc.yaml": """
        vars:
          - config/train.yaml
        stages:
          prep:
            foreach: [a, b]
            do:
              cmd: python src/prep.py ${item}
              deps: [src/prep.py]
              params: [prep.rows]
              outs: ["data/${item}.txt"]
          train:
            matrix:
              model: [lin, quad]
            cmd: python src/train.py ${item.model} ${epochs}
            deps: [src/train.py, data/a.txt, data/b.txt]
            params:
              - config/train.yaml:
                  - lr
                  - epochs
            outs: ["models/${item.model}.json"]
            metrics:
              - "metrics/${item.model}.yaml":
                  cache: false
          summary:
            cmd: python src/summary.py
            deps: [src/summary.py, metrics/lin.yaml, metrics/quad.yaml]
            metrics:
              - summary.toml:
                  cache: false
    """,
    # a second dvc.yaml, in a folder, with its own dvc.lock
    "report/dvc.yaml": """
        stages:
          render:
            cmd: python render.py
            deps: [render.py, ../summary.toml]
            params:
              - ../params.yaml:
                  - seed
            outs: [report.txt]
    """,
    "report/render.py": """
        import tomllib

        with open("../summary.toml", "rb") as f:
            best = tomllib.load(f)["best_loss"]
        with open("report.txt", "w") as f:
            f.write(f"best loss {best}\\n")
    """,
}


def multi(root: Path) -> None:
    git_init(root)
    run(root, "dvc", "init", "-q")
    write(root, MULTI)
    for folder in ("data", "models", "metrics"):
        (root / folder).mkdir()
    commit(root, "params in several files, foreach and matrix stages")


# -- a locked project with data, its remote, and its clones --------------------------------------

LOCKED = {
    **PLAIN,
    "src/prep.py": """
        import yaml
        p = yaml.safe_load(open("params.yaml"))
        raw = open("inputs/raw.csv").read().splitlines()[1:]
        with open("data/rows.txt", "w") as f:
            f.write("".join(f"{line}\\n" for line in raw[: p["rows"]]))
    """,
    "dvc.yaml": PLAIN["dvc.yaml"].replace("deps: [src/prep.py]",
                                          "deps: [src/prep.py, inputs/raw.csv]"),
}


def locked(root: Path, remote: Path | None) -> None:
    """`plain` reading a `.dvc`-tracked input, with a `.dvc` file no stage uses, reproduced
    and committed with its dvc.lock; with `remote`, its data is pushed there."""
    git_init(root)
    run(root, "dvc", "init", "-q")
    write(root, LOCKED)
    (root / "data").mkdir()
    (root / "inputs").mkdir()
    (root / "inputs" / "raw.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    (root / "docs").mkdir()
    (root / "docs" / "scan.bin").write_bytes(os.urandom(4096))
    run(root, "dvc", "add", "-q", "inputs/raw.csv", "docs/scan.bin")
    if remote is not None:
        remote.mkdir(parents=True, exist_ok=True)
        run(root, "dvc", "remote", "add", "-q", "-d", "storage", str(remote))
    run(root, "dvc", "repro", "-q")
    if remote is not None:
        run(root, "dvc", "push", "-q")
    commit(root, "reproduced, with its dvc.lock")


def clone(origin: Path, dest: Path) -> Path:
    """A fresh `git clone`: the dvc.lock and .dvc files are there, the DVC cache is empty."""
    run(origin.parent, "git", "clone", "-q", str(origin), str(dest))
    return dest


def locked_clone(dest: Path) -> None:
    """A fresh clone of `locked` (its data on a local DVC remote): the cache is empty."""
    origin = dest.parent / "origin"
    locked(origin, dest.parent / "remote")
    clone(origin, dest)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "plain": plain,
    "subdir": subdir,
    "dvclive": dvclive,
    "cached_metrics": cached_metrics,
    "multi": multi,
    "locked_clone": locked_clone,
}

# (project folder inside the fixture, an override for `run`, one for `branch`, a script
# the user fixes in a commit of their own between iterations)
WALKS: dict[str, tuple[str, str, str, str]] = {
    "plain": (".", "lr=0.2", "rows=5", "src/fit.py"),
    "subdir": ("ml", "lr=0.3", "rows=4", "src/fit.py"),
    "dvclive": (".", "lr=0.3", "lr=0.5", "train.py"),
    "cached_metrics": (".", "scale=3", "scale=4", "evaluate.py"),
    "multi": (".", "config/train.yaml:lr=0.2", "prep.rows=6", "src/summary.py"),
    "locked_clone": (".", "lr=0.4", "rows=7", "src/fit.py"),
}
