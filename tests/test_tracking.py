"""The MLflow mirror: what a run writes to the embedded store, the outbox during a tracking
outage, and `mlfork sync`. Read back with an independent `MlflowClient` on the sqlite file."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import checkpoint_log, cli, copy_project, git

METRICS = {"accuracy", "f1_macro", "log_loss"}


def client(root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")


def store_contents(root: Path) -> list[dict[str, Any]]:
    """Everything the store holds about the project's runs, metric histories included."""
    c = client(root)
    experiments = {e.experiment_id: e.name for e in c.search_experiments()}
    runs = []
    for run in c.search_runs(list(experiments), order_by=["attributes.run_name ASC"]):
        runs.append({
            "experiment": experiments[run.info.experiment_id],
            "name": run.info.run_name,
            "status": run.info.status,
            "lifecycle": run.info.lifecycle_stage,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "metrics": {
                key: sorted(
                    (m.step, m.value, m.timestamp)
                    for m in c.get_metric_history(run.info.run_id, key)
                )
                for key in run.data.metrics
            },
        })
    return runs


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out[f"{prefix}{key}"] = json.dumps(value)
        else:
            out[f"{prefix}{key}"] = "null" if value is None else str(value)
    return out


def test_the_run_is_mirrored_into_mlflow(base_project: Path) -> None:
    root = base_project
    (run,) = store_contents(root)
    tip = git(root, "rev-parse", "mlfork/base").strip()
    assert run["name"] == "base"
    assert run["experiment"] == root.name  # default experiment: the project's folder name
    assert run["status"] == "FINISHED"
    tags = run["tags"]
    assert tags["mlfork.run"] == "base"
    assert tags["mlfork.branch"] == "mlfork/base"
    assert tags["mlflow.source.git.commit"] == tip
    assert tags["mlflow.source.git.branch"] == "mlfork/base"

    # params: the composed config of params.yaml, flattened (the iteration counter aside)
    params = flat(yaml.safe_load(git(root, "show", f"{tip}:params.yaml")))
    assert run["params"].items() <= params.items()
    assert "iteration" not in run["params"]
    for key in params:
        if key.split(".")[0] in ("model", "dataset", "train", "seed", "val_metric"):
            assert run["params"][key] == params[key], key
    assert run["params"]["model.name"] == "sgd"

    ends = [c for c in checkpoint_log(root, "mlfork/base")
            if c["trailers"].get("Mlfork-Step") == "evaluate"]
    assert set(run["metrics"]) == METRICS
    for key, history in run["metrics"].items():
        assert [step for step, _, _ in history] == [0, 1, 2]
        for (step, value, timestamp), commit in zip(history, ends, strict=True):
            assert commit["trailers"]["Mlfork-Iteration"] == str(step)
            on_disk = json.loads(git(root, "show", f"{commit['sha']}:metrics/val.json"))
            assert value == pytest.approx(on_disk[key])
            # the point's time is its commit's: a rebuild from git writes the same point
            assert timestamp == int(git(root, "log", "-1", "--format=%ct", commit["sha"])) * 1000


def test_sync_after_a_run_changes_nothing(base_project: Path) -> None:
    """The engine's writes during the run are exactly what git alone yields."""
    root = base_project
    before = store_contents(root)
    result = cli(root, "sync")
    assert result.returncode == 0, result.stderr
    assert store_contents(root) == before


