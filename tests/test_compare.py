"""Compare: `mlfork metrics` (stitched and own), `mlfork tree`, `mlfork diff`, `mlfork plot`,
on a real project with real MLflow (the embedded sqlite store), checked against the git CLI.

`review_template` is built once per session (shared by the xdist workers through a file
lock) from the conftest's `base_template` (base: iterations 0..2, stages data_split, train,
evaluate):

    base
    ├── lr    forks base after iteration 1, model.lr=0.05, runs 2..3
    │   └── lr2   forks lr after iteration 2, model.lr=0.01, runs 3
    └── mid   forks base inside iteration 1 (after train): inherits 0, runs 1 (evaluate)
    wine      a root run on another dataset (a locked key): 1 iteration

lr2 is checked out. Tests that write to the project work on a copy (`review`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, copy_project, dvc, git, ok, shared_build

import mlfork
from mlfork.errors import NotFound, OutputPathError, UnknownRun, UsageError
from mlfork.ops.comparing import plot as plot_ops
from mlfork.ops.comparing import stitch

RUNS = ["base", "lr", "lr2", "mid", "wine"]
METRICS = ["accuracy", "f1_macro", "log_loss"]
TRAILERS = (
    "%H%x09%(trailers:key=Mlfork-Run,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
)


# -- the shared project ------------------------------------------------------------------------


def build_review(base_template: Path, dest: Path) -> None:
    copy_project(base_template, dest)
    root = str(dest)
    mlfork.branch(path=root, source="base", from_iteration=1, name="lr", iterations=2,
                  overrides=["model.lr=0.05"], run=True)
    mlfork.branch(path=root, source="lr", from_iteration=2, name="lr2", iterations=1,
                  overrides=["model.lr=0.01"], run=True)
    mlfork.branch(path=root, source="base", from_iteration=1, from_step="train", name="mid",
                  iterations=1, run=True)
    git(dest, "switch", "-q", "main")  # a root run starts from the project's main branch
    dvc(dest, "checkout")  # main never ran the pipeline: nothing to restore
    mlfork.run(path=root, name="wine", iterations=1, overrides=["dataset=wine"])
    git(dest, "switch", "-q", "mlfork/lr2")
    ok(dvc(dest, "checkout"))


@pytest.fixture(scope="session")
def review_template(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, worker_id: str
) -> Path:
    """Built once per session; under xdist the workers share it through a file lock."""
    return shared_build(
        tmp_path_factory, worker_id, "compare-review",
        lambda dest: build_review(request.getfixturevalue("base_template"), dest),
    )


@pytest.fixture
def proj(review_template: Path) -> Path:
    """The shared project, for tests that only read it."""
    return review_template


@pytest.fixture
def review(tmp_path: Path, review_template: Path) -> Path:
    """A copy, for tests that change the project or its tracking store."""
    return copy_project(review_template, tmp_path / "proj")


# -- independent readers -----------------------------------------------------------------------


def git_series(root: Path, run: str) -> dict[tuple[int, str], tuple[str, float]]:
    """(iteration, metric) -> (owner, value) of a run's branch, read with the git CLI: the
    metrics file at the commit of each iteration's last stage (newest wins)."""
    out: dict[tuple[int, str], tuple[str, float]] = {}
    for line in git(root, "log", "--first-parent", f"--format={TRAILERS}",
                    f"mlfork/{run}").splitlines():
        sha, owner, iteration, step = (line.split("\t") + ["", "", ""])[:4]
        if step != "evaluate":
            continue
        values = json.loads(git(root, "show", f"{sha}:metrics/val.json"))
        for key, value in values.items():
            out.setdefault((int(iteration), key), (owner, float(value)))
    return out


