"""Self-checks of the exercises: precise verdicts, and a notebook that never stops on them."""

import dataclasses

import pytest
import torch

from dcl_teach.exercises import Verdict, check, compare


def _raise(error: Exception):
    def fn(*args, **kwargs):
        raise error

    return fn


# --- compare ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "got, expected",
    [
        (torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])),
        (2.0, torch.tensor(2.0, dtype=torch.float64)),  # a Python float against a 0-dim tensor
        (3, 3.0),
        ((torch.ones(2), 1.5), (torch.ones(2), torch.tensor(1.5))),  # tuples, element by element
        (torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64)),  # dtypes mix
        (torch.tensor([True, False]), torch.tensor([True, False])),  # boolean masks
        (torch.ones(3, requires_grad=True) * 1.0, torch.ones(3)),  # a tensor that carries grad
    ],
)
def test_compare_accepts_equal_answers(got, expected):
    assert compare(got, expected) is None


def test_compare_names_the_worst_entry_of_a_matrix():
    expected = torch.zeros(3, 4)
    got = expected.clone()
    got[0, 1] = 0.01
    got[2, 3] = -0.5  # the largest difference
    msg = compare(got, expected)
    assert msg == (
        "output 0: 2 of 12 entries differ; largest |diff| = 0.5 at index (2, 3) "
        "(yours -0.5, expected 0)"
    )


def test_compare_names_which_output_of_a_tuple_differs():
    a, b = torch.ones(2), torch.ones(2)
    msg = compare((a, b + 1), (a, b))
    assert msg is not None and msg.startswith("output 1: 2 of 2 entries differ")


def test_compare_reports_shape_and_count_mismatches():
    assert (
        compare(torch.zeros(2, 3), torch.zeros(3, 2)) == "output 0: shape (2, 3), expected (3, 2)"
    )
    assert compare(torch.zeros(2), (torch.zeros(2), torch.zeros(1))) == (
        "expected 2 output(s), got 1"
    )


def test_compare_treats_nan_as_a_mismatch_and_points_at_it():
    msg = compare(torch.tensor([0.0, float("nan"), 5.0]), torch.tensor([0.0, 1.0, 2.0]))
    # Two entries are wrong; the NaN is reported even though |diff| = 3 is a real number.
    assert msg is not None and "2 of 3 entries differ" in msg and "index (1,)" in msg
    assert "yours nan" in msg


def test_compare_reports_a_wrong_type_instead_of_raising():
    assert compare("0.5", torch.tensor(0.5)) == (
        "your answer has the wrong type: expected a tensor, a number or a tuple of them, got str"
    )
    assert "got NoneType" in compare(None, torch.tensor(0.5))  # a function without `return`


@pytest.mark.parametrize("scale", [1.0, 1e6])
def test_compare_tolerance_is_absolute_plus_relative(scale):
    expected = torch.tensor([scale], dtype=torch.float64)
    bound = 1e-6 + 1e-5 * scale  # atol + rtol * |expected|, the defaults
    assert compare(expected + 0.9 * bound, expected) is None
    assert compare(expected + 1.1 * bound, expected) is not None
    assert compare(expected + 1.1 * bound, expected, atol=2 * bound) is None


def test_compare_accepts_equal_infinities():
    inf = float("inf")
    assert compare(torch.tensor([inf, -inf, 1.0]), torch.tensor([inf, -inf, 1.0])) is None


# --- check -----------------------------------------------------------------------------------


def test_check_reports_a_stub_as_missing(capsys):
    verdict = check("1.1", _raise(NotImplementedError()), 3, expected=torch.zeros(3))
    assert verdict == Verdict(
        "1.1",
        "missing",
        "Exercise 1.1: not yet implemented. The notebook carries on with the reference solution.",
    )
    assert not verdict.ok
    assert capsys.readouterr().out == verdict.message + "\n"


def test_check_reports_an_error_without_raising(capsys):
    verdict = check("2.2", _raise(IndexError("index 9 is out of bounds")), expected=torch.zeros(1))
    assert verdict.status == "error" and not verdict.ok
    assert verdict.message == "Exercise 2.2: your code raised IndexError: index 9 is out of bounds"
    assert capsys.readouterr().out.strip() == verdict.message


