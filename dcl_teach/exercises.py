"""Self-checks for the course exercises: a precise verdict, and never a broken "Run All".

An exercise in a notebook is three cells, tied together by the cell metadata
``{"exercise": "2.1"}`` and told apart by their tags:

* ``exercise``: the stub the learner fills in (``raise NotImplementedError`` until then);
* ``check``: ``verdict = check("2.1", learner_fn, *args, expected=...)``, comparing with the
  ``dcl_teach`` reference and printing which entries differ and by how much;
* ``solution``: a hidden cell with one answer, defining the same name.

An unfinished exercise prints "not yet implemented" and the notebook carries on with the
reference; an exercise that raises prints the error instead of stopping the notebook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """Outcome of a self-check: ``status`` is "correct", "wrong", "missing" or "error"."""

    exercise: str
    status: str
    message: str

    @property
    def ok(self) -> bool:
        """True when the learner's answer matches the reference."""
        return self.status == "correct"


def _as_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        # complex answers are compared on both parts
        return [torch.view_as_real(value) if value.is_complex() else value]
    if isinstance(value, (int, float)):
        return [torch.tensor(float(value), dtype=torch.float64)]
    if hasattr(value, "__array__"):  # numpy arrays and scalars
        return _as_tensors(torch.as_tensor(value))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [t for v in value for t in _as_tensors(v)]
    raise TypeError(f"expected a tensor, a number or a tuple of them, got {type(value).__name__}")


def compare(got: object, expected: object, *, atol: float = 1e-6, rtol: float = 1e-5) -> str | None:
    """Describe how ``got`` differs from ``expected``; ``None`` when they agree.

    Args:
        got: tensor, number, or tuple of them.
        expected: the reference, same structure.
        atol: absolute tolerance.
        rtol: relative tolerance.

    Returns:
        ``None``, or a sentence naming the first mismatching output, how many entries differ,
        and the largest difference with its index.

    Example:
        >>> compare(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 3.0]))
        'output 0: 1 of 3 entries differ; largest |diff| = 0.5 at index (1,) (yours 2, expected 2.5)'

    Taught in notebook 01.
    """
    try:
        got_t = _as_tensors(got)
    except TypeError as err:
        return f"your answer has the wrong type: {err}"
    exp_t = _as_tensors(expected)
    if len(got_t) != len(exp_t):
        return f"expected {len(exp_t)} output(s), got {len(got_t)}"
    for k, (g, e) in enumerate(zip(got_t, exp_t)):
        if g.shape != e.shape:
            return f"output {k}: shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        g64, e64 = g.detach().to(torch.float64).cpu(), e.detach().to(torch.float64).cpu()
        diff = (g64 - e64).abs()  # same shape as e
        same = g64 == e64  # equal infinities match although inf - inf is nan
        diff = torch.where(same, torch.zeros_like(diff), diff)
        bad = ~(same | (diff <= atol + rtol * e64.abs()))  # NaN counts as a mismatch
        if bad.any():
            flat = int(
                torch.where(bad.flatten(), diff.flatten().nan_to_num(float("inf")), -1).argmax()
            )
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape))
            return (
                f"output {k}: {int(bad.sum())} of {e.numel()} entries differ; largest |diff| = "
                f"{diff.flatten()[flat].item():.3g} at index {idx} "
                f"(yours {g64.flatten()[flat].item():.6g}, expected {e64.flatten()[flat].item():.6g})"
            )
    return None


def check(
    exercise: str,
    fn: Callable[..., object],
    *args: object,
    expected: object,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    quiet: bool = False,
    **kwargs: object,
) -> Verdict:
    """Run the learner's ``fn(*args, **kwargs)``, compare with ``expected`` and print the verdict.

    Args:
        exercise: its number, e.g. "2.1".
        fn: the learner's function.
        *args: positional arguments for ``fn``.
        expected: the reference answer (computed with ``dcl_teach``).
        atol: absolute tolerance.
        rtol: relative tolerance.
        quiet: do not print.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        The :class:`Verdict`; it never raises for a wrong or unfinished answer.

    Example:
        >>> def stub(x):
        ...     raise NotImplementedError
        >>> check("0.1", stub, 1.0, expected=2.0).status
        Exercise 0.1: not yet implemented. The notebook carries on with the reference solution.
        'missing'
        >>> check("0.1", lambda x: 2 * x, 1.0, expected=2.0).ok
        Exercise 0.1: correct (max |diff| 0 over 1 entry).
        True

    Taught in notebook 00.
    """
    try:
        got = fn(*args, **kwargs)
    except NotImplementedError:
        v = Verdict(
            exercise,
            "missing",
            f"Exercise {exercise}: not yet implemented. The notebook carries on with the "
            "reference solution.",
        )
    except Exception as err:  # any learner error must not stop "Run All"
        v = Verdict(
            exercise, "error", f"Exercise {exercise}: your code raised {type(err).__name__}: {err}"
        )
    else:
        problem = compare(got, expected, atol=atol, rtol=rtol)
        if problem is None:
            worst, n = 0.0, 0
            for g, e in zip(_as_tensors(got), _as_tensors(expected)):
                g64, e64 = g.detach().double().cpu(), e.detach().double().cpu()
                d = torch.where(g64 == e64, torch.zeros_like(g64), (g64 - e64).abs())
                if d.numel():
                    worst = max(worst, d.max().item())
                n += e.numel()
            entries = "entry" if n == 1 else "entries"
            v = Verdict(
                exercise,
                "correct",
                f"Exercise {exercise}: correct (max |diff| {worst:.2g} over {n} {entries}).",
            )
        else:
            v = Verdict(exercise, "wrong", f"Exercise {exercise}: not yet right: {problem}.")
    if not quiet:
        print(v.message)
    return v
