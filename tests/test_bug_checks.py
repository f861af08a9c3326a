"""The reference tests of dcl_teach.bug_checks pass DCL and catch exactly the stated bugs.

Which test catches which broken loss of dcl_teach.bugs is pinned in ``CAUGHT``; ``grade_test``
is checked on every kind of learner's test (a stub, one that raises, wrong, right).
"""

import pytest

from dcl_teach import bug_checks, bugs
from dcl_teach.exercises import Verdict, check

CAUGHT = {  # which reference test catches which bug (it fails the broken loss)
    "two logsumexps": {"identical", "aligned-orthogonal", "gradient", "anti-aligned"},
    "eps mask": {"identical", "aligned-orthogonal", "below zero", "gradient", "anti-aligned"},
    "forgot normalize": {"rescaling", "bounds"},
    "all_gather": {"gradient"},
    "positive on diagonal": {"gradient", "anti-aligned"},
    "sum, not mean": {"identical", "aligned-orthogonal", "gradient", "anti-aligned", "bounds"},
}


@pytest.mark.parametrize("test_name", list(bug_checks.TESTS))
def test_every_reference_test_passes_dcl(test_name):
    assert bug_checks.TESTS[test_name](bugs.dcl_reference) is True


@pytest.mark.parametrize("bug", list(bugs.BROKEN))
def test_which_test_catches_which_bug(bug):
    caught = {name for name, test in bug_checks.TESTS.items() if not test(bugs.BROKEN[bug])}
    assert caught == CAUGHT[bug]


def _stub(loss):
    raise NotImplementedError


def _raises(loss):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "test,status,words",
    [
        (_stub, "missing", "not yet implemented"),
        (_raises, "error", "on the broken loss, your test raised RuntimeError: boom"),
        (lambda loss: True, "wrong", "passes the broken loss (it must fail it)"),
        (lambda loss: False, "wrong", "fails the correct loss (it must pass it)"),
        (
            lambda loss: not bug_checks.passes_identical(loss),
            "wrong",
            "passes the broken loss (it must fail it) and fails",
        ),
        (
            bug_checks.passes_identical,
            "correct",
            "fails the broken loss and passes the correct one",
        ),
        (lambda loss: None, "wrong", "a test must return True or False; expected a tensor"),
    ],
)
def test_grade_test(test, status, words, capsys):
    verdict = bug_checks.grade_test(
        check("9.1", test, bugs.dcl_two_logsumexps, expected=False, quiet=True),
        check("9.1", test, bugs.dcl_reference, expected=True, quiet=True),
    )
    assert verdict.status == status and words in verdict.message
    assert capsys.readouterr().out.strip() == verdict.message


def test_grade_test_rejects_two_exercises():
    with pytest.raises(ValueError, match="9.1 and 9.2"):
        bug_checks.grade_test(Verdict("9.1", "correct", ""), Verdict("9.2", "correct", ""))