def test_check_reports_a_wrong_answer_with_the_difference(capsys):
    verdict = check("0.2", lambda n: n, 5, expected=torch.tensor(2.1972))
    assert verdict.status == "wrong" and not verdict.ok
    assert verdict.message.startswith(
        "Exercise 0.2: not yet right: output 0: 1 of 1 entries differ"
    )
    assert "(yours 5, expected 2.1972)" in verdict.message
    assert capsys.readouterr().out.strip() == verdict.message


def test_check_reports_a_missing_return_as_wrong_not_as_a_crash():
    def forgot_return(x):
        x * 2

    assert check("0.1", forgot_return, 1.0, expected=2.0, quiet=True).status == "wrong"


def test_check_accepts_a_correct_answer_and_counts_every_entry(capsys):
    expected = (torch.ones(2, 2), torch.tensor([1.0, 2.0, 3.0]))
    verdict = check(
        "1.3", lambda: (torch.ones(2, 2), torch.tensor([1.0, 2.0, 3.0])), expected=expected
    )
    assert verdict.ok and verdict.status == "correct"
    assert verdict.message == "Exercise 1.3: correct (max |diff| 0 over 7 entries)."
    assert capsys.readouterr().out.strip() == verdict.message


def test_check_reports_the_worst_difference_over_all_outputs():
    expected = (torch.zeros(2), torch.zeros(3))
    got = (torch.tensor([0.0, 2e-7]), torch.tensor([0.0, 0.0, 5e-7]))
    verdict = check("9.1", lambda: got, expected=expected, quiet=True)
    assert verdict.ok and "max |diff| 5e-07 over 5 entries" in verdict.message


def test_check_forwards_arguments_and_tolerances():
    def scaled(x, *, factor):
        return x * factor

    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert check("9.2", scaled, x, factor=2.0, expected=2 * x, quiet=True).ok
    off = 2 * x + 1e-4
    assert not check("9.2", scaled, x, factor=2.0, expected=off, quiet=True).ok
    assert check("9.2", scaled, x, factor=2.0, expected=off, atol=1e-3, quiet=True).ok


def test_check_quiet_prints_nothing(capsys):
    check("9.3", _raise(NotImplementedError()), expected=1.0, quiet=True)
    check("9.3", lambda: 1.0, expected=1.0, quiet=True)
    assert capsys.readouterr().out == ""


def test_the_notebook_idiom_falls_back_to_the_reference():
    # The check cell of every exercise: `fn = learner_fn if verdict.ok else reference_fn`.
    def reference(n):
        return torch.arange(n) * 2

    for learner, uses_learner in (
        (_raise(NotImplementedError()), False),  # unfinished
        (lambda n: torch.arange(n) * 3, False),  # wrong
        (_raise(RuntimeError("shape mismatch")), False),  # crashing
        (lambda n: torch.arange(n) + torch.arange(n), True),  # correct
    ):
        verdict = check("9.4", learner, 4, expected=reference(4), quiet=True)
        fn = learner if verdict.ok else reference
        assert (fn is learner) == uses_learner
        assert torch.equal(fn(4), reference(4))


def test_verdict_is_immutable():
    verdict = Verdict("1.1", "correct", "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.status = "wrong"


def test_check_never_raises_for_empty_outputs():
    verdict = check("9.5", lambda: torch.zeros(0), expected=torch.zeros(0), quiet=True)
    assert verdict.ok


def test_numpy_answers_are_compared_not_rejected():
    import numpy as np

    from dcl_teach.exercises import compare

    assert compare(np.array([1.0, 2.0]), torch.tensor([1.0, 2.0])) is None
    assert compare(np.float32(2.0), 2.0) is None
    assert "1 of 2 entries differ" in compare(np.array([1.0, 3.0]), torch.tensor([1.0, 2.0]))


def test_complex_answers_are_compared_on_both_parts():
    from dcl_teach.exercises import compare

    a = torch.tensor([1 + 1j, 2 + 0j])
    assert compare(a, a.clone()) is None
    assert compare(torch.tensor([1 + 2j, 2 + 0j]), a) is not None
