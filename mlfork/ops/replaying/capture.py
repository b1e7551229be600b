"""The replay manifest of an iteration, captured from the workspace as the engine commits
the iteration's last stage."""

from __future__ import annotations

from collections.abc import Sequence

from mlfork import naming
from mlfork.models import Policy, RunRecord
from mlfork.ops.kernel.project import Project
from mlfork.ops.running.common import now_iso


def write_manifest(
    project: Project,
    rec: RunRecord,
    policy: Policy,
    iteration: int,
    env: dict[str, str],
    argv: Sequence[str],
    code_commit: str,
    user_commits: list[str],
    uri: str,
    resume_input: str | None,
) -> None:
    """.mlfork/replay.json for this iteration, committed with its last stage."""
    from mlfork.adapters.dvc_files import project_entries
    from mlfork.adapters.tracking.store import redact_uri
    from mlfork.ops.kernel.workspace import workspace_locks
    from mlfork.ops.replaying import datasets, manifest

    root = project.root
    config = project.params_at_workspace()
    pipeline = project.pipeline()
    exclude = tuple(p for p in (resume_input, policy.checkpoint_output) if p)
    data = datasets.datasets(
        root, config, policy.locked,
        project_entries(workspace_locks(root, pipeline.lockfiles or ("dvc.lock",))),
        datasets.sources_of(pipeline), datasets.stage_params(pipeline),
        datasets.stage_outs(pipeline), exclude=exclude,
        cache=datasets.HashCache(project.local("hashes.json")),
    )
    embedded = uri.startswith("sqlite:///") and uri.endswith(naming.TRACKING_DB)
    doc = manifest.build(
        rec=rec, iteration=iteration, argv=list(argv or rec.argv), config=config,
        pythonhashseed=env.get("PYTHONHASHSEED", ""), data=data, code_commit=code_commit,
        tracking="embedded" if embedded else redact_uri(uri), created=now_iso(),
        user_commits=user_commits,
    )
    path = root / naming.REPLAY_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.dumps(doc), encoding="utf-8")
