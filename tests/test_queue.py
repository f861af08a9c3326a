import pytest
import torch

from dcl_teach.losses import dcl
from dcl_teach.queue import MemoryQueue


def batches(sizes, d=3, *, seed=0):
    """Batches whose rows are numbered 0, 1, 2, ... in column 0, so the FIFO order is readable."""
    start, out = 0, []
    for b in sizes:
        z = torch.randn(b, d, generator=torch.Generator().manual_seed(seed + start))
        z[:, 0] = torch.arange(start, start + b, dtype=z.dtype)
        out.append(z)
        start += b
    return out


def ids(queue):
    return sorted(int(v) for v in queue.negatives[:, 0].tolist())


@pytest.mark.parametrize(
    "size,sizes",
    [(5, [2, 2, 2, 2]), (4, [4, 4]), (3, [1] * 7), (6, [5, 4]), (4, [7]), (4, [3, 9, 1])],
)
def test_keeps_the_most_recent_rows_fifo(size, sizes):
    queue = MemoryQueue(size, 3)
    total = 0
    for z in batches(sizes):
        queue.enqueue(z)
        total += z.shape[0]
        expected = list(range(max(0, total - size), total))  # the last `size` rows seen
        assert len(queue) == len(expected)
        assert ids(queue) == expected


def test_rows_are_stored_exactly_and_in_order_until_full():
    queue = MemoryQueue(10, 3, dtype=torch.float64)
    a, b = batches([3, 4])
    queue.enqueue(a)
    queue.enqueue(b)
    torch.testing.assert_close(queue.negatives, torch.cat([a, b]).double(), rtol=0, atol=0)


def test_enqueue_detaches_and_negatives_never_require_grad():
    w = torch.randn(3, 3, requires_grad=True)
    z = torch.randn(4, 3) @ w  # part of a graph
    queue = MemoryQueue(8, 3)
    queue.enqueue(z)
    assert not queue.negatives.requires_grad and queue.negatives.grad_fn is None
    z.sum().backward()  # the graph is untouched by the queue
    assert w.grad is not None


def test_state_dict_round_trip_resumes_the_ring():
    a, b, c = batches([3, 3, 3])
    queue = MemoryQueue(5, 3)
    queue.enqueue(a)
    queue.enqueue(b)  # full, the write position has wrapped
    state = queue.state_dict()
    assert set(state) == {"rows", "head", "count"}
    other = MemoryQueue(5, 3)
    other.load_state_dict(state)
    assert len(other) == 5 and ids(other) == ids(queue)
    queue.enqueue(c)
    other.enqueue(c)
    assert ids(other) == ids(queue) == [4, 5, 6, 7, 8]
    torch.testing.assert_close(other.negatives, queue.negatives, rtol=0, atol=0)


def test_state_dict_of_a_partly_filled_queue():
    queue = MemoryQueue(6, 3)
    queue.enqueue(batches([2])[0])
    other = MemoryQueue(6, 3)
    other.load_state_dict(queue.state_dict())
    assert len(other) == 2 and ids(other) == [0, 1]


def test_no_parameters_and_moves_with_the_module():
    queue = MemoryQueue(4, 3)
    assert list(queue.parameters()) == []
    queue.enqueue(torch.ones(2, 3))
    queue = queue.to(torch.float64)
    assert queue.negatives.dtype == torch.float64 and len(queue) == 2
    queue.enqueue(torch.ones(1, 3))  # stored in the queue's dtype
    assert queue.negatives.dtype == torch.float64 and len(queue) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lives_on_the_gpu():
    queue = MemoryQueue(4, 3, device="cuda")
    queue.enqueue(torch.ones(2, 3, device="cuda"))
    assert queue.negatives.is_cuda and len(queue) == 2
    with pytest.raises(ValueError, match="queue's device"):
        queue.enqueue(torch.ones(2, 3))


def test_clear_empties_it():
    queue = MemoryQueue(4, 3)
    queue.enqueue(torch.ones(3, 3))
    queue.clear()
    assert len(queue) == 0 and queue.negatives.shape == (0, 3)
    queue.enqueue(batches([2])[0])
    assert ids(queue) == [0, 1]


def test_feeds_the_loss():
    # the queue's rows as extra negatives: DCL with K identical rows gives log(2N - 2 + K)
    queue = MemoryQueue(7, 4)
    queue.enqueue(torch.ones(5, 4))
    z = torch.ones(3, 4)
    assert dcl(z, z, negatives=queue.negatives).item() == pytest.approx(
        torch.tensor(2 * 3 - 2 + 5.0).log().item(), abs=1e-6
    )
    empty = MemoryQueue(7, 4)  # an empty queue adds nothing
    assert dcl(z, z, negatives=empty.negatives).item() == pytest.approx(dcl(z, z).item())


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: MemoryQueue(0, 3), ValueError, r"size must be a positive int, got 0"),
        (lambda: MemoryQueue(4, -1), ValueError, r"dim must be a positive int, got -1"),
        (lambda: MemoryQueue(True, 3), ValueError, r"size must be a positive int, got True"),
        (lambda: MemoryQueue(4, 3, dtype=torch.int64), TypeError, r"floating torch.dtype"),
        (lambda: MemoryQueue(4, 3).enqueue(torch.ones(2, 5)), ValueError, r"\(B, 3\).*\(2, 5\)"),
        (lambda: MemoryQueue(4, 3).enqueue(torch.ones(3)), ValueError, r"got shape \(3,\)"),
        (
            lambda: MemoryQueue(4, 3).enqueue(torch.ones(2, 3, dtype=torch.int64)),
            TypeError,
            r"int64",
        ),
        (lambda: MemoryQueue(4, 3).enqueue([[1.0, 2.0, 3.0]]), TypeError, r"got list"),
        (
            lambda: MemoryQueue(4, 3).enqueue(torch.ones(2, 3, device="meta")),
            ValueError,
            r"device cpu, got meta",
        ),
    ],
)
def test_bad_input_is_reported_clearly(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