def tracking_client(root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")


def frame_rows(df: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in df[stitch.COLUMNS].itertuples(index=False, name=None)]


# -- mlfork metrics ----------------------------------------------------------------------------


def test_stitched_fork_of_a_fork_is_the_ancestors_points_then_its_own(proj: Path) -> None:
    df = mlfork.metrics(str(proj), "lr2", source="tracking")
    assert list(df.columns) == stitch.COLUMNS
    assert df.attrs["source"] == "tracking" and df.attrs["reader"] == "sql"
    base, lr, lr2 = (git_series(proj, r) for r in ("base", "lr", "lr2"))
    expected = []
    for metric in METRICS:
        for it in range(4):
            owner, source = ("base", base) if it <= 1 else ("lr", lr) if it == 2 else ("lr2", lr2)
            assert source[(it, metric)][0] == owner  # the ancestor ran it itself
            expected.append(("lr2", owner, it, metric, source[(it, metric)][1], owner != "lr2"))
    assert frame_rows(df) == expected
    # and the fork's own points differ from its parent's after the fork point
    own = df[(df.metric == "log_loss") & (df.iteration == 3)].value.item()
    assert own != lr[(3, "log_loss")][1]


def test_stitched_series_has_no_point_twice(proj: Path) -> None:
    df = mlfork.metrics(str(proj), RUNS)
    assert not df.duplicated(["run", "iteration", "metric"]).any()
    assert list(dict.fromkeys(df["run"])) == RUNS  # runs in the order given
    for _, sub in df.groupby("run"):
        for metric in METRICS:
            its = list(sub[sub.metric == metric].iteration)
            assert its == list(range(len(its)))  # one continuous series from iteration 0


def test_fork_inside_an_iteration_inherits_up_to_the_iteration_before(proj: Path) -> None:
    df = mlfork.metrics(str(proj), "mid", metrics=["accuracy"])
    assert [(r.owner, r.iteration, r.inherited) for r in df.itertuples()] == [
        ("base", 0, True),
        ("mid", 1, False),
    ]
    assert df.value.tolist() == [git_series(proj, "mid")[(i, "accuracy")][1] for i in (0, 1)]


def test_own_points_only(proj: Path) -> None:
    df = mlfork.metrics(str(proj), ["lr", "lr2"], mode="own", metrics=["log_loss"])
    assert [(r.run, r.owner, r.iteration) for r in df.itertuples()] == [
        ("lr", "lr", 2), ("lr", "lr", 3), ("lr2", "lr2", 3)
    ]
    assert not df.inherited.any()


def test_the_tracking_store_git_and_the_api_path_agree(proj: Path) -> None:
    sql = mlfork.metrics(str(proj), RUNS, source="tracking")
    api = mlfork.metrics(str(proj), RUNS, source="tracking", fast=False)
    from_git = mlfork.metrics(str(proj), RUNS, source="git")
    assert api.attrs["reader"] == "api" and from_git.attrs["source"] == "git"
    assert frame_rows(sql) == frame_rows(api) == frame_rows(from_git)
    assert len(sql) == 3 * (3 + 4 + 4 + 2 + 1)
    own_sql = mlfork.metrics(str(proj), RUNS, mode="own", metrics=["accuracy"])
    own_api = mlfork.metrics(str(proj), RUNS, mode="own", metrics=["accuracy"], fast=False)
    assert frame_rows(own_sql) == frame_rows(own_api)


def test_stitching_from_the_lineage_tags_alone(proj: Path) -> None:
    """Without a project (the benchmark's path): the lineage from `mlfork.lineage`."""
    uri = f"sqlite:///{proj}/.mlfork/local/mlflow.db"
    from_tags = stitch.stitch(uri, proj.name, ["lr2", "mid"])
    assert frame_rows(from_tags) == frame_rows(mlfork.metrics(str(proj), ["lr2", "mid"]))


def test_the_fork_runs_copies_of_inherited_points_are_not_read(review: Path) -> None:
    """lr2's MLflow run carries copies of its inherited points (for the UI); stitching reads
    each point from the run that owns it: change the copies and nothing changes."""
    client = tracking_client(review)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`mlfork.run` = 'lr2'",
    )
    copies = {m.step for m in client.get_metric_history(run.info.run_id, "accuracy")}
    assert copies == {0, 1, 2, 3}
    before = frame_rows(mlfork.metrics(str(review), "lr2", source="tracking"))
    from mlflow.entities import Metric

    client.log_batch(run.info.run_id, metrics=[Metric("accuracy", -1.0, 2**40, 0)])
    assert frame_rows(mlfork.metrics(str(review), "lr2", source="tracking")) == before


