"""Unit tests of mlfork.naming: every name mlfork writes has a format/parse pair that
round-trips, and run names are exactly the ones git accepts under refs/heads/mlfork/."""

from __future__ import annotations

import string
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlfork import naming
from mlfork.naming import (
    Trailers,
    branch_name,
    format_checkpoint_message,
    format_record_message,
    format_trailers,
    is_valid_run_name,
    parse_trailers,
    ref_name,
    run_from_ref,
)

VALID_NAMES = ["base", "a.b-c_1", "A", "0", "run-1", "lr.0.05", "x" * 64, "a_", "a-"]
INVALID_NAMES = [
    "../x",
    "a b",
    "refs/x",
    "-x",
    "x/y",
    "",
    "x" * 65,
    "x.lock",
    "a..b",
    ".x",
    "_x",
    "x.",
    "x~1",
    "x^",
    "x:y",
    "x?",
    "x*",
    "x[1]",
    "x\\y",
    "x@{1}",
    "x\n",
    "\nx",
    " x",
    "é",
]

# Run names as the design spells them (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`), minus the
# spellings git refuses in a ref name; the filter keeps the strategy honest if the rule moves.
run_names = st.from_regex(naming.RUN_NAME_RE, fullmatch=True).filter(is_valid_run_name)

# DVC stage names: no punctuation except `_` and `-` (dvc.stage.INVALID_STAGENAME_CHARS),
# plus the `@key` suffix of foreach/matrix stages.
stage_names = st.builds(
    lambda base, key: base + (f"@{key}" if key else ""),
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=30)
    | st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=12),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)),
)
iterations = st.integers(min_value=0, max_value=10**12)
bodies = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)


# -- run names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_run_names(name: str) -> None:
    assert is_valid_run_name(name)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_run_names(name: str) -> None:
    assert not is_valid_run_name(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=run_names)
def test_valid_run_names_are_valid_git_branch_names(name: str) -> None:
    """An independent reader: git itself accepts every name mlfork accepts."""
    proc = subprocess.run(
        ["git", "check-ref-format", ref_name(name)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git refuses {ref_name(name)!r}"


@given(name=st.text(max_size=80))
def test_names_outside_the_pattern_are_refused(name: str) -> None:
    if naming.RUN_NAME_RE.fullmatch(name) is None:
        assert not is_valid_run_name(name)


# -- branch and ref names ----------------------------------------------------------------------


def test_branch_and_ref_names() -> None:
    assert branch_name("base") == "mlfork/base"
    assert ref_name("base") == "refs/heads/mlfork/base"


@given(name=run_names)
def test_run_from_ref_round_trips(name: str) -> None:
    assert run_from_ref(ref_name(name)) == name
    assert run_from_ref(branch_name(name)) == name


@pytest.mark.parametrize(
    "ref",
    [
        "refs/heads/main",
        "main",
        "refs/heads/mlfork/",
        "mlfork/",
        "refs/heads/mlfork/a/b",
        "mlfork/a/b",
        "refs/heads/mlfork/../x",
        "refs/heads/mlfork/x.lock",
        "refs/tags/mlfork/base",
        "refs/remotes/origin/mlfork/base",
        "mlforkbase",
    ],
)
def test_run_from_ref_rejects_other_refs(ref: str) -> None:
    assert run_from_ref(ref) is None


@given(name=st.text(max_size=80).filter(lambda n: not is_valid_run_name(n)))
def test_run_from_ref_never_returns_an_invalid_name(name: str) -> None:
    assert run_from_ref(ref_name(name)) is None
    assert run_from_ref(branch_name(name)) is None


# -- commit messages and trailers --------------------------------------------------------------


def test_checkpoint_message_layout() -> None:
    message = format_checkpoint_message("base", 3, "train", "stage train ran in 1.00s")
    assert message == (
        "base: iteration 3 train\n\n"
        "stage train ran in 1.00s\n\n"
        "Mlfork-Run: base\nMlfork-Iteration: 3\nMlfork-Step: train\n"
    )


def test_checkpoint_message_without_body() -> None:
    assert format_checkpoint_message("base", 0, "evaluate") == (
        "base: iteration 0 evaluate\n\n"
        "Mlfork-Run: base\nMlfork-Iteration: 0\nMlfork-Step: evaluate\n"
    )


@given(run=run_names, iteration=iterations, step=stage_names, body=bodies)
def test_checkpoint_message_round_trips(run: str, iteration: int, step: str, body: str) -> None:
    message = format_checkpoint_message(run, iteration, step, body)
    assert message.splitlines()[0] == f"{run}: iteration {iteration} {step}"
    parsed = parse_trailers(message)
    assert parsed == Trailers(run, iteration, step)
    assert parsed is not None and parsed.is_checkpoint


@given(run=run_names, subject=st.text(alphabet=st.characters(categories=("L", "N", "Zs")),
                                      min_size=1, max_size=40), body=bodies)
def test_record_message_round_trips(run: str, subject: str, body: str) -> None:
    parsed = parse_trailers(format_record_message(run, subject, body))
    assert parsed == Trailers(run)
    assert parsed is not None and not parsed.is_checkpoint


@given(
    t=st.builds(
        Trailers,
        run=run_names,
        iteration=st.one_of(st.none(), iterations),
        step=st.one_of(st.none(), stage_names),
    )
)
def test_trailers_round_trip(t: Trailers) -> None:
    assert parse_trailers("subject\n\n" + format_trailers(t)) == t


@given(run=run_names, iteration=iterations, step=stage_names)
def test_trailers_survive_git_style_message_normalisation(
    run: str, iteration: int, step: str
) -> None:
    """`git log --format=%B` and pygit2 may hand the message back without its final newline."""
    message = format_checkpoint_message(run, iteration, step, "body")
    assert parse_trailers(message.rstrip("\n")) == Trailers(run, iteration, step)


@pytest.mark.parametrize(
    "message",
    [
        "",
        "\n\n",
        "fix a bug",
        "subject\n\nbody only",
        "mlfork init: example project\n",
        # trailers that are not in the last paragraph are not trailers
        "subject\n\nMlfork-Run: base\nMlfork-Iteration: 1\n\nSigned-off-by: someone",
        # a checkpoint trailer without the run trailer
        "subject\n\nMlfork-Iteration: 1\nMlfork-Step: train",
        "subject\n\nMlfork-Run:\nMlfork-Iteration: 1",
        # an iteration that is not a number
        "subject\n\nMlfork-Run: base\nMlfork-Iteration: one\nMlfork-Step: train",
    ],
)
def test_parse_trailers_of_non_mlfork_commits(message: str) -> None:
    assert parse_trailers(message) is None


def test_parse_trailers_among_other_trailers() -> None:
    message = (
        "base: iteration 2 train\n\nbody\n\n"
        "Mlfork-Run: base\nMlfork-Iteration: 2\nMlfork-Step: train\n"
        "Signed-off-by: A U Thor <a@example.com>\n"
    )
    assert parse_trailers(message) == Trailers("base", 2, "train")


@given(message=st.text(max_size=300))
def test_parse_trailers_never_raises(message: str) -> None:
    result = parse_trailers(message)
    assert result is None or isinstance(result, Trailers)


def test_replay_run_name_is_a_valid_run_name() -> None:
    assert naming.replay_run_name("base", 2) == "base-replay-2"
    assert is_valid_run_name(naming.replay_run_name("base", 2))
