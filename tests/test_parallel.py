"""``http.parallel.in_parallel``: order kept, calls overlap up to the limit, a failure waits for the rest."""

from __future__ import annotations

import threading
import time

import pytest

from sync_core.http.parallel import in_parallel


def test_results_come_back_in_input_order_whatever_finishes_first() -> None:
    assert in_parallel(lambda n: (time.sleep(0.01 * (5 - n)), n)[1], list(range(5)), workers=5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("workers", "expected_peak"), [(1, 1), (3, 3), (10, 6)])
def test_no_more_calls_overlap_than_the_workers_allow(workers: int, expected_peak: int) -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def call(_: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    in_parallel(call, list(range(6)), workers=workers)
    assert peak[0] == expected_peak


def test_a_failure_is_raised_after_every_other_call_finished() -> None:
    done: list[int] = []

    def call(n: int) -> int:
        if n == 1:
            raise ValueError("chunk 1 refused")
        time.sleep(0.05)
        done.append(n)
        return n

    with pytest.raises(ValueError, match="chunk 1"):
        in_parallel(call, [0, 1, 2, 3], workers=4)
    assert sorted(done) == [0, 2, 3]