@pytest.mark.parametrize("fast", [True, False])
def test_a_step_logged_twice_keeps_the_newest_point(review: Path, fast: bool) -> None:
    client = tracking_client(review)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`mlfork.run` = 'base'",
    )
    from mlflow.entities import Metric

    client.log_batch(run.info.run_id, metrics=[
        Metric("accuracy", 0.5, 2**41, 0),  # newer than the committed point
        Metric("accuracy", 0.25, 1, 1),  # older
        Metric("log_loss", float("nan"), 2**41, 1),
    ])
    df = mlfork.metrics(str(review), "lr2", source="tracking", fast=fast)
    assert not df.duplicated(["run", "iteration", "metric"]).any()
    got = {(r.metric, r.iteration): r.value for r in df.itertuples()}
    assert got[("accuracy", 0)] == 0.5
    assert got[("accuracy", 1)] == git_series(review, "base")[(1, "accuracy")][1]
    assert math.isnan(got[("log_loss", 1)])


def test_auto_reads_git_when_the_store_lacks_a_run(review: Path) -> None:
    (review / ".mlfork" / "local" / "mlflow.db").unlink()
    expected = frame_rows(mlfork.metrics(str(review), "lr2", source="git"))
    df = mlfork.metrics(str(review), "lr2")
    assert df.attrs["source"] == "git" and "mlfork sync" in df.attrs["note"]
    assert frame_rows(df) == expected
    with pytest.raises(NotFound, match="not in the tracking store.*mlfork sync"):
        mlfork.metrics(str(review), "lr2", source="tracking")
    assert not (review / ".mlfork" / "local" / "mlflow.db").exists()  # read-only: not created
    proc = cli(review, "metrics", "lr2", "--source", "tracking")
    assert proc.returncode == 6 and "mlfork sync" in proc.stderr


def test_auto_reads_git_when_the_store_is_behind(review: Path) -> None:
    outbox = review / ".mlfork" / "local" / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / "00000000000000000001-lr2.json").write_text("{}")  # a write not delivered yet
    df = mlfork.metrics(str(review), "lr2")
    assert df.attrs["source"] == "git" and "outbox" in df.attrs["note"]


def test_unknown_run(proj: Path) -> None:
    with pytest.raises(UnknownRun, match="unknown run 'nope'.*base"):
        mlfork.metrics(str(proj), ["lr2", "nope"])
    proc = cli(proj, "metrics", "nope")
    assert proc.returncode == 6
    assert proc.stderr.strip().startswith("mlfork: error: unknown run 'nope'")
    assert proc.stdout == ""


def test_metric_no_run_logged_names_the_metrics_that_exist(proj: Path) -> None:
    with pytest.raises(NotFound, match="metric 'acc' was not logged.*accuracy, f1_macro, log_loss"):
        mlfork.metrics(str(proj), "lr2", metrics=["accuracy", "acc"])
    for source in ("tracking", "git"):
        proc = cli(proj, "metrics", "lr2", "--metric", "acc", "--source", source)
        assert proc.returncode == 6, proc.stderr
        assert "accuracy, f1_macro, log_loss" in proc.stderr and proc.stdout == ""


def test_metrics_cli_formats(proj: Path) -> None:
    records = json.loads(ok(cli(proj, "metrics", "lr2", "mid", "--json")).stdout)
    assert set(records[0]) == set(stitch.COLUMNS)
    assert records == json.loads(ok(cli(proj, "metrics", "lr2", "mid", "--format", "json")).stdout)
    expected = mlfork.metrics(str(proj), ["lr2", "mid"])
    assert [(r["run"], r["owner"], r["iteration"], r["metric"], r["inherited"])
            for r in records] == [row[:4] + (row[5],) for row in frame_rows(expected)]
    csv = ok(cli(proj, "metrics", "lr2", "--own", "--format", "csv", "-m", "accuracy")).stdout
    assert csv.splitlines()[0] == "run,owner,iteration,metric,value,inherited"
    assert csv.splitlines()[1].startswith("lr2,lr2,3,accuracy,")
    table = ok(cli(proj, "metrics")).stdout.splitlines()  # the run checked out: lr2
    assert table[0].split() == ["run", "iteration", "owner", *METRICS]
    assert [line.split()[:3] for line in table[1:]] == [
        ["lr2", "0", "base"], ["lr2", "1", "base"], ["lr2", "2", "lr"], ["lr2", "3", "(own)"]
    ]


