"""`mlfork report`: the pull-request Markdown of a fork, parsed as Markdown (markdown-it, the
CommonMark parser with GitHub's tables), its plot image, bad inputs, and the GitHub Actions
example. Works on the project of test_compare (base, lr, lr2 = a fork of a fork, mid = a fork
inside an iteration, wine = a root run on another dataset; lr2 checked out)."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import test_compare
from conftest import cli, ok
from test_compare import git_series, unwritable_folder

import mlfork
from mlfork.errors import OutputPathError, UsageError

# the project of test_compare, built once per session (its fixtures, shared here)
review_template = test_compare.review_template
proj = test_compare.proj
review = test_compare.review

REPO = Path(__file__).resolve().parents[1]


def parse(text: str) -> list[Any]:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").parse(text)


def plain(inline: Any) -> str:
    """The text of an inline token, Markdown markup (code, emphasis) removed."""
    return "".join(c.content for c in inline.children or []
                   if c.type in ("text", "code_inline", "html_inline"))


def tables(tokens: list[Any]) -> list[list[list[str]]]:
    """Every table as rows of cell texts (header row first)."""
    out: list[list[list[str]]] = []
    row: list[str] | None = None
    for i, tok in enumerate(tokens):
        if tok.type == "table_open":
            out.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open"):
            assert row is not None
            row.append(plain(tokens[i + 1]))
        elif tok.type == "tr_close":
            out[-1].append(row or [])
    return out


def images(tokens: list[Any]) -> list[str]:
    return [child.attrGet("src") for tok in tokens if tok.type == "inline"
            for child in tok.children or [] if child.type == "image"]


def fences(tokens: list[Any], info: str) -> list[str]:
    return [tok.content for tok in tokens if tok.type == "fence" and tok.info == info]


def headings(tokens: list[Any]) -> list[str]:
    return [plain(tokens[i + 1]) for i, tok in enumerate(tokens) if tok.type == "heading_open"]


def table_with(tokens: list[Any], header: str) -> list[list[str]]:
    return next(t for t in tables(tokens) if t[0][0] == header)


def number(cell: str) -> float:
    return float(cell.replace("−", "-"))


# -- the report ----------------------------------------------------------------------------------


def test_report_of_a_fork_of_a_fork(proj: Path, tmp_path: Path) -> None:
    out = tmp_path / "pr" / "report.md"
    out.parent.mkdir()
    result = mlfork.report(str(proj), "lr2", output=str(out))
    assert (result.fork, result.base) == ("lr2", "lr")
    assert result.comparable and not result.forced
    text = out.read_text()
    assert text == result.markdown
    assert text.splitlines()[0] == "<!-- mlfork-report: lr2 -->"
    tokens = parse(text)
    assert tokens[0].type == "html_block" and "mlfork-report: lr2" in tokens[0].content
    assert headings(tokens) == [
        "mlfork report: lr2", "Lineage", "Overrides", "Config diff", "Metrics", "Curves",
        "Locked keys", "Reproduce",
    ]
    # the lineage: a Mermaid graph base -> lr -> lr2 with the fork points on the edges
    (graph,) = fences(tokens, "mermaid")
    nodes = dict(re.findall(r'^\s+(r\d+)\["(\w+)<br/>', graph, re.M))
    edges = {(nodes[a], nodes[b], label)
             for a, label, b in re.findall(r'(r\d+) -->\|"([^"]+)"\| (r\d+)', graph)}
    assert edges == {("base", "lr", "@1"), ("lr", "lr2", "@2")}
    assert graph.startswith("graph LR")
    # the image: a PNG next to the report, linked relatively
    (src,) = images(tokens)
    assert src == "lr2-accuracy.png" and result.image == str(out.parent / src)
    assert (out.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["lr2-accuracy.png", "report.md"]
    # the metrics: parent at the fork point, parent final, fork final, delta, verdict
    rows = table_with(tokens, "metric")
    assert rows[0][1:5] == ["lr at the fork point (it. 2)", "lr final (it. 3)",
                            "lr2 final (it. 3)", "Δ lr2 − lr"]
    lr, lr2 = git_series(proj, "lr"), git_series(proj, "lr2")
    for row in rows[1:]:
        metric = row[0].split()[0]
        at_fork, parent, fork, delta = (number(c) for c in row[1:5])
        assert at_fork == pytest.approx(lr[(2, metric)][1], abs=5e-5)
        assert parent == pytest.approx(lr[(3, metric)][1], abs=5e-5)
        assert fork == pytest.approx(lr2[(3, metric)][1], abs=5e-5)
        true_delta = lr2[(3, metric)][1] - lr[(3, metric)][1]
        assert delta == pytest.approx(true_delta, abs=5e-5)
        lower = metric == "log_loss"
        expected = ("same" if true_delta == 0 else
                    "better" if (true_delta < 0) == lower else "worse")
        assert row[5].endswith(expected)
    assert [r[0] for r in rows[1:]] == ["accuracy ↑ (headline)", "f1_macro ↑", "log_loss ↓"]
    # the overrides, the config diff, the locked keys
    assert table_with(tokens, "run")[2] == ["lr2", "model.lr=0.05 model.lr=0.01", "model.lr=0.01"]
    assert table_with(tokens, "key")[1:] == [["model.lr", "0.05", "0.01"]]
    assert "✅ Comparable" in text
    assert [r[0] for r in table_with(tokens, "locked key")[1:]] == ["dataset", "val_metric"]
    # the commands that make the fork again
    (commands,) = fences(tokens, "sh")
    assert commands.splitlines() == [
        "mlfork branch --from lr --from-iteration 2 --name lr2 --iterations 1 model.lr=0.01",
        "mlfork resume lr2",
    ]


def test_report_cli_defaults_to_the_run_checked_out_and_its_parent(review: Path) -> None:
    proc = ok(cli(review, "report"))
    assert proc.stdout.splitlines() == [str(review / "report.md"),
                                        str(review / "lr2-accuracy.png")]
    assert "report of 'lr2' against 'lr' written" in proc.stderr
    assert (review / "report.md").read_text().startswith("<!-- mlfork-report: lr2 -->\n")


def test_report_assets_folder_and_relative_link(proj: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    data = json.loads(ok(cli(proj, "report", "lr2", "-o", str(tmp_path / "out" / "r.md"),
                             "--assets", str(tmp_path / "assets"), "--json")).stdout)
    assert data["image"] == str(tmp_path / "assets" / "lr2-accuracy.png")
    (src,) = images(parse((tmp_path / "out" / "r.md").read_text()))
    assert src == "../assets/lr2-accuracy.png"
    assert (tmp_path / "out" / src).resolve() == (tmp_path / "assets" / "lr2-accuracy.png")


def test_report_against_an_older_ancestor(proj: Path, tmp_path: Path) -> None:
    result = mlfork.report(str(proj), "lr2", base="base", output=str(tmp_path / "r.md"))
    assert result.base == "base" and not result.forced
    rows = table_with(parse(result.markdown), "metric")
    assert rows[0][1:4] == ["base at the fork point (it. 1)", "base final (it. 2)",
                            "lr2 final (it. 3)"]
    assert "they part at `base` iteration 1 `evaluate`" in result.markdown


def test_report_of_a_fork_inside_an_iteration(proj: Path, tmp_path: Path) -> None:
    result = mlfork.report(str(proj), "mid", output=str(tmp_path / "r.md"))
    tokens = parse(result.markdown)
    (graph,) = fences(tokens, "mermaid")
    assert '-->|"@1/train"|' in graph
    (commands,) = fences(tokens, "sh")
    assert commands.splitlines()[0] == (
        "mlfork branch --from base --from-iteration 1 --from-step train --name mid"
        " --iterations 1"
    )
    assert table_with(tokens, "metric")[0][1] == "base at the fork point (it. 0)"


def test_base_that_is_not_an_ancestor_is_refused_unless_forced(proj: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    proc = cli(proj, "report", "lr2", "--base", "mid", "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "mlfork: error: 'mid' is not an ancestor of 'lr2' (lineage: base → lr → lr2): pick one"
        " of those with --base, or add --force to compare anyway"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="not an ancestor"):
        mlfork.report(str(proj), "lr2", base="wine", output=str(out))
    assert list(tmp_path.iterdir()) == []

    proc = ok(cli(proj, "report", "lr2", "--base", "mid", "--force", "-o", str(out)))
    assert "not an ancestor of 'lr2': compared anyway" in proc.stderr
    text = out.read_text()
    assert "> [!WARNING]" in text and "`mid` is not an ancestor of `lr2`" in text
    tokens = parse(text)
    (graph,) = fences(tokens, "mermaid")
    assert graph.count("-->") == 3  # base -> lr -> lr2 and base -> mid
    assert table_with(tokens, "metric")[0][1] == "mid at the fork point (it. 0)"


def test_report_across_a_locked_key_says_not_comparable(proj: Path, tmp_path: Path) -> None:
    result = mlfork.report(str(proj), "lr2", base="wine", force=True,
                           output=str(tmp_path / "r.md"))
    assert result.forced and not result.comparable
    assert "> [!CAUTION]" in result.markdown and "⚠️ Not comparable" in result.markdown
    rows = table_with(parse(result.markdown), "locked key")
    assert rows[1][0] == "dataset" and rows[1][3] == "❌"
    assert table_with(parse(result.markdown), "metric")[1][1] == "–"  # no shared checkpoint


def test_bad_inputs_write_nothing(proj: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["lr2", "-o", str(tmp_path / "missing" / "r.md")], 15, "does not exist"),
        (["lr2", "-o", str(tmp_path / "a-file" / "r.md")], 15, "does not exist"),
        (["lr2", "-o", str(tmp_path)], 15, "it is a folder"),
        (["lr2", "-o", str(tmp_path / "r.md"), "--assets", str(tmp_path / "x" / "y")], 15,
         "does not exist"),
        (["lr2", "-o", str(tmp_path / "r.md"), "--assets", str(tmp_path / "a-file")], 15,
         "it is a file"),
        (["nope", "-o", str(tmp_path / "r.md")], 6, "unknown run 'nope'"),
        (["lr2", "--base", "nope", "-o", str(tmp_path / "r.md")], 6, "unknown run 'nope'"),
        (["base", "-o", str(tmp_path / "r.md")], 2, "is not a fork: give --base"),
        (["lr2", "--base", "lr2", "-o", str(tmp_path / "r.md")], 2, "itself"),
    ]
    for args, code, message in cases:
        proc = cli(proj, "report", *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    with pytest.raises(OutputPathError):
        mlfork.report(str(proj), "lr2", output=str(tmp_path / "missing" / "r.md"))


def test_report_into_a_folder_that_cannot_be_written(proj: Path, tmp_path: Path) -> None:
    folder = unwritable_folder(tmp_path)
    before = sorted(os.listdir(folder))
    proc = cli(proj, "report", "lr2", "-o", str(folder / "mlfork-report.md"))
    assert proc.returncode == 15 and "cannot write" in proc.stderr
    assert sorted(os.listdir(folder)) == before
    # the report's folder is writable, the assets' is not: neither file is written
    out = tmp_path / "ok" / "r.md"
    out.parent.mkdir()
    proc = cli(proj, "report", "lr2", "-o", str(out), "--assets", str(folder))
    assert proc.returncode == 15
    assert list(out.parent.iterdir()) == [] and sorted(os.listdir(folder)) == before


@pytest.mark.slow
def test_the_reproduce_commands_make_the_same_fork(review: Path, tmp_path: Path) -> None:
    text = mlfork.report(str(review), "lr2", output=str(tmp_path / "r.md")).markdown
    (commands,) = fences(parse(text), "sh")
    for line in commands.replace("lr2", "lr2again").splitlines():
        args = shlex.split(line)
        assert args[0] == "mlfork"
        ok(cli(review, *args[1:]))
    again = mlfork.metrics(str(review), "lr2again", source="git")
    first = mlfork.metrics(str(review), "lr2", source="git")
    assert again.value.tolist() == first.value.tolist()
    assert again.owner.tolist() == ["lr2again" if o == "lr2" else o for o in first.owner]
