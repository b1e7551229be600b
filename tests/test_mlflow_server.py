"""The MLflow UI shows the lineage: checked through a real `mlflow server` on 127.0.0.1,
started by `mlfork ui` once for this module and stopped at its end, over the REST API."""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, copy_project

import mlfork
from mlfork import testing
from mlfork.ops.mirroring.ui import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("mlflow-server")]


def _get(url: str, **params: str) -> dict[str, Any]:
    query = "?" + urllib.parse.urlencode(params) if params else ""
    with urllib.request.urlopen(url + query, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Any:
    """A base run and two forks (f2 a fork of f1); `mlfork ui` serving the project's store;
    f2 is written through the server (MLFLOW_TRACKING_URI = its address)."""
    root = copy_project(base_template, tmp_path_factory.mktemp("served") / "proj")
    mlfork.branch(path=str(root), source="base", from_iteration=1, name="f1",
                  overrides=["model.lr=0.05"], run=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "mlfork", "ui", "--port", str(port)]
    with testing.serving(argv, url, root.parent / "ui.log", cwd=root):
        result = cli(root, "branch", "--from", "f1", "--name", "f2", "--iterations", "1",
                     "model.alpha=0.001", "--run", env={"MLFLOW_TRACKING_URI": url})
        assert result.returncode == 0, result.stderr
        yield root, url


def _runs(url: str, experiment: str, filter_string: str = "") -> dict[str, dict[str, Any]]:
    exp = _get(f"{url}/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
    body: dict[str, Any] = {"experiment_ids": [exp["experiment"]["experiment_id"]],
                            "max_results": 100}
    if filter_string:
        body["filter"] = filter_string
    found = _post(f"{url}/api/2.0/mlflow/runs/search", body).get("runs", [])
    out = {}
    for run in found:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        out[tags["mlfork.run"]] = {"id": run["info"]["run_id"], "tags": tags}
    return out


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    data = _get(f"{url}/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
    return sorted((int(m["step"]), float(m["value"])) for m in data.get("metrics", []))


def test_forks_nest_under_their_parents(served: Any) -> None:
    root, url = served
    runs = _runs(url, root.name)
    assert set(runs) == {"base", "f1", "f2"}
    assert "mlflow.parentRunId" not in runs["base"]["tags"]
    assert runs["f1"]["tags"]["mlflow.parentRunId"] == runs["base"]["id"]
    assert runs["f2"]["tags"]["mlflow.parentRunId"] == runs["f1"]["id"]


def test_a_forks_note_shows_its_fork_point_and_overrides(served: Any) -> None:
    root, url = served
    note = _runs(url, root.name)["f2"]["tags"]["mlflow.note.content"]
    assert "Forked from **`f1`**" in note
    assert "iteration 2" in note
    assert "`model.alpha=0.001`" in note


def test_a_forks_history_is_continuous_from_iteration_zero(served: Any) -> None:
    root, url = served
    runs = _runs(url, root.name)
    base = _history(url, runs["base"]["id"], "accuracy")
    f1 = _history(url, runs["f1"]["id"], "accuracy")
    f2 = _history(url, runs["f2"]["id"], "accuracy")
    assert [s for s, _ in base] == [0, 1, 2]
    assert [s for s, _ in f1] == [0, 1, 2]
    assert [s for s, _ in f2] == [0, 1, 2, 3]
    assert f1[:2] == base[:2]  # inherited up to the fork point (end of iteration 1)
    assert f2[:3] == f1  # f2 forked f1 at its latest checkpoint (end of iteration 2)
    assert runs["f2"]["tags"]["mlfork.inherited_until"] == "2"


def test_runs_of_one_lineage_group_by_root_run(served: Any) -> None:
    root, url = served
    lineage = _runs(url, root.name, "tags.`mlfork.root_run` = 'base'")
    assert set(lineage) == {"base", "f1", "f2"}
    assert {r["tags"]["mlfork.depth"] for r in lineage.values()} == {"0", "1", "2"}
    chain = json.loads(lineage["f2"]["tags"]["mlfork.lineage"])
    assert [c["run"] for c in chain] == ["base", "f1", "f2"]


def test_the_ui_answers_with_the_page(served: Any) -> None:
    _, url = served
    with urllib.request.urlopen(url + "/", timeout=30) as resp:
        page = resp.read().decode("utf-8", "replace")
    assert resp.status == 200
    assert "<html" in page.lower()


def test_json_output_stays_json_with_a_server(served: Any) -> None:
    """With a tracking server MLflow prints "View run ... at" lines on stdout when a run
    ends: none of that reaches mlfork's stdout, which holds the JSON document alone."""
    root, url = served
    env = {"MLFLOW_TRACKING_URI": url}
    forked = cli(root, "branch", "--from", "base", "--from-iteration", "1", "--name", "j",
                 "--iterations", "1", "--run", "--json", env=env)
    assert forked.returncode == 0, forked.stderr
    assert json.loads(forked.stdout)["run"]["status"] == "completed"
    synced = cli(root, "sync", "--json", env=env)
    assert synced.returncode == 0, synced.stderr
    data = json.loads(synced.stdout)
    assert "j" in data["runs"] + data["current"]
    assert "View run" not in forked.stdout + synced.stdout