@pytest.mark.slow
def test_tracking_outage_parks_writes_and_sync_delivers_them(
    tmp_path: Path, template: Path
) -> None:
    offline = copy_project(template, tmp_path / "offline" / "proj")
    online = copy_project(template, tmp_path / "online" / "proj")
    uri = f"http://127.0.0.1:{closed_port()}"

    run = cli(offline, "run", "--name", "base", "--iterations", "2",
              env={"MLFLOW_TRACKING_URI": uri})
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, run.stderr
    assert "mlfork sync" in warnings[0]
    assert "127.0.0.1" in warnings[0]
    assert "completed: 2/2" in run.stderr
    assert not (offline / ".mlfork" / "local" / "mlflow.db").exists()

    outbox = sorted((offline / ".mlfork" / "local" / "outbox").glob("*.json"))
    writes = [json.loads(p.read_text()) for p in outbox]
    assert writes and {w["run"] for w in writes} == {"base"}
    parked = {(key, step) for w in writes for key, _, _, step in w["metrics"]}
    assert parked == {(key, step) for key in METRICS for step in (0, 1)}
    assert [w["status"] for w in writes if w["status"]][-1] == "FINISHED"
    assert writes[-1]["refresh"]  # and: bring the run up to date from git on delivery
    assert git(offline, "status", "--porcelain") == ""  # git is complete regardless

    first = cli(offline, "sync")  # MLFLOW_TRACKING_URI unset: the embedded store
    assert first.returncode == 0, first.stderr
    assert list((offline / ".mlfork" / "local" / "outbox").glob("*")) == []
    delivered = store_contents(offline)
    assert len(delivered) == 1

    second = cli(offline, "sync")
    assert second.returncode == 0, second.stderr
    assert store_contents(offline) == delivered

    direct = cli(online, "run", "--name", "base", "--iterations", "2")
    assert direct.returncode == 0, direct.stderr
    assert "warning" not in direct.stderr.lower()
    (a,) = delivered
    (b,) = store_contents(online)
    assert a["name"] == b["name"] == "base"
    assert a["experiment"] == b["experiment"]
    assert a["status"] == b["status"] == "FINISHED"
    assert a["params"] == b["params"]
    assert set(a["tags"]) == set(b["tags"])

    def points(run: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
        return {k: [(step, value) for step, value, _ in h] for k, h in run["metrics"].items()}

    assert points(a) == points(b)
    assert set(a["metrics"]) == METRICS
    assert all(len(h) == 2 for h in a["metrics"].values())


def test_many_points_are_stored_as_log_batch_stores_them(tmp_path: Path) -> None:
    """A write of many points (per-step series) goes into the sqlite store in one
    transaction: the same history and latest values as MLflow's own log_batch, idempotent,
    and NaN still written (through log_batch)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from mlfork.adapters.tracking.writer import RunWrite, Tracker

    points = [[f"step/m{j}", 0.25 * ((s * 7 + j) % 11), 1_700_000_000_000 + s, s]
              for s in range(1500) for j in range(3)]
    points.append(["step/m0", 9.5, 1_700_000_000_000, 3])  # a second value at one step
    fast_uri = f"sqlite:///{tmp_path / 'fast.db'}"
    tracker = Tracker(fast_uri)
    run_id = tracker.write(RunWrite(run="r", experiment="e", start_time=1, metrics=points))
    again = tracker.write(RunWrite(run="r", experiment="e", start_time=1,
                                   metrics=points[:2000] + [["step/m1", 4.0, 1, 1600]]))
    assert again == run_id
    plain = MlflowClient(f"sqlite:///{tmp_path / 'plain.db'}")
    plain_id = plain.create_run(plain.create_experiment("e")).info.run_id
    ms = [Metric(k, v, ts, s) for k, v, ts, s in [*points, ["step/m1", 4.0, 1, 1600]]]
    for i in range(0, len(ms), 1000):
        plain.log_batch(plain_id, metrics=ms[i : i + 1000])
    fast = MlflowClient(fast_uri)
    assert fast.get_run(run_id).data.metrics == plain.get_run(plain_id).data.metrics
    for key in ("step/m0", "step/m1", "step/m2"):
        def history(client: Any, rid: str, key: str = key) -> list[tuple[int, int, float]]:
            return sorted((m.step, m.timestamp, m.value)
                          for m in client.get_metric_history(rid, key))
        assert history(fast, run_id) == history(plain, plain_id)
    nan = [["step/nan", float("nan") if s % 2 else 1.0, 1, s] for s in range(1200)]
    tracker.write(RunWrite(run="r", experiment="e", start_time=1, metrics=nan))
    got = sorted((m.step, m.value) for m in fast.get_metric_history(run_id, "step/nan"))
    assert len(got) == 1200 and got[0] == (0, 1.0) and got[1][1] != got[1][1]
