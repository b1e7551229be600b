"""Commands cost what they return: listings import no library they do not use, `log -n`
reads only what it prints, and answers kept across commands (`memo`) are the answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, git

import mlfork
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

PROBE = """\
import sys
from mlfork.cli import main
sys.argv = ["mlfork", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
finally:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"dvc", "hydra", "mlflow",
                                                            "omegaconf", "pandas"})
    print("IMPORTED " + " ".join(heavy), file=sys.stderr)
"""


def imported(root: Path, *args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=root, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("IMPORTED")][-1]
    return line.split()[1:]


@pytest.mark.parametrize("argv", [("runs",), ("tree",), ("log", "base"), ("log", "base", "-n", "2"),
                                  ("--help",)])
def test_listings_import_no_heavy_library(base_project: Path, argv: tuple[str, ...]) -> None:
    root = base_project
    imported(root, "runs")  # the first listing asks DVC which files are metrics, once
    assert imported(root, *argv) == []


def test_log_n_is_the_tail_of_log(base_project: Path) -> None:
    root = base_project
    everything = json.loads(cli(root, "log", "base", "--json").stdout)
    for n in (0, 1, 4, 100):
        shown = json.loads(cli(root, "log", "base", "-n", str(n), "--json").stdout)
        assert shown == (everything[-n:] if n else [])


def test_log_n_reads_only_what_it_prints(base_project: Path) -> None:
    project = Project.open(base_project)
    tip = lineage.tip(project, "base")
    read: list[str] = []
    original = project.git.first_parent_walk

    def counting(start: str):  # type: ignore[no-untyped-def]
        for commit in original(start):
            read.append(commit.id)
            yield commit

    project.git.first_parent_walk = counting  # type: ignore[method-assign]
    lineage.recent_checkpoints(project, tip, 2)
    assert len(read) == 2  # the two newest commits are both checkpoints
    read.clear()
    lineage.checkpoints(project, tip)
    assert len(read) > 2


def test_a_kept_composition_is_the_composition(base_project: Path) -> None:
    root = base_project
    project = Project.open(root)
    tip = lineage.tip(project, "base")
    fresh = project._compose(tip, ["model.lr=0.3"], 2, 5)
    first = project.compose(tip, ["model.lr=0.3"], 2, 5)
    kept = project.compose(tip, ["model.lr=0.3"], 2, 5)
    assert first == fresh and kept == fresh
    memo = sorted((root / ".git/mlfork/memo/compose").glob("*.json"))
    assert memo
    for path in memo:  # a damaged entry is a miss, never a wrong answer
        path.write_text("{not json")
    assert project.compose(tip, ["model.lr=0.3"], 2, 5) == fresh
    assert git(root, "status", "--porcelain") == ""


def test_kept_metric_files_are_dvcs_answer(base_project: Path) -> None:
    root = base_project
    before = json.loads(cli(root, "log", "base", "--json").stdout)
    memo = sorted((root / ".git/mlfork/memo/metric-files").glob("*.json"))
    assert memo
    for path in memo:
        path.write_text(json.dumps({"value": 7}))  # not a list: ignored
    assert json.loads(cli(root, "log", "base", "--json").stdout) == before
    # a changed dvc.yaml (another metrics file) is another key: DVC is asked again
    mlfork.runs(str(root))
