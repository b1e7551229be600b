"""`mlfork sync`: idempotent, and `--rebuild` restores the tracking store from git alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import cli, copy_project
from mlflow.tracking import MlflowClient

import mlfork


def store(root: Path) -> dict[str, Any]:
    """Everything the tracking store holds about the project's runs, keyed by run name
    (MLflow run ids replaced by names, so two stores compare equal)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")
    exp = client.get_experiment_by_name(root.name)
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_id: r.data.tags["mlfork.run"] for r in runs}
    out = {}
    for r in runs:
        tags = dict(r.data.tags)
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = names[tags["mlflow.parentRunId"]]
        histories = {
            key: sorted(
                (m.step, m.value, m.timestamp)
                for m in client.get_metric_history(r.info.run_id, key)
            )
            for key in r.data.metrics
        }
        out[names[r.info.run_id]] = {
            "tags": tags,
            "params": dict(r.data.params),
            "metrics": histories,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
            "run_name": r.info.run_name,
        }
    return out


@pytest.fixture(scope="module")
def lineage_template(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Path:
    root = copy_project(base_template, tmp_path_factory.mktemp("sync") / "proj")
    mlfork.branch(path=str(root), source="base", from_iteration=0, name="f1",
                  overrides=["model.lr=0.05"], run=True)
    mlfork.branch(path=str(root), source="f1", from_iteration=1, name="f2", iterations=1,
                  run=True)
    return root


@pytest.fixture
def lineage(tmp_path: Path, lineage_template: Path) -> Path:
    return copy_project(lineage_template, tmp_path / "proj")


def test_rebuild_on_an_emptied_store_restores_runs_tags_and_histories(lineage: Path) -> None:
    before = store(lineage)
    assert set(before) == {"base", "f1", "f2"}
    (lineage / ".mlfork" / "local" / "mlflow.db").unlink()

    result = cli(lineage, "sync", "--rebuild")

    assert result.returncode == 0, result.stderr
    assert store(lineage) == before


def test_rebuild_on_a_full_store_recreates_the_same_contents(lineage: Path) -> None:
    before = store(lineage)
    assert cli(lineage, "sync", "--rebuild").returncode == 0
    assert store(lineage) == before


def test_rebuild_removes_duplicate_mlflow_runs_too(lineage: Path) -> None:
    """A second MLflow run of one mlfork run (two writers raced, or a copy made by hand)
    is gone after a rebuild, not left beside the rebuilt one."""
    before = store(lineage)
    client = MlflowClient(tracking_uri=f"sqlite:///{lineage}/.mlfork/local/mlflow.db")
    exp = client.get_experiment_by_name(lineage.name)
    client.create_run(exp.experiment_id, tags={"mlfork.run": "f1"}, run_name="f1")
    assert len(client.search_runs([exp.experiment_id])) == 4

    result = cli(lineage, "sync", "--rebuild")

    assert result.returncode == 0, result.stderr
    assert len(client.search_runs([exp.experiment_id])) == 3
    assert store(lineage) == before


def test_sync_twice_changes_nothing(lineage: Path) -> None:
    assert cli(lineage, "sync").returncode == 0
    once = store(lineage)
    assert cli(lineage, "sync").returncode == 0
    assert store(lineage) == once


def test_sync_json_reports_the_runs(lineage: Path) -> None:
    import json

    result = cli(lineage, "sync", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(data["runs"] + data["current"]) == ["base", "f1", "f2"]
    assert data["uri"].startswith("sqlite:///")
