"""A run's lineage as a chain of links, root first: from git (the run records) or, without a
project, from the `mlfork.lineage` tags of the tracking store; and the segments of a chain
whose points a stitched series shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mlfork import naming
from mlfork.errors import NotFound
from mlfork.ops.kernel import lineage
from mlfork.ops.kernel.project import Project

if TYPE_CHECKING:
    from mlfork.adapters.tracking.reader import IndexedRun


Mode = Literal["stitched", "own"]


class NotIndexed(NotFound):
    """A run of the lineage is missing from the tracking store."""

    def __init__(self, run: str, uri: str) -> None:
        from mlfork.adapters.tracking.store import redact_uri

        super().__init__(
            f"run '{run}' is not in the tracking store {redact_uri(uri)}: run 'mlfork sync'"
            " to index it (or read from git with --source git)"
        )
        self.run = run


@dataclass(frozen=True)
class Link:
    """One run of a lineage (root first). `until` is the last iteration whose points it
    inherits from the previous link (None for the root); `iteration`/`step` is its fork
    point on the previous link."""

    run: str
    until: int | None = None
    iteration: int | None = None
    step: str | None = None


@dataclass(frozen=True)
class Segment:
    """The points one run contributes to a stitched series: first <= iteration <= last."""

    owner: str
    first: int | None
    last: int | None


def chain_from_git(project: Project, run: str) -> list[Link]:
    """The lineage of `run`, root first, from the run records in git."""
    rec = lineage.record(project, run)
    links = [Link(run)]
    seen = {run}
    while rec.parent is not None and rec.parent.run not in seen:
        p = rec.parent
        until = lineage.inherited_until(p.iteration, p.step, rec.stages)
        links[0] = Link(links[0].run, until, p.iteration, p.step)
        links.insert(0, Link(p.run))
        seen.add(p.run)
        parent_rec = project.read_record(p.commit)
        if parent_rec is None or parent_rec.name != p.run:
            break
        rec = parent_rec
    return links


def chain_from_tags(index: dict[str, IndexedRun], run: str, uri: str = "") -> list[Link]:
    """The lineage of `run`, root first, from the tracking store's tags: the `mlfork.lineage`
    JSON of the run, and each fork's `mlfork.inherited_until`."""
    if run not in index:
        raise NotIndexed(run, uri)
    names: list[tuple[str, int | None, str | None]] = []
    try:
        chain = json.loads(index[run].tags.get(naming.TAG_LINEAGE) or "")
        names = [(str(c["run"]), c.get("iteration"), c.get("step")) for c in chain]
    except (ValueError, TypeError, KeyError):
        names = []
    if not names or names[-1][0] != run:  # no (or a truncated) lineage tag: walk the parents
        names = []
        current: str | None = run
        while current is not None and current not in {n for n, _, _ in names}:
            tags = index[current].tags if current in index else {}
            fork_it = tags.get(naming.TAG_FORK_ITERATION)
            names.insert(
                0,
                (current, int(fork_it) if fork_it else None, tags.get(naming.TAG_FORK_STEP)),
            )
            current = tags.get(naming.TAG_PARENT_RUN)
    links = []
    for k, (name, iteration, step) in enumerate(names):
        if k == 0:
            links.append(Link(name))
            continue
        if name not in index:
            raise NotIndexed(name, uri)
        until_tag = index[name].tags.get(naming.TAG_INHERITED_UNTIL)
        until = int(until_tag) if until_tag not in (None, "") else iteration
        links.append(Link(name, until, iteration, step))
    return links


def segments(chain: Sequence[Link], mode: Mode = "stitched") -> list[Segment]:
    """Which run owns which iterations of the stitched series (empty ranges dropped)."""
    out = []
    for k, link in enumerate(chain):
        first = link.until + 1 if k > 0 and link.until is not None else None
        last = chain[k + 1].until if k + 1 < len(chain) else None
        if first is not None and last is not None and first > last:
            continue
        out.append(Segment(link.run, first, last))
    return out[-1:] if mode == "own" else out