def test_cli_start_up_does_not_import_the_heavy_libraries() -> None:
    code = (
        "import sys, mlfork.cli\n"
        "from mlfork.cli import metrics, tree, diff, plot, report\n"
        "heavy = [m for m in ('pandas', 'matplotlib', 'mlflow', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


# -- mlfork tree -------------------------------------------------------------------------------


def test_tree_json(proj: Path) -> None:
    roots = json.loads(ok(cli(proj, "tree", "--json")).stdout)
    assert [r["name"] for r in roots] == ["base", "wine"]
    base = roots[0]
    assert base["parent"] is None and base["fork"] is None
    assert [c["name"] for c in base["children"]] == ["lr", "mid"]
    lr, mid = base["children"]
    assert (lr["parent"], lr["fork"]["iteration"], lr["fork"]["step"]) == ("base", 1, "evaluate")
    assert lr["fork"]["inherited_until"] == 1
    assert (mid["fork"]["iteration"], mid["fork"]["step"], mid["fork"]["inherited_until"]) == (
        1, "train", 0
    )
    (lr2,) = lr["children"]
    assert (lr2["name"], lr2["fork"]["iteration"], lr2["children"]) == ("lr2", 2, [])
    assert lr2["checked_out"] and not lr["checked_out"]
    info = {i.name: i for i in mlfork.runs(str(proj))}
    for node in (base, lr, mid, lr2, roots[1]):
        i = info[node["name"]]
        assert (node["status"], node["done"], node["budget"]) == ("completed", i.done, i.budget)
        assert node["headline"] == "accuracy"
        assert node["headline_value"] == pytest.approx(i.headline_value)
        assert node["fork"] is None or node["fork"]["commit"] == i.parent.commit


def test_tree_text_is_a_graph(proj: Path) -> None:
    lines = ok(cli(proj, "tree")).stdout.splitlines()
    assert lines[0].startswith("base ") and "completed 3/3" in lines[0]
    assert lines[1].startswith("├── lr  @1 ")
    assert lines[2].startswith("│   └── * lr2  @2 ") and "completed 4/4  accuracy=" in lines[2]
    assert lines[3].startswith("└── mid  @1/train ")
    assert lines[4].startswith("wine ")


# -- mlfork diff -------------------------------------------------------------------------------


def test_diff_fork_of_a_fork_against_its_parent(proj: Path) -> None:
    d = mlfork.diff(str(proj), "lr", "lr2")
    assert d.a_is_ancestor and not d.b_is_ancestor
    assert (d.fork_point.run, d.fork_point.iteration, d.fork_point.step) == ("lr", 2, "evaluate")
    record = yaml.safe_load(git(proj, "show", "mlfork/lr2:.mlfork/run.yaml"))
    assert d.fork_point.commit == record["parent"]["commit"]
    assert d.fork_point.metrics_iteration == 2 and (d.a_iteration, d.b_iteration) == (3, 3)
    assert d.overrides["only_b"] == ["model.lr=0.01"] and d.overrides["only_a"] == []
    assert d.overrides["b_own"] == ["model.lr=0.01"]
    assert [(c.key, c.a, c.b) for c in d.config] == [("model.lr", 0.05, 0.01)]
    assert d.comparable and all(c.same for c in d.locked)
    assert {c.key for c in d.locked} == {"dataset", "val_metric"}
    lr, lr2 = git_series(proj, "lr"), git_series(proj, "lr2")
    assert [m.metric for m in d.metrics] == ["accuracy", "f1_macro", "log_loss"]  # headline first
    for m in d.metrics:
        assert m.fork == lr[(2, m.metric)][1] == lr2[(2, m.metric)][1]
        assert (m.a, m.b) == (lr[(3, m.metric)][1], lr2[(3, m.metric)][1])
        assert m.b_minus_a == pytest.approx(m.b - m.a)
        assert m.a_delta == pytest.approx(m.a - m.fork)
        lower = m.metric == "log_loss"
        assert m.direction == ("lower" if lower else "higher")
        expected = "same" if m.b == m.a else "better" if (m.b < m.a) == lower else "worse"
        assert m.verdict == expected


def test_diff_between_cousins_parts_at_their_common_checkpoint(proj: Path) -> None:
    d = mlfork.diff(str(proj), "lr2", "mid")
    assert (d.fork_point.run, d.fork_point.iteration, d.fork_point.step) == ("base", 1, "train")
    assert d.fork_point.metrics_iteration == 0
    assert not d.a_is_ancestor and not d.b_is_ancestor
    assert [(c.key, c.a, c.b) for c in d.config] == [("iterations", 4, 2), ("model.lr", 0.01, 0.3)]

def test_diff_across_a_locked_key_is_not_comparable(proj: Path) -> None:
    d = mlfork.diff(str(proj), "base", "wine")
    assert not d.comparable
    assert [(c.key, c.same) for c in d.locked] == [("dataset", False), ("val_metric", True)]
    assert d.fork_point is None
    assert all(m.fork is None for m in d.metrics)
    keys = {c.key for c in d.config}
    assert {"dataset.name", "dataset.test_size", "iterations"} <= keys
    assert all(c.a != c.b for c in d.config) and "seed" not in keys and "iteration" not in keys
    out = ok(cli(proj, "diff", "base", "wine")).stdout
    assert "comparable: NO (locked keys differ: dataset)" in out


def test_diff_cli_json_and_markdown(proj: Path) -> None:
    data = json.loads(ok(cli(proj, "diff", "lr", "lr2", "--json")).stdout)
    assert data["a"] == "lr" and data["b"] == "lr2" and data["comparable"] is True
    assert data["config"] == [
        {"key": "model.lr", "a": 0.05, "b": 0.01, "in_a": True, "in_b": True}
    ]
    assert data["fork_point"]["iteration"] == 2
    md = ok(cli(proj, "diff", "lr", "lr2", "--md")).stdout
    assert md.startswith("## `lr` vs `lr2`")
    assert "| `model.lr` | `0.05` | `0.01` |" in md
    text = ok(cli(proj, "diff", "lr", "lr2")).stdout
    assert "they part at lr iteration 2 evaluate" in text and "comparable: yes" in text
    both = cli(proj, "diff", "lr", "lr2", "--json", "--md")
    assert both.returncode == 2
    unknown = cli(proj, "diff", "lr", "nope")
    assert unknown.returncode == 6 and "unknown run 'nope'" in unknown.stderr


# -- mlfork plot -------------------------------------------------------------------------------


def dashed_x(fig: Any) -> list[float]:
    """x of every vertical dashed line on the figure's axes."""
    xs = []
    for line in fig.axes[0].get_lines():
        x = list(line.get_xdata())
        if line.get_linestyle() == "--" and len(x) == 2 and x[0] == x[1]:
            xs.append(float(x[0]))
    return sorted(xs)


def test_plot_figure_has_a_curve_per_run_and_a_dashed_line_per_fork(proj: Path) -> None:
    fig, info = plot_ops.figure(str(proj), ["base", "lr", "lr2", "mid"], metric="log_loss")
    ax = fig.axes[0]
    assert dashed_x(fig) == [0.5, 1.0, 2.0]  # mid (inside iteration 1), lr @1, lr2 @2
    assert [(f.run, f.parent, f.iteration) for f in info.fork_lines] == [
        ("mid", "base", 1), ("lr", "base", 1), ("lr2", "lr", 2)
    ]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["base", "lr (fork of base @1)", "lr2 (fork of lr @2)",
                      "mid (fork of base @1/train)", "fork point"]
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "log_loss (lower is better)"
    assert "log_loss" in ax.get_title()
    colours = {}
    stitched = mlfork.metrics(str(proj), ["lr2"], metrics=["log_loss"])
    for line in ax.get_lines():
        label = line.get_label()
        if not label.startswith("_") and line.get_linestyle() == "-":
            colours[label.split()[0]] = line.get_color()
        if label.startswith("lr2 "):  # the own line starts at the last inherited point
            assert list(line.get_xdata()) == [2, 3]
            assert list(line.get_ydata()) == stitched.value.tolist()[2:]
    assert len(set(colours.values())) == 4  # one colour per run
    for fl in info.fork_lines:  # a fork line takes its fork's colour
        line = next(ln for ln in ax.get_lines()
                    if ln.get_linestyle() == "--" and list(ln.get_xdata()) == [fl.x, fl.x])
        assert line.get_color() == colours[fl.run]


def test_plot_since_fork_aligns_the_fork_points(proj: Path) -> None:
    fig, info = plot_ops.figure(str(proj), ["lr2", "mid"], metric="accuracy", x="since-fork")
    assert fig.axes[0].get_xlabel().startswith("iterations since")
    assert dashed_x(fig) == [-1.0, 0.0, 0.5]  # lr @1 and lr2 @2 seen from lr2; mid @1/train
    own = {ln.get_label().split()[0]: list(ln.get_xdata()) for ln in fig.axes[0].get_lines()
           if not ln.get_label().startswith("_") and ln.get_linestyle() == "-"}
    assert own == {"lr2": [0, 1], "mid": [0, 1]}  # the first own iteration at 1 for both


def test_plot_writes_a_valid_png_and_svg(proj: Path, tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    result = mlfork.plot(str(proj), ["lr", "lr2"], output=str(png))
    assert result.path == str(png) and result.metric == "accuracy"  # the headline
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(str(png)).shape
    assert width > 600 and height > 300
    out = ok(cli(proj, "plot", "lr2", "mid", "-o", str(tmp_path / "c.svg"), "-m", "log_loss",
                 "--x", "since-fork"))
    assert out.stdout.strip() == str(tmp_path / "c.svg")
    root = ET.parse(tmp_path / "c.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "log_loss" in (tmp_path / "c.svg").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.svg", "curves.png"]


def test_plot_default_output_is_named_after_the_run_and_metric(review: Path) -> None:
    proc = ok(cli(review, "plot", "--json"))
    data = json.loads(proc.stdout)
    assert data["path"] == str(review / "lr2-accuracy.png") and data["runs"] == ["lr2"]
    assert (review / "lr2-accuracy.png").stat().st_size > 1000


def test_plot_bad_output_writes_nothing(proj: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "curves.png"
    proc = cli(proj, "plot", "lr2", "-o", str(missing))
    assert proc.returncode == 15 and "does not exist" in proc.stderr
    with pytest.raises(OutputPathError, match="does not exist"):
        mlfork.plot(str(proj), "lr2", output=str(missing))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError):
        mlfork.plot(str(proj), "lr2", output=str(tmp_path / "file" / "c.png"))
    with pytest.raises(UsageError, match=r"\.png or \.svg"):
        mlfork.plot(str(proj), "lr2", output=str(tmp_path / "curves.pdf"))
    assert cli(proj, "plot", "lr2", "-o", str(tmp_path / "c.jpg")).returncode == 2
    assert cli(proj, "plot", "lr2", "-m", "nope", "-o", str(tmp_path / "c.png")).returncode == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into: /sys (read-only even for root), or a
    folder without write permission."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_plot_into_a_folder_that_cannot_be_written(proj: Path, tmp_path: Path) -> None:
    folder = unwritable_folder(tmp_path)
    before = sorted(os.listdir(folder))
    proc = cli(proj, "plot", "lr2", "-o", str(folder / "mlfork-plot.png"))
    assert proc.returncode == 15, proc.stderr
    assert "cannot write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(folder)) == before


def test_tree_and_metrics_when_a_parent_branch_is_gone(review: Path) -> None:
    git(review, "branch", "-D", "-q", "mlfork/lr")
    roots = {n.name: n for n in mlfork.tree(str(review))}
    assert sorted(roots) == ["base", "lr2", "wine"]
    assert roots["lr2"].missing_parent == "lr" and roots["lr2"].fork_label == "2"
    assert "(forked from 'lr', whose branch is gone)" in ok(cli(review, "tree")).stdout
    # the lineage is still in lr2's history: its stitched series is unchanged
    df = mlfork.metrics(str(review), "lr2", metrics=["accuracy"])
    assert df.owner.tolist() == ["base", "base", "lr", "lr2"]
