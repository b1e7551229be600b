"""`mlfork report`: Markdown for a pull request from a fork branch, and the Markdown form of
`mlfork diff`.

The report carries a hidden marker (`<!-- mlfork-report: <fork> -->`) so that a CI job can
find and update its earlier comment instead of adding another; the plot is written as an
image file beside it and linked relatively. Every input is checked before anything is
written, and the image and the report are written together or not at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfork import naming
from mlfork.errors import UsageError
from mlfork.ops.comparing import diff as diffs
from mlfork.ops.comparing import plot, stitch
from mlfork.ops.comparing.chain import Link, chain_from_git
from mlfork.ops.comparing.diff import DiffResult
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

MARKER = "<!-- mlfork-report: {fork} -->"


def marker(fork: str) -> str:
    """The hidden line a CI job searches for to update its earlier comment."""
    return MARKER.format(fork=fork)


STEP_SLOT = "\x00steps\x00"  # where the per-step curves go in the Markdown


@dataclass
class ReportResult:
    fork: str
    base: str
    path: str
    image: str | None
    metric: str | None
    comparable: bool
    forced: bool  # --base is not an ancestor of the fork: compared because of --force
    markdown: str
    source_note: str = ""  # why git was read instead of the store (it lags), if it was
    step_image: str | None = None  # the per-step curves, when the runs log per-step series

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("markdown")
        return data


# -- Markdown helpers --------------------------------------------------------------------------


def code(value: Any) -> str:
    """Inline code that survives a table cell."""
    if value is None:
        return "–"
    if not isinstance(value, str):
        import json

        value = json.dumps(value, sort_keys=True, default=str)
    text = " ".join(str(value).split()).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else "` `"


def num(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def badge(verdict: str | None) -> str:
    return {"better": "✅ better", "worse": "❌ worse", "same": "＝ same"}.get(verdict or "", "–")


def arrow(metric: str) -> str:
    return "↓" if diffs.direction(metric) == "lower" else "↑"


def table(headers: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" * len(headers)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _at(fp: diffs.ForkPoint | None) -> str:
    if fp is None:
        return "no shared checkpoint"
    return f"`{fp.run}` iteration {fp.iteration} `{fp.step}` (`{fp.commit[:10]}`)"


def overrides_section(d: DiffResult, h: str) -> list[str]:
    rows = [
        [f"`{d.a}`", " ".join(code(o) for o in d.overrides["a"]) or "none",
         " ".join(code(o) for o in d.overrides["a_own"]) or "none"],
        [f"`{d.b}`", " ".join(code(o) for o in d.overrides["b"]) or "none",
         " ".join(code(o) for o in d.overrides["b_own"]) or "none"],
    ]
    return [f"{h} Overrides", "", *table(["run", "overrides (cumulative)", "own"], rows), ""]


def config_section(d: DiffResult, h: str) -> list[str]:
    out = [f"{h} Config diff", ""]
    if not d.config:
        return [*out, f"`params.yaml` is the same in `{d.a}` and `{d.b}`.", ""]
    rows = [
        [code(c.key), code(c.a) if c.in_a else "*(absent)*", code(c.b) if c.in_b else "*(absent)*"]
        for c in d.config
    ]
    out += ["Keys of `params.yaml` that differ, at each run's last commit:", ""]
    return [*out, *table(["key", f"`{d.a}`", f"`{d.b}`"], rows), ""]


def metrics_section(d: DiffResult, h: str, title: str = "Metrics") -> list[str]:
    out = [f"{h} {title}", ""]
    if not d.metrics_logged:
        return [*out, stitch.NO_METRICS[0].upper() + stitch.NO_METRICS[1:] + ".", ""]
    if not d.metrics:
        return [*out, "No metric point was logged yet.", ""]
    fp = d.fork_point
    at = fp.metrics_iteration if fp is not None else None
    headers = [
        "metric",
        f"`{d.a}` at the fork point" + (f" (it. {at})" if at is not None else ""),
        f"`{d.a}` final" + (f" (it. {d.a_iteration})" if d.a_iteration is not None else ""),
        f"`{d.b}` final" + (f" (it. {d.b_iteration})" if d.b_iteration is not None else ""),
        f"Δ `{d.b}` − `{d.a}`",
        "",
    ]
    rows = []
    for m in d.metrics:
        name = f"**{m.metric}** {arrow(m.metric)} (headline)" if m.metric == d.headline else (
            f"{m.metric} {arrow(m.metric)}"
        )
        rows.append([name, num(m.fork), num(m.a), num(m.b), num(m.b_minus_a, True),
                     badge(m.verdict)])
    out += table(headers, rows, "lrrrrl")
    out += ["", "↑ higher is better, ↓ lower is better (names with loss, error, mse, mae, rmse)."]
    return [*out, ""]


def locked_section(d: DiffResult, h: str) -> list[str]:
    out = [f"{h} Locked keys", ""]
    if not d.locked:
        return [*out, "No locked keys: the policy locks none of this project's keys"
                      " (`mlfork.locked`).", ""]
    if d.comparable:
        out.append(f"✅ Comparable: `{d.a}` and `{d.b}` have the same locked keys.")
    else:
        bad = ", ".join(f"`{c.key}`" for c in d.locked if not c.same)
        out.append(f"⚠️ Not comparable: the locked keys {bad} differ.")
    if d.locked:
        rows = [[code(c.key), code(c.a), code(c.b), "✅" if c.same else "❌"] for c in d.locked]
        out += ["", *table(["locked key", f"`{d.a}`", f"`{d.b}`", "same"], rows)]
    return [*out, ""]


def diff_markdown(d: DiffResult, level: int = 2) -> str:
    """`mlfork diff A B --md`."""
    h = "#" * (level + 1)
    lines = [
        f"{'#' * level} `{d.a}` vs `{d.b}`",
        "",
        f"They part at {_at(d.fork_point)}.",
        "",
        *overrides_section(d, h),
        *config_section(d, h),
        *metrics_section(d, h),
        *locked_section(d, h),
    ]
    return "\n".join(lines).rstrip() + "\n"


# -- report ------------------------------------------------------------------------------------


def mermaid(project: Project, chains: list[list[Link]], fork: str, base: str) -> list[str]:
    """The lineage as a Mermaid graph: runs as nodes (status, headline), forks as edges
    labelled with the fork point."""
    names: list[str] = []
    edges: list[tuple[str, str, str]] = []
    for chain in chains:
        for k, link in enumerate(chain):
            if link.run not in names:
                names.append(link.run)
            if k > 0:
                at = plot.where(link.iteration, link.step, link.until == link.iteration)
                edge = (chain[k - 1].run, link.run, f"@{at}")
                if edge not in edges:
                    edges.append(edge)
    ids = {name: f"r{i}" for i, name in enumerate(names)}
    lines = ["```mermaid", "graph LR"]
    for name in names:
        info = lineage.run_info(project, name)
        label = f"{name}<br/>{info.status} {info.done}/{info.budget}"
        if info.headline and info.headline_value is not None:
            label += f"<br/>{info.headline} {info.headline_value:.4f}"
        lines.append(f'  {ids[name]}["{label}"]')
    for src, dst, label in edges:
        lines.append(f'  {ids[src]} -->|"{label}"| {ids[dst]}')
    lines.append("  classDef fork stroke:#2da44e,stroke-width:3px")
    lines.append("  classDef base stroke:#0969da,stroke-width:3px")
    lines.append(f"  class {ids[fork]} fork")
    if base != fork:
        lines.append(f"  class {ids[base]} base")
    lines.append("```")
    return lines


def reproduce(project: Project, fork: str) -> list[str]:
    """The commands that make the fork again from its parent's checkpoint."""
    from mlfork.ops.running.remake import remake

    return remake(project, lineage.record(project, fork), fork).commands


def report(
    path: str | os.PathLike[str] = ".",
    fork: str | None = None,
    *,
    base: str | None = None,
    output: str | os.PathLike[str] = "report.md",
    assets: str | os.PathLike[str] | None = None,
    force: bool = False,
    source: stitch.Source = "auto",
) -> ReportResult:
    """`mlfork report FORK`: write the pull-request report of FORK against BASE (default:
    its parent) to `output`, and its plot into `assets` (default: the report's folder)."""
    project = Project.open(path, require_dvc=False)
    fork = lineage.resolve_run(project, fork)
    rec = lineage.record(project, fork)
    chain = chain_from_git(project, fork)
    ancestors = [link.run for link in chain[:-1]]
    if base is None:
        if rec.parent is None:
            raise UsageError(
                f"run '{fork}' is not a fork: give --base RUN to compare it with another run"
            )
        base = rec.parent.run
    base = lineage.resolve_run(project, base)
    if base == fork:
        raise UsageError(f"--base is '{fork}' itself: pick one of its ancestors")
    forced = base not in ancestors
    if forced and not force:
        shown = " → ".join([*ancestors, fork])
        raise UsageError(
            f"'{base}' is not an ancestor of '{fork}' (lineage: {shown}): pick one of those"
            " with --base, or add --force to compare anyway"
        )
    target = plot.check_output(output, "report")
    folder = plot.check_folder(assets, "assets folder") if assets is not None else target.parent

    df = stitch.metrics(path, [base, fork], source=source)
    d = diffs.diff(path, base, fork, source=source, frame=df)
    chains = {base: chain_from_git(project, base), fork: chain}
    image = None
    files: list[tuple[Path, bytes]] = []
    metric = d.headline if d.headline in set(df["metric"]) else (
        str(sorted(df["metric"].unique())[0]) if len(df) else None
    )
    if metric is not None:
        fig, _ = plot.build_figure(
            df, chains, [base, fork], metric,
            title=f"{metric}: {fork} against {base}",
        )
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"{fork}-{metric}")
        image = folder / f"{safe}.png"
        files.append((image, plot.render(fig, ".png")))
    step_image, series = None, None
    steps = stitch.steps(path, [base, fork], source=source)
    if len(steps):
        names = sorted(str(n) for n in steps["metric"].unique())
        series = metric if metric in names else names[0]
        fig, _ = plot.build_figure(steps[steps["metric"] == series], chains, [base, fork],
                                   series, "step", title=f"{series} per step: {fork} against"
                                                         f" {base}")
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_"
                       for ch in f"{fork}-steps-{series}")
        step_image = folder / f"{safe}.png"
        files.append((step_image, plot.render(fig, ".png")))
    text = _markdown(project, d, fork, base, rec, chains, forced, image, target, df)
    if step_image is not None:
        rel = os.path.relpath(step_image, target.parent).replace(os.sep, "/")
        text = text.replace(STEP_SLOT, f"![{series} per step: {fork} against {base}]({rel})\n\n"
                            "Per-step series on the global step axis (it goes on across"
                            " iterations and forks).\n")
    text = text.replace(STEP_SLOT + "\n", "")
    files.append((target, text.encode("utf-8")))
    plot.write_files(files)
    return ReportResult(
        fork=fork, base=base, path=str(target), image=str(image) if image else None,
        metric=metric, comparable=d.comparable, forced=forced, markdown=text,
        source_note=d.source_note, step_image=str(step_image) if step_image else None,
    )


def _markdown(
    project: Project, d: DiffResult, fork: str, base: str, rec: Any,
    chains: dict[str, list[Link]], forced: bool, image: Path | None, target: Path, df: Any,
) -> str:
    h = "###"
    lines = [marker(fork), f"## mlfork report: `{fork}`", ""]
    p = rec.parent
    if p is not None:
        first = lineage.inherited_until(p.iteration, p.step, rec.stages) + 1
        last = d.b_iteration
        if last is None or last < first:
            span = "no iteration of its own yet"
        else:
            span = f"iteration {first}" if last == first else f"iterations {first} to {last}"
        where = (
            f"after iteration {p.iteration}" if first == p.iteration + 1
            else f"inside iteration {p.iteration}, after stage `{p.step}`"
        )
        lines.append(
            f"**`{fork}`** (branch `{naming.branch_name(fork)}`) forks **`{p.run}`** {where}"
            f" (commit `{p.commit[:10]}`) and ran {span}."
        )
    else:
        lines.append(f"**`{fork}`** (branch `{naming.branch_name(fork)}`) is a root run.")
    if rec.merged:
        lines.append(
            f"It is a merge ({(rec.merge or {}).get('strategy', 'mean')}) of the checkpoints of "
            + ", ".join(f"`{m.get('run')}`@{m.get('iteration')} (×{float(m.get('weight', 0)):.4g})"
                        for m in rec.merged) + "."
        )
    lines.append(f"Compared with **`{base}`**; they part at {_at(d.fork_point)}.")
    head = next((m for m in d.metrics if m.metric == d.headline), None)
    if head is not None:
        lines.append(
            f"Headline `{head.metric}` ({arrow(head.metric)}): {num(head.a)} → {num(head.b)}"
            f" ({num(head.b_minus_a, True)}, {badge(head.verdict)})."
        )
    lines.append("")
    if forced:
        lines += [
            f"> [!WARNING]\n> `{base}` is not an ancestor of `{fork}`: compared anyway"
            " (`--force`).",
            "",
        ]
    if not d.comparable:
        lines += ["> [!CAUTION]\n> The locked keys differ: the metrics are not comparable.", ""]
    lines += [f"{h} Lineage", ""]
    lines += mermaid(project, [chains[base], chains[fork]], fork, base)
    lines.append("")
    lines += overrides_section(d, h)
    lines += config_section(d, h)
    lines += metrics_section(d, h)
    lines += [f"{h} Curves", ""]
    if image is not None:
        rel = os.path.relpath(image, target.parent).replace(os.sep, "/")
        lines += [
            f"![{d.headline or 'metric'}: {fork} against {base}]({rel})",
            "",
            "Stitched curves (inherited points faint); dashed lines mark the fork points.",
            "",
        ]
    elif not d.metrics_logged:
        lines += ["The project logs no metrics: nothing to plot.", ""]
    else:
        lines += ["No metric point was logged yet: nothing to plot.", ""]
    lines.append(STEP_SLOT)
    lines += locked_section(d, h)
    lines += [f"{h} Reproduce", "", "```sh", *reproduce(project, fork), "```", ""]
    source = "the tracking store" if df.attrs.get("source") == "tracking" else "git"
    from mlfork import __version__

    lines.append(
        f"<sub>Generated by mlfork {__version__}; metrics read from {source}; `{fork}` at"
        f" `{lineage.tip(project, fork)[:10]}`.</sub>"
    )
    return "\n".join(lines).rstrip() + "\n"
